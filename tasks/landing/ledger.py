"""Ledger: every file that lands, identified by its content (sha256), processed exactly once.

A SQLite file under the ledger folder records each (name, sha256) seen, with its size, status,
row counts and the training run that used it. Accepted files are copied, read-only and
content-addressed, into `<ledger>/files/` so that training reads exactly the bytes that were
checked, whatever later happens in the landing folder. How files get here: tasks/landing/check.py.

Statuses: `accepted` (checked, waiting for or used by training), `failed` (rejected, with the
reason), `duplicate` (same content as a file already recorded: not trained again).

The dataset is the base file plus, for each name, its latest accepted version (the `dataset`
view): a file landed again under the same name with new content replaces the earlier version,
whose row and stored copy stay for audit; a rejected re-send leaves the earlier version in.
Versions of a name are ordered by `recorded_at`, the time a check took the version up.

Checks may run at once (the command line next to a deployment): a check first claims the content
(`claims`, in one transaction with the look-ups that decide), so that one check does the work
and records it; a claim older than the check's timeout is taken over, so a crashed check
blocks nothing for long.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE
from prefect.states import State

from schemas.params import DATASET, DATASET_BASE
from tasks.common.paths import confine, resolve_inputs
from tasks.common.storage import atomic_write

LEDGER_DB = "ledger.sqlite"
STORE = "files"

_SCHEMA = (
    """
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
    """,
    # Content being checked right now, by which check (`token`) since when.
    """
    create table if not exists claims (
        sha256 text primary key,
        name text not null,
        token text not null,
        claimed_at text not null
    )
    """,
    # For each name its latest accepted version: what training reads besides the base file.
    """
    create view if not exists dataset as
    select * from landed_files f
    where f.status = 'accepted' and not exists (
        select 1 from landed_files g
        where g.name = f.name and g.status = 'accepted'
        and (g.recorded_at, g.sha256) > (f.recorded_at, f.sha256)
    )
    """,
)


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
        for statement in _SCHEMA:
            conn.execute(statement)
        yield conn
        conn.commit()
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction that holds the ledger's write lock from its first read, so that
    what it reads stays true until it commits (rolled back on error)."""
    conn.execute("begin immediate")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def stamp(moment: datetime | None = None) -> str:
    """A ledger time: UTC ISO 8601 with microseconds (sorts as text)."""
    return (moment or datetime.now(UTC)).isoformat(timespec="microseconds")


def is_recorded(conn: sqlite3.Connection, name: str, sha256: str) -> bool:
    """Whether this (name, content) has a ledger row."""
    row = conn.execute(
        "select 1 from landed_files where name = ? and sha256 = ?", (name, sha256)
    ).fetchone()
    return row is not None


def known_content(conn: sqlite3.Connection, sha256: str) -> str | None:
    """Name of an earlier file with this content (accepted or failed), if any."""
    row = conn.execute(
        "select name from landed_files where sha256 = ? and status != 'duplicate' "
        "order by recorded_at limit 1",
        (sha256,),
    ).fetchone()
    return None if row is None else row["name"]


def claim_check(
    conn: sqlite3.Connection,
    landed: LandedFile,
    token: str,
    expire_seconds: float,
    now: datetime | None = None,
) -> tuple[str, str | None]:
    """Decide in one transaction what this check does with `landed` -> (outcome, reason):
    `recorded` (its name and content are in the ledger already), `duplicate` (an earlier file
    had this content: recorded here, with the reason), `in_progress` (another check holds a
    claim on this content taken less than `expire_seconds` ago) or `claimed` (the claim is
    this check's, under `token`: check the file, then finish_check or release_claim)."""
    now = now or datetime.now(UTC)
    with transaction(conn):
        if is_recorded(conn, landed.path.name, landed.sha256):
            return "recorded", None
        earlier = known_content(conn, landed.sha256)
        if earlier is not None:
            reason = f"same content as {earlier}"
            record(conn, landed, "duplicate", stamp(now), reason=reason)
            return "duplicate", reason
        held = conn.execute(
            "select claimed_at from claims where sha256 = ?", (landed.sha256,)
        ).fetchone()
        if held is not None and held["claimed_at"] > stamp(now - timedelta(seconds=expire_seconds)):
            return "in_progress", None
        conn.execute(
            "insert or replace into claims (sha256, name, token, claimed_at) values (?, ?, ?, ?)",
            (landed.sha256, landed.path.name, token, stamp(now)),
        )
        return "claimed", None


