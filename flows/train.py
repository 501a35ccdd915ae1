"""train-sales-model: CSV -> pandera -> tensors -> gradient descent -> MSE -> Parquet.

.venv/bin/python -m flows.train --data PATH --output DIR [--targets ...] [--features ...] ...
"""

from __future__ import annotations

if __name__ == "__main__":
    # The command line runs in the warm runner's pre-imported process when one is up
    # (flows/warm.py): that exits here with the run's code; otherwise the run is this process's.
    from flows.warm import hand_over

    hand_over("flows.train")

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger
from prefect.futures import wait
from prefect.runtime import flow_run

from flows.cli import exit_now, flow_parser, parse_flow_args, run_flow
from flows.names import current_run_name
from flows.steps import (
    for_runner,
    on_cluster,
    open_inputs,
    pass1_cache,
    run_pass2,
    scan_inputs,
)
from schemas.params import (
    DEFAULT_CONFIDENCE,
    DEFAULT_DATA,
    DEFAULT_DRIFT_THRESHOLD,
    DEFAULT_DTYPE,
    DEFAULT_HOLDOUT_FRACTION,
    DEFAULT_ID_COLUMN,
    DEFAULT_KEEP_RUNS,
    DEFAULT_LEDGER,
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_MAX_EPOCHS,
    DEFAULT_OUTPUT,
    DEFAULT_PROMOTION_TOLERANCE,
    DEFAULT_SEED,
    DEFAULT_SOLVER,
    DEFAULT_SPLIT_MB,
    DEFAULT_TOL,
    RUN_TIMEOUT_SECONDS,
    BadFraction,
    Confidence,
    DriftThreshold,
    Dtype,
    Features,
    HoldoutFraction,
    IdColumn,
    KeepRuns,
    LearningRate,
    LedgerDir,
    MaxEpochs,
    OutputRoot,
    PromotionTolerance,
    RunConfig,
    Seed,
    Solver,
    SplitMB,
    Targets,
    Tolerance,
    TrainingData,
    UseCache,
    id_column_of,
    train_timeout_seconds,
)
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS
from tasks.common.errors import ParameterError
from tasks.common.paths import check_all, data_roots
from tasks.common.storage import new_run, output_root, staging_area
from tasks.common.store import Location
from tasks.ingest.csvfile import ByteRange, CsvFile
from tasks.ingest.validate import check_columns
from tasks.landing.ledger import training_inputs
from tasks.landing.slots import training_slot
from tasks.model.evaluate import describe_model_task
from tasks.model.train import train_model
from tasks.outputs.plots import draw_model_plots
from tasks.outputs.predict import Scoring, predict_task
from tasks.outputs.promote import decide_promotion_task
from tasks.outputs.publish import (
    check_data_quality,
    commit_training_task,
    write_quarantine_task,
)
from tasks.outputs.report import report_run, result_line, summary_text
from tasks.outputs.retention import vacuum_hours

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture

    from tasks.common.storage import RunInfo
    from tasks.ingest.scan import Scan
    from tasks.model.descent import FitResult

# What a run imports on its way (1.5-2 s here), imported while a local server starts instead.
RUN_IMPORTS = ("tasks.model.descent", "scipy.linalg", "scipy.special", "matplotlib.figure")


@flow(name="train-sales-model", flow_run_name=current_run_name, timeout_seconds=RUN_TIMEOUT_SECONDS)
def train_sales_model(
    data: TrainingData = DEFAULT_DATA,
    output: OutputRoot = DEFAULT_OUTPUT,
    ledger: LedgerDir = DEFAULT_LEDGER,
    features: Features = DEFAULT_FEATURES,
    targets: Targets = DEFAULT_TARGETS,
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
    keep_runs: KeepRuns = DEFAULT_KEEP_RUNS,
    use_cache: UseCache = True,
) -> dict[str, Any]:
    """Train the sales model on the CSV(s) at `data` and publish it under `output`. `data`
    "dataset" (the default) is the base file plus every accepted landed file of `ledger`.
    `use_cache` reads and fills the pass-1 cache under `output` (tasks/ingest/cache.py).

    Returns the run manifest (also written to `<output>/manifests/<run_id>.json`).
    """
    config = for_runner(RunConfig.of(locals()))  # first: locals() are the parameters
    paths, root = check_train_inputs(data, ledger, output, features, targets, id_column)
    plans = open_inputs(paths, config)
    with training_slot():  # one training at a time on this server (tasks/landing/slots.py)
        return _train(plans, root, config)


