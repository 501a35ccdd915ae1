"""Landing: complete new files in the landing folder checked with the training run's own
pipeline and recorded in the ledger (tasks/ledger.py): accepted (copied into the ledger's
store), failed (with the reason) or duplicate. A file counts as complete when it is a visible
*.csv, not named as still being written, and unmodified for `settle_seconds`; producers that
move files in whole (`make land`) can be checked at once.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from schemas.params import RunConfig
from tasks.csvfile import sha256_file
from tasks.dataset import scan_file
from tasks.errors import PipelineError
from tasks.ledger import LandedFile, known_content, open_ledger, record, store_file
from tasks.validate import FileReport, check_quality

# Names that writers use while a file is still being written.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")


def is_candidate(path: Path) -> bool:
    """A visible *.csv file not named as still being written."""
    name = path.name
    if name.startswith(".") or name.endswith(IN_PROGRESS_SUFFIXES) or path.suffix != ".csv":
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


def check_landed(
    landing: Path,
    ledger_dir: Path,
    settle_seconds: float,
    config: RunConfig,
    on_file: Callable[[int, int, str, str], None] | None = None,
) -> dict[str, Any]:
    """Record every new complete file in the landing folder, checked with the run's columns:
    duplicate (same content as an earlier file), failed (rejected file, or more bad rows than
    config.max_bad_fraction) or accepted (copied into the store). Returns `accepted` (names),
    `failed` and `duplicate` (name -> reason) and `waiting`
    (files still within their settle time); `on_file(done, total, name, status)` is called
    after each file."""
    outcome: dict[str, Any] = {"accepted": [], "failed": {}, "duplicate": {}}
    with open_ledger(ledger_dir) as conn:
        found = scan_landing(landing, conn, settle_seconds)
        for done, landed in enumerate(found, start=1):
            status, reason = _check_one(conn, ledger_dir, landed, config)
            name = landed.path.name
            if status == "accepted":
                outcome["accepted"].append(name)
            elif status is not None:
                outcome[status][name] = reason
            if on_file is not None:
                on_file(done, len(found), name, status or "changed, next scan")
        outcome["waiting"] = settling(landing, conn, settle_seconds)
    return outcome


def file_report(path: Path, config: RunConfig) -> FileReport:
    """Row accounting of one file, with the training run's checks, read in blocks so that a
    landed file of any size is checked in bounded memory."""
    with tempfile.TemporaryDirectory(prefix="ledger-check-") as staging:
        return scan_file(path, 0, config, Path(staging)).files[0]


def _check_one(
    conn: sqlite3.Connection,
    ledger_dir: Path,
    landed: LandedFile,
    config: RunConfig,
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
        report = file_report(stored, config)
        check_quality([report], config.max_bad_fraction)
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


# A check that hangs (a ledger lock never released, a stuck file system) fails after this
# long, so that it cannot hold up every later check.
CHECK_TIMEOUT_SECONDS = 15 * 60


@task(
    cache_policy=NONE,
    task_run_name="check-{landing.name}",
    timeout_seconds=CHECK_TIMEOUT_SECONDS,
)
def check_landed_files(
    landing: Path, ledger: Path, settle_seconds: float, config: RunConfig
) -> dict[str, Any]:
    """Scan the landing folder and record new files in the ledger (see check_landed), logging
    each file and updating a Prefect progress artifact (none when nothing new is found, so a
    quiet poll leaves nothing behind). The paths are checked by the flow."""
    logger = get_run_logger()
    progress = None

    def on_file(done: int, total: int, name: str, status: str) -> None:
        nonlocal progress
        if progress is None:
            progress = create_progress_artifact(0.0, description="Checking landed files")
        logger.info("landed file %d/%d: %s -> %s", done, total, name, status)
        update_progress_artifact(progress, 100.0 * done / total)

    return check_landed(landing, ledger, settle_seconds, config, on_file)
