"""Publish: validate a run's tables, write them, decide promotion, write the manifest last and
then move the champion pointer, all under the output root's lock."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run

from schemas.outputs import (
    QUARANTINE_ARROW,
    SCHEMA_VERSION,
    MetricsTable,
    ProfileTable,
    QuarantineTable,
    WeightsTable,
    predictions_schema,
)
from tasks.errors import DataQualityError
from tasks.evaluate import fit_warnings
from tasks.profile import compare_profiles
from tasks.promote import (
    decide_promotion,
    load_model,
    model_from_weights,
    output_lock,
    read_champion,
    write_champion,
)
from tasks.report import report_dir, write_report
from tasks.scan import FileEmit, StreamedData, iter_quarantine, quarantine_frame
from tasks.storage import (
    RunInfo,
    data_fingerprint,
    manifest_path,
    move_parts,
    remove_written,
    sweep_temp_files,
    table_path,
    write_json,
    write_table,
    write_table_chunks,
)
from tasks.train import FitResult, Moments
from tasks.validate import FileReport, ValidatedData, check_quality

# Where each kind of run keeps its rejected rows.
QUARANTINE_TABLES = {"train": "quarantine", "score": "score_quarantine"}
# How long a run waits for another run's publish step before it gives up.
LOCK_TIMEOUT_SECONDS = 300.0


def build_manifest(
    run: RunInfo,
    files: list[FileReport],
    status: str,
    outputs: dict[str, Any],
    *,
    error: str | None = None,
    fit: FitResult | None = None,
    metrics: pd.DataFrame | None = None,
    promotion: dict[str, Any] | None = None,
    drift: dict[str, Any] | None = None,
    warnings: list[str] | None = None,
    kind: str = "train",
) -> dict[str, Any]:
    """The run's manifest: identity, kind (train or score), parameters, inputs with row
    accounting, outputs, results."""
    return {
        "run_id": run.run_id,
        "kind": kind,
        "status": status,
        "error": error,
        "started_at": run.started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "flow_run_id": flow_run.get_id(),
        "schema_version": SCHEMA_VERSION,
        "data_fingerprint": data_fingerprint([f.sha256 for f in files]),
        "parameters": run.parameters,
        "inputs": [vars(f) for f in files],
        "rows": {
            "in": sum(f.rows for f in files),
            "accepted": sum(f.accepted for f in files),
            "quarantined": sum(f.quarantined for f in files),
        },
        "training": None
        if fit is None
        else {
            "epochs": fit.epochs,
            "step_size": fit.lr,
            "converged": fit.converged,
            "stop_reason": fit.stop_reason,
            "final_train_loss": fit.loss_history[-1],
        },
        "metrics": None if metrics is None else metrics.to_dict(orient="records"),
        "promotion": promotion,
        "drift": drift,
        "warnings": warnings or [],
        "outputs": {name: str(path.relative_to(run.output_root)) for name, path in outputs.items()},
    }


def publish_outputs(
    run: RunInfo,
    data: ValidatedData,
    tables: dict[str, pd.DataFrame],
    fit: FitResult,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    promotion_tolerance: float,
    drift_threshold: float,
) -> dict[str, Any]:
    """Validate and write the run's tables; decide promotion and measure drift against the
    champion; write the report, then the manifest; then move the champion pointer if promoted."""
    tables = {**tables, "quarantine": data.quarantine}
    schemas = {
        **SMALL_TABLES,
        "predictions": predictions_schema(features, targets),
        "quarantine": QuarantineTable.to_schema(),
    }
    for name, frame in tables.items():
        schemas[name].validate(frame, lazy=True)
    predictions = tables["predictions"]
    return publish_core(
        run,
        data.files,
        tables,
        {},
        predictions[predictions["split"] == "holdout"],
        predictions,
        fit,
        targets,
        promotion_tolerance,
        drift_threshold,
    )


# Tables small enough to be written from one DataFrame on every path.
SMALL_TABLES = {
    "weights": WeightsTable.to_schema(),
    "metrics": MetricsTable.to_schema(),
    "profile": ProfileTable.to_schema(),
}


def publish_streamed(
    run: RunInfo,
    streamed: StreamedData,
    emits: list[FileEmit],
    tables: dict[str, pd.DataFrame],
    fit: FitResult,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    promotion_tolerance: float,
    drift_threshold: float,
) -> dict[str, Any]:
    """publish_outputs for a streamed run: the predictions staged by pass 2 are moved in, the
    staged quarantine merged into one file, promotion is decided on the holdout statistics and
    the report plots a uniform sample of the predictions."""
    for name, frame in tables.items():
        SMALL_TABLES[name].validate(frame, lazy=True)
    sample = emits[0].sample
    for emit in emits[1:]:
        sample = sample.merge(emit.sample)
    predictions = sample.rows if sample.rows is not None else pd.DataFrame()
    if len(predictions):
        predictions_schema(features, targets).validate(predictions, lazy=True)
    parts = [emit.predictions for emit in emits if emit.predictions is not None]
    writers = {
        "predictions": lambda root, _: move_parts(parts, root, "predictions", run.run_id),
        "quarantine": lambda root, fingerprint: write_quarantine(
            streamed.quarantine_parts(emits), root, "quarantine", run, fingerprint
        ),
    }
    return publish_core(
        run,
        streamed.files,
        tables,
        writers,
        streamed.holdout,
        predictions,
        fit,
        targets,
        promotion_tolerance,
        drift_threshold,
    )


def write_quarantine(
    parts: list[list[Path]], root: Path, table: str, run: RunInfo, fingerprint: str
) -> Path:
    """Merge staged quarantine parts (per input file, in order) into the run's table file,
    validating each chunk."""

    def chunks() -> Iterator[pyarrow.Table]:
        yield QUARANTINE_ARROW.empty_table()
        for file_parts in parts:
            for frame in iter_quarantine(file_parts):
                QuarantineTable.validate(frame, lazy=True)
                yield pyarrow.Table.from_pandas(
                    quarantine_frame(frame), schema=QUARANTINE_ARROW, preserve_index=False
                )

    return write_table_chunks(chunks(), QUARANTINE_ARROW, root, table, run, fingerprint)


def publish_core(
    run: RunInfo,
    files: list[FileReport],
    tables: dict[str, pd.DataFrame],
    writers: dict[str, Callable[[Path, str], Path]],
    holdout: pd.DataFrame | Moments,
    predictions: pd.DataFrame,
    fit: FitResult,
    targets: tuple[str, ...],
    promotion_tolerance: float,
    drift_threshold: float,
) -> dict[str, Any]:
    """Under the output lock, all or nothing: write `tables` (validated DataFrames) and run
    `writers` (tables written from files), decide promotion on `holdout` (rows or their
    statistics), measure drift, write the report (plots from `predictions`) and the manifest,
    then move the champion pointer."""
    root = run.output_root
    fingerprint = data_fingerprint([f.sha256 for f in files])
    report_folder = report_dir(root, run.run_id)
    with publish_lock(root), all_or_nothing(report_folder) as outputs:
        sweep_temp_files(root)
        for name, frame in tables.items():
            outputs[name] = write_table(frame, root, name, run, fingerprint)
        for name, write in writers.items():
            outputs[name] = write(root, fingerprint)
        pointer = read_champion(root)
        champion_id = None if pointer is None else pointer["run_id"]
        promotion = decide_promotion(
            model_from_weights(tables["weights"]),
            fit.converged,
            None if champion_id is None else load_model(root, champion_id),
            champion_id,
            holdout,
            promotion_tolerance,
        )
        drift = drift_against(root, champion_id, tables["profile"], drift_threshold)
        outputs["report"] = report_folder / "report.md"
        manifest = build_manifest(
            run,
            files,
            "completed",
            outputs,
            fit=fit,
            metrics=tables["metrics"],
            promotion=promotion,
            drift=drift,
            warnings=fit_warnings(train_rows(tables["metrics"]), fit.W.shape[1]),
        )
        write_report(root, manifest, predictions, fit.loss_history, targets)
        outputs["manifest"] = manifest_path(root, run.run_id)
        write_json(outputs["manifest"], manifest)
        if promotion["promoted"]:
            write_champion(root, run.run_id, promotion)
    return manifest


def train_rows(metrics: pd.DataFrame) -> int:
    """Rows of the training split, from the metrics table."""
    rows = metrics.loc[metrics["split"] == "train", "rows"]
    return int(rows.iloc[0]) if len(rows) else 0


def drift_against(
    root: Path, champion_id: str | None, profile: pd.DataFrame, threshold: float
) -> dict[str, Any] | None:
    """Compare this run's profile with the champion's (None before the first champion)."""
    reference = None if champion_id is None else table_path(root, "profile", champion_id)
    if reference is None or not reference.exists():
        return None
    shifts = compare_profiles(profile, pd.read_parquet(reference), threshold)
    return {
        "reference_run": champion_id,
        "measure": "standardized mean shift |mean_new - mean_champion| / std_champion",
        "threshold": threshold,
        "columns": shifts.to_dict(orient="records"),
    }


def publish_lock(root: Path) -> AbstractContextManager[None]:
    """The output root's lock (see output_lock), waiting up to LOCK_TIMEOUT_SECONDS and saying
    so in the run's log while another run holds it."""
    return output_lock(root, LOCK_TIMEOUT_SECONDS, _warn)