def finish_check(
    conn: sqlite3.Connection, landed: LandedFile, token: str, status: str, **fields: Any
) -> bool:
    """Record the outcome of a claimed check (see record; dated by the claim) and drop the
    claim, in one transaction; False, recording nothing, when the claim is no longer this
    check's (it outlived the expiry and another check took it over)."""
    with transaction(conn):
        held = conn.execute(
            "select claimed_at from claims where sha256 = ? and token = ?",
            (landed.sha256, token),
        ).fetchone()
        if held is None:
            return False
        record(conn, landed, status, held["claimed_at"], **fields)
        conn.execute("delete from claims where sha256 = ?", (landed.sha256,))
    return True


def release_claim(conn: sqlite3.Connection, sha256: str, token: str) -> None:
    """Drop this check's claim on a content, if it still holds it."""
    with transaction(conn):
        conn.execute("delete from claims where sha256 = ? and token = ?", (sha256, token))


def current_version(conn: sqlite3.Connection, name: str) -> str | None:
    """sha256 of the version of `name` in the dataset, if any."""
    row = conn.execute("select sha256 from dataset where name = ?", (name,)).fetchone()
    return None if row is None else row["sha256"]


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
    recorded_at: str,
    *,
    reason: str | None = None,
    rows: int | None = None,
    accepted: int | None = None,
    quarantined: int | None = None,
    stored_path: Path | None = None,
) -> None:
    """Add one (name, content) to the ledger, in the caller's transaction."""
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
            recorded_at,
        ),
    )


def untrained_files(conn: sqlite3.Connection) -> list[str]:
    """Stored paths of the dataset's landed files that no training run has used yet (a version
    replaced before any run read it is never used)."""
    rows = conn.execute(
        "select stored_path from dataset where run_id is null order by recorded_at"
    ).fetchall()
    return [r["stored_path"] for r in rows]


def accepted_files(conn: sqlite3.Connection) -> list[str]:
    """Stored paths of the dataset's landed files (the latest accepted version of each name),
    oldest first."""
    rows = conn.execute("select stored_path from dataset order by recorded_at").fetchall()
    return [r["stored_path"] for r in rows]


def landed_files(ledger_dir: Path) -> list[Path]:
    """The dataset's landed files (stored copies; see accepted_files), oldest first; none while
    there is no ledger (nothing is created)."""
    if not (ledger_dir / LEDGER_DB).is_file():
        return []
    with open_ledger(ledger_dir) as conn:
        return [Path(stored) for stored in accepted_files(conn)]


def training_inputs(data: str | list[str], ledger: str, roots: list[Path]) -> list[Path]:
    """The files a training run reads: for `data="dataset"`, the dataset (DATASET_BASE plus
    the latest accepted version of each file landed in `ledger`, oldest first); otherwise
    the files `data` names (see resolve_inputs). Every path confined to `roots`."""
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
    """Every ledger row as a dict, oldest first, with `in_dataset`: whether training reads it
    (for reports and tests)."""
    with open_ledger(ledger_dir) as conn:
        rows = conn.execute(
            "select f.*, exists (select 1 from dataset d where d.name = f.name "
            "and d.sha256 = f.sha256) as in_dataset from landed_files f order by recorded_at"
        ).fetchall()
    return [{**dict(r), "in_dataset": bool(r["in_dataset"])} for r in rows]


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
