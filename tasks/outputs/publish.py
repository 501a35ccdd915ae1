"""Publish: a run's commit. The run's rows go into the Delta tables (tasks/outputs/tables.py), one
append transaction per table, and its row of the `runs` table, appended last, is the commit:
readers that go through `runs` see a run whole or not at all. A training run moves the champion
pointer (compare-and-swap, tasks/outputs/promote.py) just before that row. After the commit come
the readable copies (`manifests/<id>.json`, `champion.json`) and retention.

A publish that fails takes back what it had committed; the rows of a run that died between two
commits are removed by a later run once the run cannot be alive any more (ORPHAN_AFTER_SECONDS).
No lock and no rename: what runs share is the tables, which commit by conditional writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
    PRUNED_TABLES,
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
from schemas.params import RUN_TIMEOUT_SECONDS, RunConfig
from tasks.common.errors import DataQualityError, PipelineError, PublishError
from tasks.common.runlog import run_logger
from tasks.common.storage import (
    RunInfo,
    data_fingerprint,
    describe_error,
    manifest_path,
    write_json,
)
from tasks.ingest.scan import Scan
from tasks.ingest.validate import FileReport, check_quality, quarantine_table
from tasks.outputs import tables
from tasks.outputs.predict import Emitted
from tasks.outputs.promote import (
    Promotion,
    crown,
    model_from_weights,
    read_champion,
    write_champion_copy,
)
from tasks.outputs.report import report_dir, write_report

# Where each kind of run keeps its rejected rows.
QUARANTINE_TABLES = {"train": "quarantine", "score": "score_quarantine"}
# Tables small enough to be written from one DataFrame, with their contracts.
SMALL_TABLES = {"weights": WeightsTable, "metrics": MetricsTable, "profile": ProfileTable}
# A run not committed this long after it started is dead (its flow's timeout has passed).
ORPHAN_AFTER_SECONDS = RUN_TIMEOUT_SECONDS + 3600
# Files no version needs any more are deleted once they are this old: longer than any run (a
# part written but not committed yet is protected by its age alone) and any read in flight.
VACUUM_HOURS = float(os.environ.get("SALES_MODEL_VACUUM_HOURS", 24))


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
def committing(run: RunInfo, *folders: Path) -> Iterator[Commit]:
    """A run's commit; on failure its committed rows are taken back and `folders` removed."""
    commit = Commit(run)
    try:
        yield commit
    except BaseException:
        commit.undo()
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
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
) -> dict[str, Any]:
    """Commit a training run: weights, metrics, profile, quarantine and the predictions pass 2
    wrote, the champion (if the gate promotes it), the report, then its row of `runs`. Returns
    the manifest."""
    for name, frame in model_tables.items():
        SMALL_TABLES[name].validate(frame, lazy=True)
    root, weights = run.output_root, model_tables["weights"]
    report_folder = report_dir(root, run.run_id)
    sweep_orphans(root)
    with committing(run, report_folder) as commit:
        for name, frame in model_tables.items():
            commit.append(name, arrow_of(frame), descriptions_of(SMALL_TABLES[name]))
        commit_quarantine(commit, scan, "quarantine")
        commit.parts("predictions", list(predicted.parts), predicted.schema, predicted.described)
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
        outputs["report"] = report_folder / "report.md"
        manifest = build_manifest(run, scan.files, "completed", outputs, results=results)
        write_report(root, manifest, plots)
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


def commit_quarantine(commit: Commit, scan: Scan, table: str) -> None:
    """Every file's quarantine records, in file and line order, as one part of the run's rows of
    `table`, validated chunk by chunk (bounded memory), committed."""
    run = commit.run
    path = tables.part_path(run.output_root, table, run.run_id)
    with pq.ParquetWriter(path, QUARANTINE_ARROW) as writer:
        for part in scan.parts:
            for frame in part.quarantine():
                QuarantineTable.validate(frame, lazy=True)
                writer.write_table(quarantine_table(frame))
    commit.parts(table, [path], QUARANTINE_ARROW, descriptions_of(QuarantineTable))


