"""Publish: a run's commit. The run's rows go into the Delta tables (tasks/outputs/tables.py), one
append transaction per table, and its row of the `runs` table, appended last, is the commit:
readers that go through `runs` see a run whole or not at all. A training run moves the champion
pointer (compare-and-swap, tasks/outputs/promote.py) just before that row. After the commit come
the readable copies (`manifests/<id>.json`, `champion.json`) and retention.

A publish that fails takes back what it had committed; the rows of a run that died between two
commits are removed by a later run (tasks/outputs/retention.py).
No lock and no rename: what runs share is the tables, which commit by conditional writes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake.exceptions import DeltaError
from prefect import task
from prefect.cache_policies import NONE
from prefect.runtime import flow_run

from schemas.outputs import (
    NULLABLE_ARROW,
    QUARANTINE_ARROW,
    RUNS,
    RUNS_ARROW,
    RUNS_COLUMNS,
    SCHEMA_VERSION,
    MetricsTable,
    ProfileTable,
    QuarantineTable,
    WeightsTable,
    descriptions_of,
)
from schemas.params import RunConfig
from tasks.common import store
from tasks.common.errors import DataQualityError, PipelineError, PublishError
from tasks.common.runlog import run_logger
from tasks.common.storage import (
    RunInfo,
    data_fingerprint,
    describe_error,
    manifest_path,
    remove_tree,
    working_files,
    write_json,
)
from tasks.common.store import Location
from tasks.ingest.scan import Scan
from tasks.ingest.validate import FileReport, check_quality, quarantine_table
from tasks.outputs import tables
from tasks.outputs.predict import Emitted
from tasks.outputs.promote import (
    Promotion,
    crown,
    model_from_weights,
    write_champion_copy,
)
from tasks.outputs.report import REPORTS, report_dir, report_plots, write_report
from tasks.outputs.retention import apply_retention, sweep_orphans

# Where each kind of run keeps its rejected rows.
QUARANTINE_TABLES = {"train": "quarantine", "score": "score_quarantine"}
# Tables small enough to be written from one DataFrame, with their contracts.
SMALL_TABLES = {"weights": WeightsTable, "metrics": MetricsTable, "profile": ProfileTable}


@dataclass
class Commit:
    """The tables one run has committed to so far, so that a failure can take them back."""

    run: RunInfo
    committed: list[str] = field(default_factory=list)

    def append(self, table: str, data: pa.Table, descriptions: dict[str, str]) -> None:
        self.committed.append(table)
        tables.append(self.run.output_root, table, data, self.run.run_id, descriptions=descriptions)

    def parts(
        self, table: str, parts: list[str], schema: pa.Schema, descriptions: dict[str, str]
    ) -> None:
        self.committed.append(table)
        tables.commit_parts(
            self.run.output_root,
            table,
            self.run.run_id,
            parts,
            schema,
            descriptions=descriptions,
        )

    def crowned(self) -> None:
        """The run became the champion: a failure before its commit takes the promotion back
        too (its row of `champions` goes, so the champion before it is current again)."""
        self.committed.append(tables.CHAMPIONS)

    def finish(self, manifest: dict[str, Any]) -> None:
        """The run's row of `runs`: its commit."""
        descriptions = {name: text for name, (_, text) in RUNS_COLUMNS.items()}
        tables.append(self.run.output_root, RUNS, runs_row(manifest), self.run.run_id,
                      descriptions=descriptions)  # fmt: skip

    def undo(self) -> None:
        """Take this run's rows out of every table it committed to (best effort: what is left
        is invisible to readers going through `runs`, and the orphan sweep removes it)."""
        for table in dict.fromkeys(self.committed):
            with contextlib.suppress(Exception):
                tables.delete_runs(self.run.output_root, table, [self.run.run_id])


@contextlib.contextmanager
def committing(run: RunInfo, *folders: Location) -> Iterator[Commit]:
    """A run's commit; on failure its committed rows are taken back and the files under
    `folders` deleted."""
    commit = Commit(run)
    try:
        yield commit
    except BaseException:
        commit.undo()
        for folder in folders:
            with contextlib.suppress(Exception):  # best effort, as undo: the run failed already
                remove_tree(folder)
        raise


