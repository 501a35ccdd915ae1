"""train-sales-model: CSV -> pandera -> tensors -> gradient descent -> MSE -> Parquet.

python -m flows.train --data PATH --output DIR [--targets ...] [--features ...] ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.cli import run_flow
from schemas.params import (
    DEFAULT_DATA,
    DEFAULT_DRIFT_THRESHOLD,
    DEFAULT_DTYPE,
    DEFAULT_HOLDOUT_FRACTION,
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_MAX_EPOCHS,
    DEFAULT_OUTPUT,
    DEFAULT_PROMOTION_TOLERANCE,
    DEFAULT_SEED,
    DEFAULT_SOLVER,
    DEFAULT_TOL,
    BadFraction,
    ColumnList,
    DataPaths,
    DriftThreshold,
    Dtype,
    HoldoutFraction,
    LearningRate,
    MaxEpochs,
    PromotionTolerance,
    Seed,
    Solver,
    Tolerance,
)
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS, allowed_columns, required_columns
from tasks.evaluate import evaluate_run
from tasks.ingest import read_inputs
from tasks.paths import confine, output_roots
from tasks.publish import check_data_quality, publish_run
from tasks.report import report_run, summary_text
from tasks.storage import new_run
from tasks.tensors import make_tensors
from tasks.train import train_model
from tasks.validate import check_columns, validate_rows


@flow(name="train-sales-model")
def train_sales_model(
    data: DataPaths = DEFAULT_DATA,
    output: str = DEFAULT_OUTPUT,
    features: ColumnList = DEFAULT_FEATURES,
    targets: ColumnList = DEFAULT_TARGETS,
    holdout_fraction: HoldoutFraction = DEFAULT_HOLDOUT_FRACTION,
    seed: Seed = DEFAULT_SEED,
    max_epochs: MaxEpochs = DEFAULT_MAX_EPOCHS,
    lr: LearningRate = None,
    tol: Tolerance = DEFAULT_TOL,
    max_bad_fraction: BadFraction = DEFAULT_MAX_BAD_FRACTION,
    dtype: Dtype = DEFAULT_DTYPE,
    promotion_tolerance: PromotionTolerance = DEFAULT_PROMOTION_TOLERANCE,
    drift_threshold: DriftThreshold = DEFAULT_DRIFT_THRESHOLD,
    solver: Solver = DEFAULT_SOLVER,
) -> dict[str, Any]:
    """Train the sales model on the CSV(s) at `data` and publish it under `output`.

    Returns the run manifest (also written to `<output>/manifests/<run_id>.json`).
    """
    check_columns(features, targets)
    run = new_run(confine(output, output_roots(), "output"), dict(flow_run.parameters))
    raw = read_inputs(data, required_columns(features, targets), allowed_columns(features, targets))
    validated = validate_rows(raw, features, targets)
    check_data_quality(run, validated, max_bad_fraction)
    X, y, is_holdout = make_tensors(
        validated.accepted, features, targets, holdout_fraction, seed, dtype
    )
    fit = train_model(X, y, lr, max_epochs, tol, seed, solver)
    tables = evaluate_run(validated.accepted, is_holdout, fit, features, targets)
    manifest = publish_run(
        run, validated, tables, fit, features, targets, promotion_tolerance, drift_threshold
    )
    report_run(manifest, tables["weights"], output)
    return manifest


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line options -> flow parameters (only those given; the flow has the defaults)."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", help=f"CSV file, folder of CSVs or glob (default {DEFAULT_DATA})")
    parser.add_argument("--output", help=f"output root (default {DEFAULT_OUTPUT})")
    parser.add_argument(
        "--features", nargs="+", help=f"feature columns (default {DEFAULT_FEATURES})"
    )
    parser.add_argument("--targets", nargs="+", help=f"target columns (default {DEFAULT_TARGETS})")
    parser.add_argument("--holdout-fraction", help=f"default {DEFAULT_HOLDOUT_FRACTION}")
    parser.add_argument("--seed", help=f"default {DEFAULT_SEED}")
    parser.add_argument("--max-epochs", help=f"default {DEFAULT_MAX_EPOCHS}")
    parser.add_argument("--lr", help="step size on standardized features (default: 1/L)")
    parser.add_argument("--tol", help=f"default {DEFAULT_TOL}")
    parser.add_argument("--max-bad-fraction", help=f"default {DEFAULT_MAX_BAD_FRACTION}")
    parser.add_argument("--dtype", help=f"float32 or float64 (default {DEFAULT_DTYPE})")
    parser.add_argument(
        "--promotion-tolerance",
        help="relative holdout-MSE slack against the champion "
        f"(default {DEFAULT_PROMOTION_TOLERANCE})",
    )
    parser.add_argument(
        "--solver",
        help="direct (row-wise autograd) or moments (sufficient statistics); "
        f"default {DEFAULT_SOLVER}",
    )
    parser.add_argument(
        "--drift-threshold",
        help=f"standardized mean shift flagged as drift (default {DEFAULT_DRIFT_THRESHOLD})",
    )
    args = vars(parser.parse_args(argv))
    # Values stay text: the flow's typed signature parses and bounds them, one rule for all.
    return {name: value for name, value in args.items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    parameters = parse_args(argv)
    return run_flow(
        train_sales_model,
        parameters,
        lambda manifest: summary_text(manifest, Path(manifest["parameters"]["output"])),
    )


if __name__ == "__main__":
    sys.exit(main())
