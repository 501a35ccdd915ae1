"""Publish: validate a run's tables, write them, decide promotion, write the report and the
manifest last and then move the champion pointer, all under the output root's lock, all or
nothing."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow
from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from schemas.outputs import (
    QUARANTINE_ARROW,
    SCHEMA_VERSION,
    MetricsTable,
    ProfileTable,
    QuarantineTable,
    WeightsTable,
)
from schemas.params import RunConfig
from tasks.common.errors import DataQualityError
from tasks.common.runlog import run_logger
from tasks.common.storage import (
    RunInfo,
    data_fingerprint,
    manifest_path,
    move_parts,
    remove_written,
    run_folder,
    sweep_temp_files,
    table_path,
    write_json,
    write_table,
    write_table_chunks,
)
from tasks.ingest.profile import compare_profiles
from tasks.ingest.scan import Scan
from tasks.ingest.validate import FileReport, check_quality, quarantine_table
from tasks.model.evaluate import estimate_warnings, fit_warnings, metrics_from_sums, weights_frame
from tasks.model.inference import Inference, infer
from tasks.outputs.predict import Emitted
from tasks.outputs.promote import (
    decide_promotion,
    load_model,
    model_from_weights,
    output_lock,
    read_champion,
    write_champion,
)
from tasks.outputs.report import report_dir, write_report

# Where each kind of run keeps its rejected rows.
QUARANTINE_TABLES = {"train": "quarantine", "score": "score_quarantine"}
# How long a run waits for another run's publish step before it gives up.
LOCK_TIMEOUT_SECONDS = 300.0


def build_manifest(
    run: RunInfo,
    files: tuple[FileReport, ...],
    status: str,
    outputs: dict[str, Path],
    *,
    kind: str = "train",
    error: str | None = None,
    results: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's manifest: identity, kind (train or score), parameters, inputs with row
    accounting, outputs, and `results` (training, metrics, promotion, drift, warnings, ...)."""
    results = {"training": None, "metrics": None, "promotion": None, "drift": None} | (
        results or {}
    )
    return {
        "run_id": run.run_id,
        "kind": kind,
        "status": status,
        "error": error,
        "started_at": run.started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
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
        **results,
        "warnings": results.get("warnings") or [],
        "outputs": {name: str(path.relative_to(run.output_root)) for name, path in outputs.items()},
    }


def publish_training(
    run: RunInfo,
    scan: Scan,
    emitted: Emitted,
    fit: Any,
    config: RunConfig,
    plots: dict[str, bytes],
) -> dict[str, Any]:
    """Under the output lock, all or nothing: validate and write the small tables, move the
    staged predictions in, merge the quarantine, decide promotion on the holdout statistics,
    measure drift against the champion, write the report (with `plots`, drawn while pass 2
    ran) and the manifest, then move the champion pointer if promoted."""
    inference = fit_inference(scan, emitted, config)
    tables = {
        "weights": weights_frame(fit, inference, config.features, config.targets),
        "metrics": metrics_from_sums(emitted.sums, fit, config.targets, inference),
        "profile": scan.profile_table(),
    }
    for name, frame in tables.items():
        SMALL_TABLES[name].validate(frame, lazy=True)
    root = run.output_root
    fingerprint = data_fingerprint([f.sha256 for f in scan.files])
    report_folder = report_dir(root, run.run_id)
    with publish_lock(root), all_or_nothing(report_folder) as outputs:
        sweep_temp_files(root)
        write_run_tables(outputs, run, tables, emitted.parts, scan, fingerprint)
        pointer = read_champion(root)
        champion_id = None if pointer is None else pointer["run_id"]
        champion = None if champion_id is None else load_model(root, champion_id)
        model = model_from_weights(tables["weights"])
        promotion = decide_promotion(
            model, fit.converged, champion, champion_id, scan.holdout, config.promotion_tolerance
        )
        outputs["report"] = report_folder / "report.md"
        results = {
            "training": training_summary(fit),
            "metrics": records_of(tables["metrics"]),
            "coefficients": records_of(tables["weights"][COEFFICIENT_COLUMNS]),
            "promotion": promotion,
            "drift": drift_against(root, champion_id, tables["profile"], config.drift_threshold),
            "warnings": fit_warnings(scan.train.n, len(config.features))
            + estimate_warnings(tables["weights"]),
        }
        manifest = build_manifest(run, scan.files, "completed", outputs, results=results)
        write_report(root, manifest, plots)
        outputs["manifest"] = manifest_path(root, run.run_id)
        write_json(outputs["manifest"], manifest)
        if promotion["promoted"]:
            write_champion(root, run.run_id, promotion)
    return manifest


