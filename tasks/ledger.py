"""Ledger: every file that lands, identified by its content (sha256), processed exactly once.

A SQLite file under the ledger folder records each (name, sha256) seen, with its size, status,
row counts and the training run that used it. Accepted files are copied, read-only and
content-addressed, into `<ledger>/files/` so that training reads exactly the bytes that were
checked, whatever later happens in the landing folder.

Statuses: `accepted` (checked, waiting for or used by training), `failed` (rejected, with the
reason), `duplicate` (same content as a file already recorded: not trained again).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE
from prefect.states import State

from schemas.params import RunConfig
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS
from tasks.csvfile import sha256_file
from tasks.dataset import scan_file
from tasks.errors import PipelineError
from tasks.storage import atomic_write
from tasks.validate import FileReport, check_quality

LEDGER_DB = "ledger.sqlite"
STORE = "files"
# Names that writers use while a file is still being written.
_IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")

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


def is_candidate(path: Path) -> bool:
    """A visible *.csv file not named as still being written."""
    name = path.name
    if name.startswith(".") or name.endswith(_IN_PROGRESS_SUFFIXES) or path.suffix != ".csv":
        return False
    return path.is_file()


def is_complete(path: Path, settle_seconds: float, now: float | None = None) -> bool:
    """A landed file is ready when it is a candidate (see is_candidate) that has not been
    modified for `settle_seconds`."""
    now = time.time() if now is None else now
    return is_candidate(path) and now - path.stat().st_mtime >= settle_seconds


def settling(landing: Path, conn: sqlite3.Connection, settle_seconds: float) -> list[str]:
    """Candidate files still within their settle time, by name, leaving out files the ledger
    already holds (same name and size: not hashed while they may still be written)."""
    if not landing.is_dir():
        return []
    now, waiting = time.time(), []
    for path in sorted(landing.iterdir()):
        if not is_candidate(path) or is_complete(path, settle_seconds, now):
            continue
        seen = conn.execute(
            "select 1 from landed_files where name = ? and size_bytes = ?",
            (path.name, path.stat().st_size),
        ).fetchone()
        if not seen:
            waiting.append(path.name)
    return waiting


def scan_landing(
    landing: Path, conn: sqlite3.Connection, settle_seconds: float
) -> list[LandedFile]:
    """Complete files in `landing` whose (name, content) the ledger has not seen, by name."""
    if not landing.is_dir():
        return []
    found = []
    for path in sorted(landing.iterdir()):
        if not is_complete(path, settle_seconds):
            continue
        size = path.stat().st_size
        digest = sha256_file(path)
        if not is_complete(path, settle_seconds) or path.stat().st_size != size:
            continue  # changed while hashing: next scan
        seen = conn.execute(
            "select 1 from landed_files where name = ? and sha256 = ?", (path.name, digest)
        ).fetchone()
        if not seen:
            found.append(LandedFile(path, digest, size))
    return found


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


def check_landed(
    landing: Path,
    ledger_dir: Path,
    settle_seconds: float,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    max_bad_fraction: float,
    on_file: Callable[[int, int, str, str], None] | None = None,
) -> dict[str, Any]:
    """Record every new complete file in the landing folder: duplicate (same content as an
    earlier file), failed (rejected file, or too many bad rows) or accepted (copied into the
    store). Returns `accepted` (names), `failed` and `duplicate` (name -> reason) and `waiting`
    (files still within their settle time); `on_file(done, total, name, status)` is called
    after each file."""
    outcome: dict[str, Any] = {"accepted": [], "failed": {}, "duplicate": {}}
    with open_ledger(ledger_dir) as conn:
        found = scan_landing(landing, conn, settle_seconds)
        for done, landed in enumerate(found, start=1):
            status, reason = _check_one(
                conn, ledger_dir, landed, features, targets, max_bad_fraction
            )
            name = landed.path.name
            if status == "accepted":
                outcome["accepted"].append(name)
            elif status is not None:
                outcome[status][name] = reason
            if on_file is not None:
                on_file(done, len(found), name, status or "changed, next scan")
        outcome["waiting"] = settling(landing, conn, settle_seconds)
    return outcome


def file_report(path: Path, features: tuple[str, ...], targets: tuple[str, ...]) -> FileReport:
    """Row accounting of one file, with the training run's checks, read in blocks so that a
    landed file of any size is checked in bounded memory."""
    with tempfile.TemporaryDirectory(prefix="ledger-check-") as staging:
        config = RunConfig(features, targets, holdout_fraction=0.0)
        return scan_file(path, 0, config, Path(staging)).files[0]


def _check_one(
    conn: sqlite3.Connection,
    ledger_dir: Path,
    landed: LandedFile,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    max_bad_fraction: float,
) -> tuple[str | None, str | None]:
    """Check and record one landed file; returns (status, reason); status None: it changed
    while being copied, next scan."""
    earlier = known_content(conn, landed.sha256)
    if earlier is not None:
        reason = f"same content as {earlier}"
        record(conn, landed, "duplicate", reason=reason)
        return "duplicate", reason
    stored = store_file(ledger_dir, landed)
    if sha256_file(stored) != landed.sha256:
        stored.unlink()
        return None, None
    try:
        report = file_report(stored, features, targets)
        check_quality([report], max_bad_fraction)
    except PipelineError as exc:
        stored.unlink()
        reason = str(exc).replace(str(stored), landed.path.name)
        record(conn, landed, "failed", reason=reason)
        return "failed", reason
    record(
        conn,
        landed,
        "accepted",
        rows=report.rows,
        accepted=report.accepted,
        quarantined=report.quarantined,
        stored_path=stored,
    )
    return "accepted", None


@task(cache_policy=NONE)
def check_landed_files(
    landing: Path, ledger: Path, settle_seconds: float, max_bad_fraction: float
) -> dict[str, Any]:
    """Scan the landing folder and record new files in the ledger (see check_landed), logging
    each file and updating a Prefect progress artifact. The paths are checked by the flow."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description="Checking landed files")

    def on_file(done: int, total: int, name: str, status: str) -> None:
        logger.info("landed file %d/%d: %s -> %s", done, total, name, status)
        update_progress_artifact(progress, 100.0 * done / total)

    outcome = check_landed(
        landing,
        ledger,
        settle_seconds,
        DEFAULT_FEATURES,
        DEFAULT_TARGETS,
        max_bad_fraction,
        on_file,
    )
    update_progress_artifact(progress, 100.0)
    return outcome


@task(cache_policy=NONE)
def files_to_train(ledger: str) -> tuple[list[str], list[str]]:
    """(accepted files not yet used by a training run, every accepted file)."""
    with open_ledger(Path(ledger)) as conn:
        return untrained_files(conn), accepted_files(conn)


@task(cache_policy=NONE)
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