def commit_training(
    run: RunInfo,
    scan: Scan,
    predicted: Emitted,
    model_tables: dict[str, pd.DataFrame],
    promotion: Promotion,
    results: dict[str, Any],
    config: RunConfig,
    plots: dict[str, bytes],
    quarantine: str | None = None,
) -> dict[str, Any]:
    """Commit a training run: weights, metrics, profile, quarantine (the part `quarantine`, if
    written already) and the predictions pass 2 wrote, the champion (if the gate promotes it),
    the report, then its row of `runs`. Returns the manifest."""
    for name, frame in model_tables.items():
        SMALL_TABLES[name].validate(frame, lazy=True)
    root, weights = run.output_root, model_tables["weights"]
    report_folder = report_dir(root, run.run_id)
    # the report's plots of the results are drawn while the tables commit
    with ThreadPoolExecutor(1) as side:
        drawn = side.submit(report_plots, root, {**results, "run_id": run.run_id})
        sweep_orphans(root)
        with committing(run, report_folder) as commit:
            for name, frame in model_tables.items():
                commit.append(name, arrow_of(frame), descriptions_of(SMALL_TABLES[name]))
            commit_quarantine(commit, scan, "quarantine", quarantine)
            commit.parts(
                "predictions", list(predicted.parts), predicted.schema, predicted.described
            )
            decision = crown(
                root,
                run.run_id,
                model_from_weights(weights),
                results["training"]["converged"],
                scan.holdout,
                config.promotion_tolerance,
                promotion,
            )
            if decision["promoted"]:
                commit.crowned()
            results = {**results, "promotion": decision, "drift": promotion.drift}
            outputs = outputs_of(run, [*model_tables, "predictions", "quarantine"])
            outputs["report"] = f"{REPORTS}/{run.run_id}/report.md"
            manifest = build_manifest(run, scan.files, "completed", outputs, results=results)
            write_report(root, manifest, {**plots, **drawn.result()})
            commit.finish(manifest)
    after_commit(root, manifest, config.keep_runs)
    return manifest


def commit_rejection(run: RunInfo, scan: Scan, error: str, kind: str) -> dict[str, Any]:
    """A run refused for its data: its quarantine and a failed row of `runs` saying why."""
    table = QUARANTINE_TABLES[kind]
    with committing(run) as commit:
        commit_quarantine(commit, scan, table)
        outputs = outputs_of(run, [table])
        manifest = build_manifest(run, scan.files, "failed", outputs, kind=kind, error=error)
        commit.finish(manifest)
    after_commit(run.output_root, manifest, keep_runs=None)
    return manifest


def commit_quarantine(commit: Commit, scan: Scan, table: str, path: str | None = None) -> None:
    """Commit the run's part of `table` (`path`, written by write_quarantine; None: written
    now)."""
    run = commit.run
    path = path or write_quarantine(run.output_root, run.run_id, scan, table)
    commit.parts(table, [path], QUARANTINE_ARROW, descriptions_of(QuarantineTable))


def write_quarantine(root: Location, run_id: str, scan: Scan, table: str) -> str:
    """Every file's quarantine records, in file and line order, as one part of the run's rows of
    `table` (not committed: no reader sees it yet), validated chunk by chunk (bounded memory).
    Returns the part's path."""
    path = tables.part_path(root, table, run_id)
    with store.open_output(path) as sink, pq.ParquetWriter(sink, QUARANTINE_ARROW) as writer:
        for part in scan.parts:
            for frame in part.quarantine():
                QuarantineTable.validate(frame, lazy=True)
                writer.write_table(quarantine_table(frame))
    return path


@task(cache_policy=NONE, task_run_name="quarantine-{run.run_id}")
def write_quarantine_task(run: RunInfo, scan: Scan) -> str:
    """write_quarantine of a training run, as a task: it runs while pass 2 writes, so that the
    commit only commits the part."""
    folder = store.parent_of(tables.part_path(run.output_root, "quarantine", run.run_id))
    try:
        with working_files(folder):  # a full disk: its own line
            return write_quarantine(run.output_root, run.run_id, scan, "quarantine")
    except OSError as exc:  # a store refusing the write, as the commit would say it
        raise PublishError(
            f"{run.output_root}: could not commit run {run.run_id} ({describe_error(exc)})"
        ) from exc


