"""train-sales-model: CSV -> pandera -> tensors -> gradient descent -> MSE -> Parquet.

.venv/bin/python -m flows.train --data PATH --output DIR [--targets ...] [--features ...] ...
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.cli import add_common_options, add_id_column_option, exit_now, run_flow
from flows.steps import emit, for_runner, name_flow_run, open_inputs, scan_inputs
from schemas.params import (
    AUTO_DIRECT_MAX_ROWS,
    DATASET_BASE,
    DEFAULT_CONFIDENCE,
    DEFAULT_DATA,
    DEFAULT_DRIFT_THRESHOLD,
    DEFAULT_DTYPE,
    DEFAULT_HOLDOUT_FRACTION,
    DEFAULT_ID_COLUMN,
    DEFAULT_LEDGER,
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_MAX_EPOCHS,
    DEFAULT_OUTPUT,
    DEFAULT_PROMOTION_TOLERANCE,
    DEFAULT_SEED,
    DEFAULT_SOLVER,
    DEFAULT_SPLIT_MB,
    DEFAULT_TOL,
    BadFraction,
    ColumnList,
    Confidence,
    DataPaths,
    DriftThreshold,
    Dtype,
    HoldoutFraction,
    IdColumn,
    LearningRate,
    MaxEpochs,
    PromotionTolerance,
    RunConfig,
    Seed,
    Solver,
    SplitMB,
    Tolerance,
    id_column_of,
)
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS
from tasks.cache import Pass1Cache
from tasks.csvfile import ByteRange, CsvFile
from tasks.ledger import training_inputs
from tasks.paths import check_all, confine, data_roots, output_roots
from tasks.plots import draw_model_plots
from tasks.predict import Scoring, predict_task
from tasks.publish import check_data_quality, publish_run
from tasks.report import report_run, summary_text
from tasks.slots import training_slot
from tasks.storage import new_run, staging_area, table_metadata
from tasks.train import train_model
from tasks.validate import check_columns

# Longer than any training here takes (100M rows: a few minutes); a hung run ends, freeing the
# training slot, instead of blocking every retrain after it. An operator with bigger data sets
# SALES_MODEL_TRAIN_TIMEOUT_SECONDS in the worker's environment (or a run's job variables).
TRAIN_TIMEOUT_SECONDS = float(os.environ.get("SALES_MODEL_TRAIN_TIMEOUT_SECONDS", 3 * 3600))


@flow(name="train-sales-model", timeout_seconds=TRAIN_TIMEOUT_SECONDS)
def train_sales_model(
    data: DataPaths = DEFAULT_DATA,
    output: str = DEFAULT_OUTPUT,
    ledger: str = DEFAULT_LEDGER,
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
    split_mb: SplitMB = DEFAULT_SPLIT_MB,
    confidence: Confidence = DEFAULT_CONFIDENCE,
    id_column: IdColumn = DEFAULT_ID_COLUMN,
    use_cache: bool = True,
) -> dict[str, Any]:
    """Train the sales model on the CSV(s) at `data` and publish it under `output`. `data`
    "dataset" (the default) is the base file plus every accepted landed file of `ledger`.
    `use_cache` reads and fills the pass-1 cache under `output` (tasks/cache.py).

    Returns the run manifest (also written to `<output>/manifests/<run_id>.json`).
    """
    paths, root = check_train_inputs(data, ledger, output, features, targets, id_column)
    config = RunConfig(
        features=tuple(features),
        targets=tuple(targets),
        id_column=id_column_of(id_column),
        holdout_fraction=holdout_fraction,
        seed=seed,
        max_bad_fraction=max_bad_fraction,
        max_epochs=max_epochs,
        lr=lr,
        tol=tol,
        dtype=dtype,
        solver=solver,
        promotion_tolerance=promotion_tolerance,
        drift_threshold=drift_threshold,
        confidence=confidence,
        use_cache=use_cache,
        split_bytes=int(split_mb * 2**20),
    )
    config = for_runner(config)
    plans = open_inputs(paths, config)
    with training_slot():  # one training at a time on this server (tasks/slots.py)
        return _train(plans, root, config)


def _train(
    plans: list[tuple[CsvFile, list[ByteRange]]], root: Path, config: RunConfig
) -> dict[str, Any]:
    """Pass 1, training, pass 2 and the publish of one run, inside the training slot."""
    run = new_run(root, dict(flow_run.parameters))
    name_flow_run(f"train-{run.run_id}")
    with staging_area(root, run.run_id) as staging:
        cache = Pass1Cache.under(root) if config.use_cache else None
        scan = scan_inputs(plans, config, staging, cache)
        check_data_quality(run, scan, config.max_bad_fraction, "train")
        fit = train_model(scan, config)
        plots = draw_model_plots.submit(scan, fit, config)  # drawn while pass 2 writes
        metadata = table_metadata(run, "predictions", scan.fingerprint)
        emitted = emit(predict_task, scan, Scoring.of(fit, scan), config, staging, metadata)
        manifest = publish_run(run, scan, emitted, fit, config, plots.result())
    report_run(manifest, root)
    return manifest


def check_train_inputs(
    data: str | list[str],
    ledger: str,
    output: str,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    id_column: str,
) -> tuple[list[Path], Path]:
    """(input files, output root) once every parameter naming columns or paths is right;
    otherwise one PipelineError listing every problem. Nothing is read or created."""
    found = check_all(
        {
            "columns": lambda: check_columns(features, targets, id_column_of(id_column)),
            "data": lambda: training_inputs(data, ledger, data_roots()),
            "output": lambda: confine(output, output_roots(), "output"),
        }
    )
    return found["data"], found["output"]


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line options -> flow parameters (only those given; the flow has the defaults)."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--data",
        help=f"CSV file, folder of CSVs or glob; default {DEFAULT_DATA}: {DATASET_BASE} plus "
        "every accepted landed file in the ledger",
    )
    parser.add_argument("--ledger", help=f"ledger of landed files (default {DEFAULT_LEDGER})")
    parser.add_argument("--output", help=f"output root (default {DEFAULT_OUTPUT})")
    parser.add_argument(
        "--features", nargs="+", help=f"feature columns (default {DEFAULT_FEATURES})"
    )
    parser.add_argument("--targets", nargs="+", help=f"target columns (default {DEFAULT_TARGETS})")
    add_id_column_option(parser)
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
        help="auto, direct (row-wise autograd) or moments (sufficient statistics); "
        f"default {DEFAULT_SOLVER}: direct up to {AUTO_DIRECT_MAX_ROWS:,} training rows",
    )
    parser.add_argument(
        "--drift-threshold",
        help=f"standardized mean shift flagged as drift (default {DEFAULT_DRIFT_THRESHOLD})",
    )
    parser.add_argument(
        "--confidence",
        help="level of the coefficient intervals (and of the prediction intervals scoring "
        f"writes with this model); default {DEFAULT_CONFIDENCE}",
    )
    parser.add_argument(
        "--split-mb",
        help="cut each input into byte ranges of about this many MB, a task each (for a "
        f"cluster; default {DEFAULT_SPLIT_MB:g}: one task per file, its blocks on every core)",
    )
    parser.add_argument(
        "--no-cache",
        dest="use_cache",
        action="store_const",
        const="false",
        help="parse every file, neither reading nor filling the pass-1 cache",
    )
    parser.add_argument(
        "--task-runner",
        choices=["threads", "dask"],
        help="where the tasks run: threads (default) or a Dask cluster",
    )
    parser.add_argument(
        "--dask-address", help="scheduler of an existing Dask cluster (default: a local one)"
    )
    add_common_options(parser)
    args = vars(parser.parse_args(argv))
    # Values stay text: the flow's typed signature parses and bounds them, one rule for all.
    return {name: value for name, value in args.items() if value not in (None, False)}


def dask_task_runner(address: str | None = None) -> Any:
    """A Dask task runner: the cluster at `address`, or a local one (2 worker processes, bound
    to 127.0.0.1, no dashboard)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 2,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        }
    )


def main(argv: list[str] | None = None) -> int:
    parameters = parse_args(argv)
    runner, address = parameters.pop("task_runner", "threads"), parameters.pop("dask_address", None)
    flow = train_sales_model
    if runner == "dask" or address:
        flow = train_sales_model.with_options(task_runner=dask_task_runner(address))
    return run_flow(
        flow,
        parameters,
        lambda manifest: summary_text(manifest, Path(manifest["parameters"]["output"])),
        lambda checked: check_train_inputs(
            checked["data"],
            checked["ledger"],
            checked["output"],
            checked["features"],
            checked["targets"],
            checked["id_column"],
        ),
    )


if __name__ == "__main__":
    exit_now(main())
