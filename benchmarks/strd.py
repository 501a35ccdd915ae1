"""Certified accuracy: train on each NIST StRD linear least-squares dataset (tests/data/strd)
through the command line as a user does, and print a markdown table of the log relative error
(LRE, the digits shared with NIST's certified values; the worst term of each column) of the
published `weight`, `ls_weight` and `std_error`, next to statsmodels' OLS on the same rows.

    python -m benchmarks.strd [--datasets Longley Wampler1 ...]

Each dataset is one `python -m flows.train ... --id-column none --holdout-fraction 0` into a
temporary output folder, against one `prefect server` this script starts on 127.0.0.1 and stops
when done.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.server import prefect_server
from tests.strd import NAMES, STRD, Dataset, load, worst_lre

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("weight", "ls_weight", "std_error", "statsmodels params", "statsmodels bse")


def train(dataset: Dataset, output: Path, env: dict) -> str | None:
    """Run the training CLI on the dataset; None when it succeeded, else its error line."""
    command = [
        *("-m", "flows.train", "--data", str(dataset.path), "--output", str(output)),
        *("--features", *dataset.features, "--targets", dataset.target),
        *("--id-column", "none", "--holdout-fraction", "0"),
    ]
    done = subprocess.run(
        [sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return lines[-1]
    return None


def published(output: Path) -> dict[str, dict[str, float]]:
    """The weights table's columns by term: {"weight": {term: value}, ...}."""
    from tasks.outputs import tables

    weights = tables.read(output, "weights").to_pandas().set_index("feature")
    return {c: weights[c].astype(float).to_dict() for c in ("weight", "ls_weight", "std_error")}


def statsmodels_fit(dataset: Dataset) -> dict[str, dict[str, float]]:
    """statsmodels OLS with an intercept on the CSV's rows (parsed by Python's float, which
    rounds correctly: pandas' default parser can be an ulp off on 17-digit numbers)."""
    import statsmodels.api as sm

    with dataset.path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    X = np.array([[float(row[f]) for f in dataset.features] for row in rows])
    y = np.array([float(row[dataset.target]) for row in rows])
    fit = sm.OLS(y, sm.add_constant(X, prepend=False)).fit()
    return {
        "statsmodels params": dict(zip(dataset.terms, fit.params, strict=True)),
        "statsmodels bse": dict(zip(dataset.terms, fit.bse, strict=True)),
    }


def cell(dataset: Dataset, column: str, values: dict[str, float]) -> str:
    """The worst LRE of one column (absolute digits where NIST certifies 0), or "null"."""
    errors = column in ("std_error", "statsmodels bse")
    if not np.isfinite(list(values.values())).any():
        return "null (exact fit)" if errors and dataset.exact_fit else "null"
    return f"{worst_lre(values, dataset.std_dev if errors else dataset.estimate):.1f}"


def row(dataset: Dataset, output: Path, env: dict) -> str:
    error = train(dataset, output, env)
    found = statsmodels_fit(dataset)
    if error is None:
        found |= published(output)
    cells = [cell(dataset, c, found[c]) if c in found else error for c in COLUMNS]
    return f"| {dataset.name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=NAMES, default=list(NAMES))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-strd-"))
    roots = {"SALES_MODEL_DATA_ROOTS": str(STRD), "SALES_MODEL_OUTPUT_ROOTS": str(scratch)}
    try:
        with prefect_server(scratch / "prefect", **roots) as env:
            print("| dataset | " + " | ".join(f"{c} LRE" for c in COLUMNS) + " |")
            print("|---|" + "---:|" * len(COLUMNS), flush=True)
            for name in args.datasets:
                print(row(load(name), scratch / name, env), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