def arrow_of(frame: pd.DataFrame) -> pa.Table:
    """A small table's frame as Arrow, columns that can be null in a whole run typed
    (NULLABLE_ARROW) so that every run's schema is the same."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name, kind in NULLABLE_ARROW.items():
        if name in table.column_names:
            index = table.schema.get_field_index(name)
            table = table.set_column(index, name, table.column(name).cast(kind))
    return table.replace_schema_metadata(None)


def outputs_of(run: RunInfo, names: list[str]) -> dict[str, str]:
    """Where each table keeps the run's files (the run's partition folder), relative to the
    output root."""
    return {name: f"{name}/{tables.PARTITION}={run.run_id}" for name in names}


def build_manifest(
    run: RunInfo,
    files: tuple[FileReport, ...],
    status: str,
    outputs: dict[str, str],
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
        "outputs": dict(outputs),
    }


def runs_row(manifest: dict[str, Any]) -> pa.Table:
    """A manifest as its row of `runs`."""
    promotion = manifest.get("promotion") or {}
    row = {
        "kind": manifest["kind"],
        "status": manifest["status"],
        "error": manifest["error"],
        "started_at": datetime.fromisoformat(manifest["started_at"]),
        "finished_at": datetime.fromisoformat(manifest["finished_at"]),
        "flow_run_id": None if manifest["flow_run_id"] is None else str(manifest["flow_run_id"]),
        "schema_version": manifest["schema_version"],
        "data_fingerprint": manifest["data_fingerprint"],
        "rows_in": manifest["rows"]["in"],
        "rows_accepted": manifest["rows"]["accepted"],
        "rows_quarantined": manifest["rows"]["quarantined"],
        "promoted": promotion.get("promoted"),
        "promotion_reason": promotion.get("reason"),
        "champion_before": promotion.get("champion_before"),
        "model_run_id": manifest.get("model_run_id"),
        "warnings": list(manifest["warnings"]),
        "manifest": json.dumps(manifest, default=str),
    }
    return pa.Table.from_pylist([row], schema=RUNS_ARROW)


def after_commit(root: Location, manifest: dict[str, Any], keep_runs: int | None) -> None:
    """The readable copies and retention (`keep_runs`; None: none). The run is committed: a
    failure here is a warning, the next run's retention and copies catch up."""
    try:
        write_copies(root, manifest)
        if keep_runs is not None:
            apply_retention(root, keep_runs)
    except (OSError, PipelineError, DeltaError) as exc:
        run_logger().warning("run %s is committed, but %s", manifest["run_id"], exc)


def write_copies(root: Location, manifest: dict[str, Any]) -> None:
    """The readable copies of a committed run: its manifest and, for training, champion.json."""
    write_json(manifest_path(root, manifest["run_id"]), manifest)
    if manifest["kind"] == "train":
        write_champion_copy(root)


@task(cache_policy=NONE, task_run_name="quality-{run.run_id}")
def check_data_quality(run: RunInfo, scan: Scan, max_bad_fraction: float, kind: str) -> None:
    """Fail the run when too few rows are usable, committing the quarantine and a failed row of
    `runs` first so that the rejected rows are kept with their reasons."""
    try:
        check_quality(list(scan.files), max_bad_fraction)
    except DataQualityError as exc:
        commit_rejection(run, scan, str(exc), kind)
        raise


@task(cache_policy=NONE, task_run_name="commit-{run.run_id}")
def commit_training_task(
    run: RunInfo,
    scan: Scan,
    predicted: Emitted,
    model_tables: dict[str, pd.DataFrame],
    promotion: Promotion,
    results: dict[str, Any],
    config: RunConfig,
    plots: dict[str, bytes],
    quarantine: str | None = None,
) -> dict[str, Any]:
    """commit_training as a task; returns the manifest."""
    try:
        return commit_training(run, scan, predicted, model_tables, promotion, results, config,
                               plots, quarantine)  # fmt: skip
    except (OSError, DeltaError) as exc:  # a store that takes no more (disk full, a quota)
        raise PublishError(
            f"{run.output_root}: could not commit run {run.run_id} ({describe_error(exc)})"
        ) from exc