def arrow_of(frame: pd.DataFrame) -> pa.Table:
    """A small table's frame as Arrow, columns that can be null in a whole run typed
    (NULLABLE_ARROW) so that every run's schema is the same."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name, kind in NULLABLE_ARROW.items():
        if name in table.column_names:
            index = table.schema.get_field_index(name)
            table = table.set_column(index, name, table.column(name).cast(kind))
    return table.replace_schema_metadata(None)


def outputs_of(run: RunInfo, names: list[str]) -> dict[str, Path]:
    """Where each table keeps the run's files (the run's partition folder)."""
    return {name: run.output_root / name / f"run_id={run.run_id}" for name in names}


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


def after_commit(root: Path, manifest: dict[str, Any], keep_runs: int | None) -> None:
    """The readable copies and retention (`keep_runs`; None: none). The run is committed: a
    failure here is a warning, the next run's retention and copies catch up."""
    try:
        write_copies(root, manifest)
        if keep_runs is not None:
            apply_retention(root, keep_runs)
    except (OSError, PipelineError, DeltaError) as exc:
        run_logger().warning("run %s is committed, but %s", manifest["run_id"], exc)


def write_copies(root: Path, manifest: dict[str, Any]) -> None:
    """The readable copies of a committed run: its manifest and, for training, champion.json."""
    write_json(manifest_path(root, manifest["run_id"]), manifest)
    if manifest["kind"] == "train":
        write_champion_copy(root)


def committed_runs(root: Path) -> pd.DataFrame:
    """The `runs` table (run_id, kind, status, ... ; empty before the first commit)."""
    if tables.version_of(root, RUNS) is None:
        return pd.DataFrame(columns=["run_id", *RUNS_COLUMNS])
    return tables.read(root, RUNS).to_pandas()


def started_at(run_id: str) -> datetime:
    """When a run started, from its id (`20261201T081530.123Z-...`; older ids lack the ms)."""
    stamp = run_id.split("Z-")[0]
    form = "%Y%m%dT%H%M%S.%f" if "." in stamp else "%Y%m%dT%H%M%S"
    return datetime.strptime(stamp, form).replace(tzinfo=UTC)


def sweep_orphans(root: Path, now: datetime | None = None) -> list[str]:
    """Remove the rows of runs that died between two commits: in a table, not in `runs`, and
    started longer ago than any run can live. Returns their ids."""
    now = now or datetime.now(UTC)
    committed = set(committed_runs(root)["run_id"])
    dead = now - timedelta(seconds=ORPHAN_AFTER_SECONDS)
    orphans: set[str] = set()
    for table in (*SMALL_TABLES, *PRUNED_TABLES):
        found = {r for r in tables.run_ids(root, table) - committed if started_at(r) < dead}
        if found:
            tables.delete_runs(root, table, found)
            orphans |= found
    if orphans:
        run_logger().warning("removed the rows of runs that died before their commit: %s",
                             ", ".join(sorted(orphans)))  # fmt: skip
    return sorted(orphans)


def apply_retention(root: Path, keep_runs: int, vacuum_hours: float = VACUUM_HOURS) -> None:
    """Keep the big tables' rows (predictions, quarantine, scores, score_quarantine) of the last
    `keep_runs` runs of each kind and of the champion; then vacuum what no version of the last
    `vacuum_hours` needs. Weights, metrics, profile and `runs` are kept whole."""
    runs = committed_runs(root).sort_values("run_id")
    champion = read_champion(root)
    keep = {champion["run_id"]} if champion else set()
    for kind in ("train", "score"):
        keep |= set(runs[runs["kind"] == kind]["run_id"].iloc[-keep_runs:])
    old = set(runs["run_id"]) - keep
    for table in PRUNED_TABLES:
        if old:
            tables.delete_runs(root, table, old)
        tables.vacuum(root, table, math.ceil(vacuum_hours))


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
) -> dict[str, Any]:
    """commit_training as a task; returns the manifest."""
    try:
        return commit_training(run, scan, predicted, model_tables, promotion, results, config,
                               plots)  # fmt: skip
    except (OSError, DeltaError) as exc:  # a store that takes no more (disk full, a quota)
        raise PublishError(
            f"{run.output_root}: could not commit run {run.run_id} ({describe_error(exc)})"
        ) from exc