def _warn(message: str) -> None:
    try:
        get_run_logger().warning(message)
    except MissingContextError:
        logging.getLogger(__name__).warning(message)


@contextmanager
def all_or_nothing(*folders: Path) -> Iterator[dict[str, Path]]:
    """Collects the paths a publish writes; if it fails, removes them again, with `folders`
    (the champion pointer is replaced last, in one rename, so it never needs undoing)."""
    written: dict[str, Path] = {}
    try:
        yield written
    except BaseException:
        remove_written(list(written.values()))
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def publish_rejection(
    run: RunInfo,
    files: list[FileReport],
    quarantine: pd.DataFrame | list[list[Path]],
    error: str,
    kind: str = "train",
) -> dict[str, Any]:
    """A run refused for its data: keep the quarantine (a DataFrame, or staged parts per file)
    and a failed manifest saying why."""
    root = run.output_root
    table = QUARANTINE_TABLES[kind]
    fingerprint = data_fingerprint([f.sha256 for f in files])
    if isinstance(quarantine, pd.DataFrame):
        QuarantineTable.validate(quarantine, lazy=True)
    with publish_lock(root), all_or_nothing() as outputs:
        sweep_temp_files(root)
        if isinstance(quarantine, pd.DataFrame):
            outputs[table] = write_table(quarantine, root, table, run, fingerprint)
        else:
            outputs[table] = write_quarantine(quarantine, root, table, run, fingerprint)
        manifest = build_manifest(run, files, "failed", outputs, error=error, kind=kind)
        outputs["manifest"] = manifest_path(root, run.run_id)
        write_json(outputs["manifest"], manifest)
    return manifest


