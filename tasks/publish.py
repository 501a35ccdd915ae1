"""Publish: validate a run's tables, write them, decide promotion, write the manifest last and
then move the champion pointer, all under the output root's lock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from schemas.outputs import (
    SCHEMA_VERSION,
    MetricsTable,
    QuarantineTable,
    WeightsTable,
    predictions_schema,
)
from tasks.errors import DataQualityError
from tasks.promote import (
    decide_promotion,
    load_model,
    model_from_weights,
    output_lock,
    read_champion,
    write_champion,
)
from tasks.storage import (
    RunInfo,
    data_fingerprint,
    manifest_path,
    remove_written,
    sweep_temp_files,
    write_json,
    write_table,
)
from tasks.train import FitResult
from tasks.validate import ValidatedData, check_quality

# How long a run waits for another run's publish step before it gives up.
LOCK_TIMEOUT_SECONDS = 300.0


def build_manifest(
    run: RunInfo,
    data: ValidatedData,
    status: str,
    outputs: dict[str, Any],
    *,
    error: str | None = None,
    fit: FitResult | None = None,
    metrics: pd.DataFrame | None = None,
    promotion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's manifest: identity, parameters, inputs with row accounting, outputs, results."""
    return {
        "run_id": run.run_id,
        "status": status,
        "error": error,
        "started_at": run.started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "flow_run_id": flow_run.get_id(),
        "schema_version": SCHEMA_VERSION,
        "data_fingerprint": data_fingerprint([f.sha256 for f in data.files]),
        "parameters": run.parameters,
        "inputs": [vars(f) for f in data.files],
        "rows": {
            "in": data.rows_in,
            "accepted": len(data.accepted),
            "quarantined": data.rows_quarantined,
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
) -> dict[str, Any]:
    """Validate and write predictions, weights, metrics and quarantine; decide promotion
    against the champion; write the manifest; then move the champion pointer if promoted."""
    tables = {**tables, "quarantine": data.quarantine}
    schemas = {
        "predictions": predictions_schema(features, targets),
        "weights": WeightsTable.to_schema(),
        "metrics": MetricsTable.to_schema(),
        "quarantine": QuarantineTable.to_schema(),
    }
    for name, frame in tables.items():
        schemas[name].validate(frame, lazy=True)
    root = run.output_root
    fingerprint = data_fingerprint([f.sha256 for f in data.files])
    with output_lock(root, LOCK_TIMEOUT_SECONDS), _all_or_nothing() as outputs:
        sweep_temp_files(root)
        for name, frame in tables.items():
            outputs[name] = write_table(frame, root, name, run, fingerprint)
        pointer = read_champion(root)
        champion_id = None if pointer is None else pointer["run_id"]
        predictions = tables["predictions"]
        promotion = decide_promotion(
            model_from_weights(tables["weights"]),
            fit.converged,
            None if champion_id is None else load_model(root, champion_id),
            champion_id,
            predictions[predictions["split"] == "holdout"],
            promotion_tolerance,
        )
        manifest = build_manifest(
            run,
            data,
            "completed",
            outputs,
            fit=fit,
            metrics=tables["metrics"],
            promotion=promotion,
        )
        outputs["manifest"] = manifest_path(root, run.run_id)
        write_json(outputs["manifest"], manifest)
        if promotion["promoted"]:
            write_champion(root, run.run_id, promotion)
    return manifest


@contextmanager
def _all_or_nothing() -> Iterator[dict[str, Path]]:
    """Collects the paths a publish writes; if it fails, removes them again (the champion
    pointer is replaced last, in one rename, so it never needs undoing)."""
    written: dict[str, Path] = {}
    try:
        yield written
    except BaseException:
        remove_written(list(written.values()))
        raise


def publish_rejection(run: RunInfo, data: ValidatedData, error: str) -> dict[str, Any]:
    """A run refused for its data: keep the quarantine and a failed manifest saying why."""
    QuarantineTable.validate(data.quarantine, lazy=True)
    root = run.output_root
    fingerprint = data_fingerprint([f.sha256 for f in data.files])
    with output_lock(root, LOCK_TIMEOUT_SECONDS), _all_or_nothing() as outputs:
        sweep_temp_files(root)
        outputs["quarantine"] = write_table(data.quarantine, root, "quarantine", run, fingerprint)
        manifest = build_manifest(run, data, "failed", outputs, error=error)
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
) -> dict[str, Any]:
    """Write the run's tables and manifest, promote if it passes the gate; returns the manifest."""
    return publish_outputs(run, data, tables, fit, features, targets, promotion_tolerance)


@task(cache_policy=NONE)
def check_data_quality(run: RunInfo, data: ValidatedData, max_bad_fraction: float) -> None:
    """Fail the run when too few rows are usable, publishing the quarantine and a failed
    manifest first so that the rejected rows are kept with their reasons."""
    try:
        check_quality(data, max_bad_fraction)
    except DataQualityError as exc:
        publish_rejection(run, data, str(exc))
        raise
