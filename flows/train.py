"""train-sales-model: CSV -> pandera -> tensors -> gradient descent -> MSE -> Parquet.

python -m flows.train --data PATH --output DIR [--targets ...] [--features ...] ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import wait
from prefect.runtime import flow_run

from flows.cli import add_common_options, run_flow
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
    DEFAULT_STREAM_ABOVE_MB,
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
    StreamAboveMB,
    Tolerance,
)
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS
from tasks.evaluate import evaluate_run
from tasks.paths import check_all, confine, data_roots, output_roots, resolve_inputs
from tasks.prepare import combine_files, prepare_input_file
from tasks.publish import (
    check_data_quality,
    check_streamed_quality,
    publish_run,
    publish_streamed_run,
)
from tasks.report import report_run, summary_text
from tasks.scan import (
    FileEmit,
    Scoring,
    StreamedData,
    emit_input_file,
    evaluate_streamed,
    scan_input_file,
)
from tasks.storage import RunInfo, data_fingerprint, new_run, staging_area, table_metadata
from tasks.train import train_model
from tasks.validate import check_columns


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
    stream_above_mb: StreamAboveMB = DEFAULT_STREAM_ABOVE_MB,
) -> dict[str, Any]:
    """Train the sales model on the CSV(s) at `data` and publish it under `output`.

    Returns the run manifest (also written to `<output>/manifests/<run_id>.json`).
    """
    paths, root = check_train_inputs(data, output, features, targets)
    run = new_run(root, dict(flow_run.parameters))
    if sum(path.stat().st_size for path in paths) > stream_above_mb * 2**20:
        return train_streamed(
            run,
            paths,
            features,
            targets,
            holdout_fraction,
            seed,
            max_epochs,
            lr,
            tol,
            max_bad_fraction,
            dtype,
            promotion_tolerance,
            drift_threshold,
            solver,
        )
    parts = [
        prepare_input_file.submit(path, features, targets, holdout_fraction, seed) for path in paths
    ]
    wait(parts)  # every file's task ends before any result is used; a failure fails the run
    prepared = combine_files([part.result() for part in parts])
    check_data_quality(run, prepared.data, max_bad_fraction)
    fit = train_model(prepared, features, targets, lr, max_epochs, tol, seed, solver, dtype)
    tables = evaluate_run(prepared.data.accepted, prepared.is_holdout, fit, features, targets, seed)
    manifest = publish_run(
        run, prepared.data, tables, fit, features, targets, promotion_tolerance, drift_threshold
    )
    report_run(manifest, tables["weights"], output)
    return manifest


def check_train_inputs(
    data: str | list[str], output: str, features: tuple[str, ...], targets: tuple[str, ...]
) -> tuple[list[Path], Path]:
    """(input files, output root) once every parameter naming columns or paths is right;
    otherwise one PipelineError listing every problem. Nothing is read or created."""
    found = check_all(
        {
            "columns": lambda: check_columns(features, targets),
            "data": lambda: resolve_inputs(data, data_roots()),
            "output": lambda: confine(output, output_roots(), "output"),
        }
    )
    return found["data"], found["output"]


def train_streamed(
    run: RunInfo,
    paths: list[Path],
    features: tuple[str, ...],
    targets: tuple[str, ...],
    holdout_fraction: float,
    seed: int,
    max_epochs: int,
    lr: float | None,
    tol: float,
    max_bad_fraction: float,
    dtype: str,
    promotion_tolerance: float,
    drift_threshold: float,
    solver: str,
) -> dict[str, Any]:
    """The same run for inputs bigger than memory: pass 1 per file (validate, quarantine,
    statistics), training, pass 2 per file (predictions), publish. See tasks/scan.py."""
    with staging_area(run.output_root, run.run_id) as staging:
        scans = [
            scan_input_file.submit(
                path, i, features, targets, holdout_fraction, seed, staging, solver == "direct"
            )
            for i, path in enumerate(paths)
        ]
        wait(scans)
        streamed = StreamedData([scan.result() for scan in scans])
        fingerprint = data_fingerprint([f.sha256 for f in streamed.files])
        metadata = table_metadata(run, "predictions", fingerprint)

        def emit_all(scoring: Scoring | None) -> list[FileEmit]:
            futures = [
                emit_input_file.submit(scan, features, targets, staging, scoring, metadata)
                for scan in streamed.scans
            ]
            wait(futures)
            return [future.result() for future in futures]

        check_streamed_quality(run, streamed, max_bad_fraction, lambda: emit_all(None))
        fit = train_model(streamed, features, targets, lr, max_epochs, tol, seed, solver, dtype)
        emits = emit_all(streamed.scoring(fit))
        tables = evaluate_streamed(streamed, emits, fit, features, targets)
        manifest = publish_streamed_run(
            run,
            streamed,
            emits,
            tables,
            fit,
            features,
            targets,
            promotion_tolerance,
            drift_threshold,
        )
    report_run(manifest, tables["weights"], str(run.output_root))
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
    parser.add_argument(
        "--stream-above-mb",
        help="stream inputs bigger than this in total (two passes, bounded memory; 0: always); "
        f"default {DEFAULT_STREAM_ABOVE_MB:g}",
    )
    parser.add_argument(
        "--task-runner",
        choices=["threads", "dask"],
        help="where per-file tasks run: threads (default) or a Dask cluster",
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
            checked["data"], checked["output"], checked["features"], checked["targets"]
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
