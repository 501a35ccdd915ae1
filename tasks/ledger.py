"""Ledger: every file that lands, identified by its content (sha256), processed exactly once.

A SQLite file under the ledger folder records each (name, sha256) seen, with its size, status,
row counts and the training run that used it. Accepted files are copied, read-only and
content-addressed, into `<ledger>/files/` so that training reads exactly the bytes that were
checked, whatever later happens in the landing folder. How files get here: tasks/landing.py.

Statuses: `accepted` (checked, waiting for or used by training), `failed` (rejected, with the
reason), `duplicate` (same content as a file already recorded: not trained again).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.states import State

from schemas.params import DATASET, DATASET_BASE
from tasks.paths import confine, resolve_inputs
from tasks.storage import atomic_write

LEDGER_DB = "ledger.sqlite"
STORE = "files"

_SCHEMA = """
create table if not exists landed_files (
    name text not null,
    sha256 text not null,
    size_bytes integer not null,
    status text not null check (status in ('accepted', 'failed', 'duplicate')),
    reason text,
    rows integer,
    accepted integer,
    quarantined integer,
    stored_path text,
    run_id text,
    run_status text,
    recorded_at text not null,
    primary key (name, sha256)
)
"""


@dataclass(frozen=True)
class LandedFile:
    """A complete file in the landing folder, not yet in the ledger."""

    path: Path
    sha256: str
    size_bytes: int


@contextmanager
def open_ledger(ledger_dir: Path) -> Iterator[sqlite3.Connection]:
    """Connection to the ledger (created on first use), committed on success."""
    ledger_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(ledger_dir / LEDGER_DB, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute(_SCHEMA)
        yield conn
        conn.commit()
    finally:
        conn.close()


def known_content(conn: sqlite3.Connection, sha256: str) -> str | None:
    """Name of an earlier file with this content (accepted or failed), if any."""
    row = conn.execute(
        "select name from landed_files where sha256 = ? and status != 'duplicate' "
        "order by recorded_at limit 1",
        (sha256,),
    ).fetchone()
    return None if row is None else row["name"]


def store_file(ledger_dir: Path, landed: LandedFile) -> Path:
    """Copy an accepted file into the content-addressed store; returns the stored path."""
    target = ledger_dir / STORE / f"{landed.sha256[:16]}_{landed.path.name}"
    if not target.exists():
        atomic_write(target, lambda tmp: shutil.copyfile(landed.path, tmp))
        target.chmod(0o444)
    return target


def record(
    conn: sqlite3.Connection,
    landed: LandedFile,
    status: str,
    *,
    reason: str | None = None,
    rows: int | None = None,
    accepted: int | None = None,
    quarantined: int | None = None,
    stored_path: Path | None = None,
) -> None:
    """Add one (name, content) to the ledger."""
    conn.execute(
        "insert into landed_files (name, sha256, size_bytes, status, reason, rows, accepted, "
        "quarantined, stored_path, recorded_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            landed.path.name,
            landed.sha256,
            landed.size_bytes,
            status,
            reason,
            rows,
            accepted,
            quarantined,
            None if stored_path is None else str(stored_path),
            datetime.now(UTC).isoformat(timespec="microseconds"),
        ),
    )
    conn.commit()


def untrained_files(conn: sqlite3.Connection) -> list[str]:
    """Stored paths of accepted files that no training run has used yet."""
    rows = conn.execute(
        "select stored_path from landed_files where status = 'accepted' and run_id is null "
        "order by recorded_at"
    ).fetchall()
    return [r["stored_path"] for r in rows]


def accepted_files(conn: sqlite3.Connection) -> list[str]:
    """Stored paths of every accepted file, oldest first."""
    rows = conn.execute(
        "select stored_path from landed_files where status = 'accepted' order by recorded_at"
    ).fetchall()
    return [r["stored_path"] for r in rows]


def landed_files(ledger_dir: Path) -> list[Path]:
    """Every accepted landed file (its stored copy), oldest first; none while there is no
    ledger (nothing is created)."""
    if not (ledger_dir / LEDGER_DB).is_file():
        return []
    with open_ledger(ledger_dir) as conn:
        return [Path(stored) for stored in accepted_files(conn)]


def training_inputs(data: str | list[str], ledger: str, roots: list[Path]) -> list[Path]:
    """The files a training run reads: for `data="dataset"`, the dataset (DATASET_BASE plus
    every accepted landed file of `ledger`, oldest first); otherwise the files `data` names
    (see resolve_inputs). Every path confined to `roots`."""
    if data != DATASET:
        return resolve_inputs(data, roots)
    landed = [
        confine(path, roots, "ledger") for path in landed_files(confine(ledger, roots, "ledger"))
    ]
    return resolve_inputs([DATASET_BASE], roots) + landed


def mark_trained(
    conn: sqlite3.Connection, stored_paths: list[str], run_id: str, status: str
) -> None:
    """Record which training run used these files and how it ended."""
    conn.executemany(
        "update landed_files set run_id = ?, run_status = ? "
        "where stored_path = ? and run_id is null",
        [(run_id, status, p) for p in stored_paths],
    )
    conn.commit()


def ledger_rows(ledger_dir: Path) -> list[dict]:
    """Every ledger row as a dict, oldest first (for reports and tests)."""
    with open_ledger(ledger_dir) as conn:
        rows = conn.execute("select * from landed_files order by recorded_at").fetchall()
    return [dict(r) for r in rows]


@task(cache_policy=NONE, task_run_name="untrained-files")
def files_to_train(ledger: str) -> list[str]:
    """Accepted files that no training run has used yet."""
    with open_ledger(Path(ledger)) as conn:
        return untrained_files(conn)


@task(cache_policy=NONE, task_run_name="record-training")
def record_training(ledger: str, used: list[str], state: State) -> dict[str, Any]:
    """Mark the files a training run used; fail if the training run failed. Pass the training
    flow run's final state wrapped in `quote()`, so that Prefect hands it over as it is."""
    if state.is_completed():
        manifest = state.result()
        run_id, status = manifest["run_id"], "completed"
    else:
        run_id, status = f"flow-run:{state.state_details.flow_run_id}", "failed"
    with open_ledger(Path(ledger)) as conn:
        mark_trained(conn, used, run_id, status)
    return state.result()
