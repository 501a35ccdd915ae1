"""Shared fixtures: tiny hand-made CSVs on disk and the repo layout."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

# Every Prefect process the tests start stays offline (set before Prefect reads its settings).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

REPO = Path(__file__).resolve().parents[1]
# Tests read and write under the temp folder as well as the checkout's data/ and output/; the
# security tests narrow these again.
_ROOTS = os.pathsep.join([tempfile.gettempdir(), str(REPO / "data")])
os.environ.setdefault("SALES_MODEL_DATA_ROOTS", _ROOTS)
os.environ.setdefault(
    "SALES_MODEL_OUTPUT_ROOTS", os.pathsep.join([tempfile.gettempdir(), str(REPO / "output")])
)
HEADER = "country,avg_income_k,price_k,tax_k,units_sold_k"


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """write_csv(text, name="sales.csv") -> path; text is written as UTF-8 unless bytes."""

    def write(content: str | bytes, name: str = "sales.csv") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


def sales_rows(n: int, seed: int = 0, start: int = 0) -> list[str]:
    """n valid CSV lines with correlated features and a linear target."""
    import numpy as np

    rng = np.random.default_rng(seed)
    income = rng.uniform(10, 90, n)
    price = 0.2 + 0.01 * income + rng.uniform(0, 0.3, n)
    tax = price * rng.uniform(0.05, 0.25, n)
    units = 9 + 0.1 * income - 3 * price - 8 * tax + rng.normal(0, 0.5, n)
    return [
        f"C{start + i:04d},{a:.3f},{p:.4f},{t:.4f},{u:.3f}"
        for i, (a, p, t, u) in enumerate(zip(income, price, tax, units, strict=True))
    ]


def copy_checkout(names: list[str], target: Path) -> Path:
    """Copy these files and folders of the checkout to `target` (file times kept, no
    __pycache__), with an empty data/landing/; returns `target`."""
    for name in names:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / "data" / "landing").mkdir(parents=True)
    return target
