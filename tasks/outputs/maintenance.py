"""Upkeep of an output root between runs.

`vacuum_outputs` (`make vacuum`): removes the rows of runs that died before their commit, then
deletes the files of every table that no version of the retention window needs.

`migrate_outputs` (`make migrate`): converts an output root of an earlier release (Hive folders
`<table>/run_id=<id>/part-0.parquet`, each run committed by `manifests/<id>.json`) into Delta
tables in place. The Parquet files stay where they are; each manifest becomes its run's row of
`runs` and `champion.json` the first row of `champions`. The rows of runs without a manifest are
removed: that release did not count them as committed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.outputs import PRUNED_TABLES, RUNS, RUNS_COLUMNS
from tasks.common import store
from tasks.common.errors import PipelineError
from tasks.common.storage import MANIFESTS
from tasks.common.store import Location
from tasks.outputs import tables
from tasks.outputs.promote import CHAMPION_FILE
from tasks.outputs.publish import SMALL_TABLES, runs_row
from tasks.outputs.retention import committed_runs, sweep_orphans, vacuum_hours

# The tables an earlier release wrote as Hive folders.
LEGACY_TABLES = (*SMALL_TABLES, *PRUNED_TABLES)
# Every table under an output root.
ALL_TABLES = (*LEGACY_TABLES, RUNS, tables.CHAMPIONS)


@dataclass(frozen=True)
class Vacuumed:
    """What `vacuum_outputs` removed: the runs whose rows were swept (they died before their
    commit) and, per table, how many files were deleted."""

    orphans: list[str]
    deleted: dict[str, int]


def vacuum_outputs(root: Location, hours: float | None = None) -> Vacuumed:
    """Sweep the rows of runs that died before their commit, then vacuum every table: delete
    the files no version of the last `hours` needs (0: every file no current row needs, which
    breaks a read or a run in flight; None: SALES_MODEL_VACUUM_HOURS, or 24)."""
    orphans = sweep_orphans(root)
    retention = math.ceil(vacuum_hours() if hours is None else hours)
    deleted = {table: len(tables.vacuum(root, table, retention)) for table in ALL_TABLES}
    return Vacuumed(orphans, deleted)


@dataclass(frozen=True)
class Migrated:
    """What `migrate_outputs` did: the tables converted, the runs given a row of `runs`, the
    runs removed (no manifest) and the champion recorded in `champions`."""

    converted: list[str]
    recorded: list[str]
    dropped: list[str]
    champion: str | None


def migrate_outputs(root: Location) -> Migrated:
    """Convert an output root of an earlier release in place (see the module's docstring).
    Running it again converts nothing more and records only what is missing."""
    manifests = read_manifests(root)
    converted, found = [], set()
    for table in LEGACY_TABLES:
        if tables.migrate(root, table) is not None:
            converted.append(table)
            found |= tables.run_ids(root, table)
    dropped = sorted(found - set(manifests))
    for table in converted:
        tables.delete_runs(root, table, dropped)
    recorded = sorted(set(manifests) - set(committed_runs(root)["run_id"]))
    descriptions = {name: text for name, (_, text) in RUNS_COLUMNS.items()}
    for run_id in recorded:
        tables.append(root, RUNS, runs_row(manifests[run_id]), run_id, descriptions=descriptions)
    return Migrated(converted, recorded, dropped, record_champion(root, manifests))


def read_manifests(root: Location) -> dict[str, dict[str, Any]]:
    """run id -> manifest, of every `manifests/<id>.json`, checked to make a row of `runs`."""
    manifests, folder = {}, store.join(root, MANIFESTS)
    for entry in store.list_files(folder):
        path, name = entry.location, entry.location[len(folder) + 1 :]
        if "/" in name or name.startswith(".") or not name.endswith(".json"):
            continue  # what `manifests/*.json` names
        try:
            manifest = json.loads(store.read(path))
            runs_row(manifest)
        except (ValueError, KeyError, TypeError) as exc:
            raise PipelineError(
                f"{path}: not a run manifest this release can read ({type(exc).__name__}: "
                f"{exc}); move it aside and run the migration again"
            ) from exc
        manifests[name.removesuffix(".json")] = manifest
    return manifests


def record_champion(root: Location, manifests: dict[str, dict[str, Any]]) -> str | None:
    """The champion of `champions`; before the first promotion, the one `champion.json` of an
    earlier release names (if its run has a manifest) becomes the first."""
    current = tables.current_champion(root)[1]
    path = store.join(root, CHAMPION_FILE)
    if current is not None or not store.exists(path):
        return None if current is None else current["run_id"]
    pointer = json.loads(store.read(path))
    if pointer.get("run_id") not in manifests:
        return None
    promoted_at = pointer.get("promoted_at")
    row = {
        "run_id": pointer["run_id"],
        "reason": pointer.get("reason"),
        "holdout_mse": pointer.get("holdout_mse"),
        "promoted_at": datetime.fromisoformat(promoted_at) if promoted_at else None,
    }
    tables.swap_champion(root, None, row)
    return tables.current_champion(root)[1]["run_id"]