@task(cache_policy=NONE)
def publish_run(
    run: RunInfo,
    data: ValidatedData,
    tables: dict[str, pd.DataFrame],
    fit: FitResult,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    promotion_tolerance: float,
    drift_threshold: float,
) -> dict[str, Any]:
    """Write the run's tables, report and manifest, promote if it passes the gate; returns the
    manifest."""
    return publish_outputs(
        run, data, tables, fit, features, targets, promotion_tolerance, drift_threshold
    )


@task(cache_policy=NONE)
def check_data_quality(
    run: RunInfo, data: ValidatedData, max_bad_fraction: float, kind: str = "train"
) -> None:
    """Fail the run when too few rows are usable, publishing the quarantine and a failed
    manifest first so that the rejected rows are kept with their reasons."""
    try:
        check_quality(data.files, max_bad_fraction)
    except DataQualityError as exc:
        publish_rejection(run, data.files, data.quarantine, str(exc), kind)
        raise


def check_streamed_quality(
    run: RunInfo,
    streamed: StreamedData,
    max_bad_fraction: float,
    emit_duplicates: Callable[[], list[FileEmit]],
) -> None:
    """check_data_quality for a streamed run (called by the flow, as it submits tasks): before
    the refusal is published, pass 2 runs without a model to write the quarantine records of
    duplicate keys."""
    try:
        check_quality(streamed.files, max_bad_fraction)
    except DataQualityError as exc:
        parts = streamed.quarantine_parts(emit_duplicates())
        publish_rejection(run, streamed.files, parts, str(exc))
        raise


@task(cache_policy=NONE)
def publish_streamed_run(
    run: RunInfo,
    streamed: StreamedData,
    emits: list[FileEmit],
    tables: dict[str, pd.DataFrame],
    fit: FitResult,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    promotion_tolerance: float,
    drift_threshold: float,
) -> dict[str, Any]:
    """publish_streamed as a task; returns the manifest."""
    return publish_streamed(
        run, streamed, emits, tables, fit, features, targets, promotion_tolerance, drift_threshold
    )
