"""Shared fixtures: tiny hand-made CSVs on disk and the repo layout."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import pandas as pd

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
# A command line run without PREFECT_API_URL gets Prefect's temporary server, not the checkout's
# warm local server (which would outlive the tests), whatever the shell says;
# tests/flow/test_local_server.py turns it on, with its state in a temporary folder.
os.environ["SALES_MODEL_LOCAL_SERVER"] = "off"
HEADER = "country,avg_income_k,price_k,tax_k,units_sold_k"
# The S3 API server and a bucket per test (tests/s3.py), for the tests of object storage.
pytest_plugins = ["tests.s3"]


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


def read_table(output: Path, table: str) -> pd.DataFrame:
    """Every run's committed rows of one output table (its Delta table's latest version, `run_id`
    included)."""
    from tasks.outputs import tables

    return tables.read(output, table).to_pandas()


TOKENS = ["abc", "", "NA", "inf", "-inf", "-1", "1e400", " 5 ", "nan", "+3", "5.", "\x01x", "  "]


def messy_csv(path: Path, seed: int, rows: int = 300) -> Path:
    """Rows with every row-level problem: repeated ids (often far apart), blank lines, wrong
    field counts, bad numbers, padded ids, quoted fields."""
    rng = random.Random(seed)
    lines, ids = [HEADER], []
    for i in range(rows):
        r = rng.random()
        cid = f"C{i}" if rng.random() > 0.15 or not ids else rng.choice(ids)
        ids.append(cid)
        inc, price, tax = 20 + rng.random() * 100, 0.5 + rng.random() * 3, rng.random()
        units = 50 + 0.3 * inc - 4 * price - 9 * tax + rng.gauss(0, 1)
        cells = [cid, f"{inc:.3f}", f"{price:.3f}", f"{tax:.3f}", f"{units:.3f}"]
        if r < 0.03:
            lines.append("")
            continue
        if r < 0.06:
            cells.append("1")
        elif r < 0.08:
            cells = cells[:-1]
        elif r < 0.15:
            for _ in range(rng.randint(1, 2)):
                cells[rng.randint(0, 4)] = rng.choice(TOKENS)
        elif r < 0.17:
            cells[0] = f"  {cid} "
        elif r < 0.19:
            cells = [f'"{c}"' for c in cells]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path
