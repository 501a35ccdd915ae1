"""Retention: what a later run removes. The rows of runs that died between two commits (in a
table, not in `runs`, and older than any run can live), and the big tables' rows of runs older
than the last `keep_runs` of their kind (not the champion's), whose files vacuum deletes once no
version of the last `vacuum_hours()` needs them.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta

import pandas as pd

from schemas.outputs import PRUNED_TABLES, RUNS, RUNS_COLUMNS, TABLES
from schemas.params import RUN_TIMEOUT_SECONDS
from tasks.common.errors import ParameterError
from tasks.common.runlog import run_logger
from tasks.common.store import Location
from tasks.outputs import tables
from tasks.outputs.promote import read_champion

# A run not committed this long after it started is dead (its flow's timeout has passed).
ORPHAN_AFTER_SECONDS = RUN_TIMEOUT_SECONDS + 3600
# Files no version needs any more are deleted once they are this old: longer than any run (a
# part written but not committed yet is protected by its age alone) and any read in flight.
VACUUM_HOURS_ENV = "SALES_MODEL_VACUUM_HOURS"
DEFAULT_VACUUM_HOURS = 24.0
MAX_VACUUM_HOURS = 365 * 24.0


def vacuum_hours() -> float:
    """SALES_MODEL_VACUUM_HOURS, read when a run or `make vacuum` needs it (a process that
    serves many runs, the warm runner, sees each run's environment)."""
    value = os.environ.get(VACUUM_HOURS_ENV, "")
    try:
        hours = float(value) if value else DEFAULT_VACUUM_HOURS
    except ValueError:
        hours = -1.0
    if not 0 <= hours <= MAX_VACUUM_HOURS:  # also NaN and inf
        raise ParameterError(
            f"{VACUUM_HOURS_ENV}={value!r} is not a number of hours from 0 to {MAX_VACUUM_HOURS:g}"
        )
    return hours


def committed_runs(root: Location) -> pd.DataFrame:
    """The `runs` table (run_id, kind, status, ... ; empty before the first commit)."""
    if tables.version_of(root, RUNS) is None:
        return pd.DataFrame(columns=["run_id", *RUNS_COLUMNS])
    return tables.read(root, RUNS).to_pandas()


def started_at(run_id: str) -> datetime:
    """When a run started, from its id (`20261201T081530.123Z-...`; older ids lack the ms)."""
    stamp = run_id.split("Z-")[0]
    form = "%Y%m%dT%H%M%S.%f" if "." in stamp else "%Y%m%dT%H%M%S"
    return datetime.strptime(stamp, form).replace(tzinfo=UTC)


def sweep_orphans(root: Location, now: datetime | None = None) -> list[str]:
    """Remove the rows of runs that died between two commits: in a table, not in `runs`, and
    started longer ago than any run can live. Returns their ids."""
    now = now or datetime.now(UTC)
    committed = set(committed_runs(root)["run_id"])
    dead = now - timedelta(seconds=ORPHAN_AFTER_SECONDS)
    orphans: set[str] = set()
    for table in dict.fromkeys((*TABLES, *PRUNED_TABLES, tables.CHAMPIONS)):
        found = {r for r in _run_ids(root, table) - committed if started_at(r) < dead}
        if found:
            tables.delete_runs(root, table, found)
            orphans |= found
    if orphans:
        run_logger().warning("removed the rows of runs that died before their commit: %s",
                             ", ".join(sorted(orphans)))  # fmt: skip
    return sorted(orphans)


def _run_ids(root: Location, table: str) -> set[str]:
    """The runs with rows in `table` (`champions` is not partitioned: its run_id column)."""
    if table != tables.CHAMPIONS:
        return tables.run_ids(root, table)
    if tables.version_of(root, table) is None:
        return set()
    return set(tables.read(root, table, filters=None).column("run_id").to_pylist())


def apply_retention(root: Location, keep_runs: int) -> None:
    """Keep the big tables' rows (predictions, quarantine, scores, score_quarantine) of the last
    `keep_runs` runs of each kind and of the champion; then vacuum what no version of the last
    `vacuum_hours()` needs. Weights, metrics, profile and `runs` are kept whole."""
    hours = math.ceil(vacuum_hours())
    runs = committed_runs(root).sort_values("run_id")
    champion = read_champion(root)
    keep = {champion["run_id"]} if champion else set()
    for kind in ("train", "score"):
        keep |= set(runs[runs["kind"] == kind]["run_id"].iloc[-keep_runs:])
    old = set(runs["run_id"]) - keep
    for table in PRUNED_TABLES:
        if old:
            tables.delete_runs(root, table, old)
        tables.vacuum(root, table, hours)