def _train(
    plans: list[tuple[CsvFile, list[ByteRange]]], root: Location, config: RunConfig
) -> dict[str, Any]:
    """One run, inside the training slot: pass 1, training, pass 2, the model's tables, the
    promotion decision and the commit."""
    run = new_run(root, dict(flow_run.parameters))
    with staging_area(root, run.run_id, shared=on_cluster()) as staging:
        scan = scan_inputs(plans, config, staging, pass1_cache(root, staging, config))
        check_data_quality(run, scan, config.max_bad_fraction, "train")
        fit = train_model(scan, config)
        # the plots and the quarantine's part are written while pass 2 writes
        side = draw_model_plots.submit(scan, fit, config), write_quarantine_task.submit(run, scan)
        try:
            manifest = _publish(run, scan, fit, root, config, *side)
        finally:
            wait(list(side))  # on a failure too: neither outlives the staged rows it reads
    report_run(manifest, root)
    get_run_logger().info(result_line(manifest))  # the Logs tab and `--watch` end with it
    return manifest


def _publish(
    run: RunInfo,
    scan: Scan,
    fit: FitResult,
    root: Location,
    config: RunConfig,
    plots: PrefectFuture,
    quarantine: PrefectFuture,
) -> dict[str, Any]:
    """Pass 2, the model's tables, the promotion decision and the commit; the manifest."""
    predicted = run_pass2(predict_task, scan, Scoring.of(fit, scan), config, root, run.run_id)
    tables, results = describe_model_task(fit, scan.train, predicted.sums, config)
    tables["profile"] = scan.profile_table()
    promotion = decide_promotion_task(
        root, tables["weights"], fit.converged, scan.holdout, tables["profile"], config
    )
    return commit_training_task(
        run, scan, predicted, tables, promotion, results, config, plots.result(),
        quarantine.result(),
    )  # fmt: skip


def check_train_inputs(
    data: str | list[str],
    ledger: str,
    output: str,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    id_column: str,
) -> tuple[list[Path], Location]:
    """(input files, output root) once every parameter naming columns or paths is right and the
    output's bucket answers; otherwise one PipelineError listing every problem. Nothing is
    read or created."""
    found = check_all(
        {
            "columns": lambda: check_columns(features, targets, id_column_of(id_column)),
            "data": lambda: training_inputs(data, ledger, data_roots()),
            "output": lambda: output_root(output),
            "timeout": _timeout_setting,  # the decorator took the default for a bad one
            "vacuum": vacuum_hours,  # retention after the commit reads it
        }
    )
    return found["data"], found["output"]


def _timeout_setting() -> float:
    try:
        return train_timeout_seconds()
    except ValueError as exc:
        raise ParameterError(str(exc)) from None


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line options -> flow parameters (only those given; the flow has the defaults),
    plus where the tasks run (`task_runner`, `dask_address`)."""
    parser = flow_parser(train_sales_model, "python -m flows.train")
    parser.add_argument(
        "--task-runner",
        choices=["threads", "dask"],
        help="where the tasks run: threads (default) or a Dask cluster",
    )
    parser.add_argument(
        "--dask-address", help="scheduler of an existing Dask cluster (default: a local one)"
    )
    return parse_flow_args(parser, argv)


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
        lambda manifest: summary_text(manifest, manifest["parameters"]["output"]),
        lambda checked: check_train_inputs(
            checked["data"],
            checked["ledger"],
            checked["output"],
            checked["features"],
            checked["targets"],
            checked["id_column"],
        ),
        RUN_IMPORTS,
    )


if __name__ == "__main__":
    exit_now(main())