def write_run_tables(
    outputs: dict[str, Path],
    run: RunInfo,
    tables: dict[str, pd.DataFrame],
    parts: tuple[Path, ...],
    scan: Scan,
    fingerprint: str,
) -> None:
    """Write the small tables, move the staged predictions in and write the quarantine. Each
    goes into `outputs` before it is written, so that a failure part-way through any of them
    is undone with the rest (all_or_nothing)."""
    root, run_id = run.output_root, run.run_id
    for name, frame in tables.items():
        outputs[name] = table_path(root, name, run_id)
        write_table(frame, root, name, run, fingerprint)
    outputs["predictions"] = run_folder(root, "predictions", run_id)
    move_parts(list(parts), root, "predictions", run_id)
    outputs["quarantine"] = table_path(root, "quarantine", run_id)
    write_quarantine(scan, root, "quarantine", run, fingerprint)


def fit_inference(scan: Scan, emitted: Emitted, config: RunConfig) -> Inference:
    """The inference of the least-squares fit on the training rows (tasks/model/inference.py): the
    statistics of pass 1 and the residual sums of pass 2."""
    train = emitted.sums["train"]
    return infer(
        scan.train,
        train["sse_optimum"],
        train["meat"],
        config.features,
        config.targets,
        config.confidence,
    )


# The weights columns the manifest (and so the summary and the report) carries.
COEFFICIENT_COLUMNS = [
    "target", "feature", "weight", "ls_weight", "std_error", "ci_low", "ci_high", "p_value",
    "robust_std_error", "confidence", "note",
]  # fmt: skip


def records_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A small table as JSON-ready records (NaN and NA as null)."""
    records = frame.to_dict("records")
    return [{name: _plain(value) for name, value in row.items()} for row in records]


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


# Tables small enough to be written from one DataFrame.
SMALL_TABLES = {"weights": WeightsTable, "metrics": MetricsTable, "profile": ProfileTable}


def training_summary(fit: Any) -> dict[str, Any]:
    return {
        "epochs": fit.epochs,
        "step_size": fit.lr,
        "converged": fit.converged,
        "stop_reason": fit.stop_reason,
        "final_train_loss": fit.loss_history[-1],
    }


def write_quarantine(scan: Scan, root: Path, table: str, run: RunInfo, fingerprint: str) -> Path:
    """Every file's quarantine records, in file and line order, into the run's table file,
    validated chunk by chunk (bounded memory)."""

    def chunks() -> Iterator[pyarrow.Table]:
        yield QUARANTINE_ARROW.empty_table()
        for part in scan.parts:
            for frame in part.quarantine():
                QuarantineTable.validate(frame, lazy=True)
                yield quarantine_table(frame)

    return write_table_chunks(chunks(), QUARANTINE_ARROW, root, table, run, fingerprint)


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
    run_logger().warning(message)


@contextmanager
def all_or_nothing(*folders: Path) -> Iterator[dict[str, Path]]:
    """Collects the paths a publish writes, each listed before it is written; if the publish
    fails, removes them again, with `folders` (the champion pointer is replaced last, in one
    rename, so it never needs undoing)."""
    written: dict[str, Path] = {}
    try:
        yield written
    except BaseException:
        remove_written(list(written.values()))
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def publish_rejection(run: RunInfo, scan: Scan, error: str, kind: str) -> dict[str, Any]:
    """A run refused for its data: keep the quarantine and a failed manifest saying why."""
    root = run.output_root
    table = QUARANTINE_TABLES[kind]
    fingerprint = data_fingerprint([f.sha256 for f in scan.files])
    with publish_lock(root), all_or_nothing() as outputs:
        sweep_temp_files(root)
        outputs[table] = table_path(root, table, run.run_id)  # undone too if the write fails
        write_quarantine(scan, root, table, run, fingerprint)
        manifest = build_manifest(run, scan.files, "failed", outputs, kind=kind, error=error)
        outputs["manifest"] = manifest_path(root, run.run_id)
        write_json(outputs["manifest"], manifest)
    return manifest


@task(cache_policy=NONE, task_run_name="quality-{run.run_id}")
def check_data_quality(run: RunInfo, scan: Scan, max_bad_fraction: float, kind: str) -> None:
    """Fail the run when too few rows are usable, publishing the quarantine and a failed
    manifest first so that the rejected rows are kept with their reasons."""
    try:
        check_quality(list(scan.files), max_bad_fraction)
    except DataQualityError as exc:
        publish_rejection(run, scan, str(exc), kind)
        raise


@task(cache_policy=NONE, task_run_name="publish-{run.run_id}")
def publish_run(
    run: RunInfo,
    scan: Scan,
    emitted: Emitted,
    fit: Any,
    config: RunConfig,
    plots: dict[str, bytes],
) -> dict[str, Any]:
    """publish_training as a task; returns the manifest."""
    return publish_training(run, scan, emitted, fit, config, plots)
