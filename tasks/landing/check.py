"""Landing: complete new files in the landing folder checked with the training run's own
pipeline and recorded in the ledger (tasks/landing/ledger.py): accepted (copied into the ledger's
store), failed (with the reason) or duplicate.

A file counts as complete when it is a visible *.csv, not named as still being written, and
either its content matches the sha256 announced next to it (`<name>.sha256`, as `sha256sum`
writes it: `make land` writes one, any producer may) or it has not been modified for
`settle_seconds`, its size and mtime the same before and after it was hashed. Whichever way a
file was announced, nothing else makes it complete: an event only says when to look.
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from schemas.params import RunConfig
from tasks.common.errors import PipelineError
from tasks.common.storage import atomic_write
from tasks.ingest.csvfile import sha256_file
from tasks.ingest.scan import scan_file
from tasks.ingest.validate import FileReport, check_quality
from tasks.landing.ledger import (
    LandedFile,
    claim_check,
    current_version,
    finish_check,
    is_recorded,
    open_ledger,
    release_claim,
    store_file,
)

# Names that writers use while a file is still being written.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")
# `<name>.sha256` next to a landed file announces its complete content.
ANNOUNCEMENT_SUFFIX = ".sha256"
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A check that hangs (a ledger lock never released, a stuck file system) fails after this
# long, so that it cannot hold up every later check; its claims then expire.
CHECK_TIMEOUT_SECONDS = 15 * 60


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


def announcement_path(path: Path) -> Path:
    """Where the content of a landed file is announced: `<name>.sha256` beside it."""
    return path.with_name(path.name + ANNOUNCEMENT_SUFFIX)


def announce(path: Path, sha256: str) -> Path:
    """Announce the complete content of the file landing at `path`, as `sha256sum` does."""
    return atomic_write(
        announcement_path(path), lambda tmp: tmp.write_text(f"{sha256}  {path.name}\n")
    )


def announced_sha256(path: Path) -> str | None:
    """The sha256 announced for `path`, if an announcement is there and reads as one."""
    try:
        words = announcement_path(path).read_text(errors="replace").split()
    except OSError:
        return None
    digest = words[0].lower() if words else ""
    return digest if _SHA256.fullmatch(digest) else None


def scan_landing(
    landing: Path, conn: sqlite3.Connection, settle_seconds: float
) -> list[LandedFile]:
    """Complete files in `landing` (see the module's docstring) whose (name, content) the
    ledger has not seen, by name."""
    if not landing.is_dir():
        return []
    found = []
    for path in sorted(landing.iterdir()):
        if not is_candidate(path):
            continue
        before = path.stat()
        settled = time.time() - before.st_mtime >= settle_seconds
        announced = announced_sha256(path)
        if not settled and announced is None:
            continue
        digest = sha256_file(path)
        after = path.stat()
        if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
            continue  # changed while hashing: next scan
        if not settled and digest != announced:
            continue  # not yet the announced content
        if not is_recorded(conn, path.name, digest):
            found.append(LandedFile(path, digest, after.st_size))
    return found


def time_to_settle(
    landing: Path, names: list[str], settle_seconds: float, now: float | None = None
) -> float:
    """Seconds until every named file in `landing` has gone `settle_seconds` unmodified (0 when
    all have, or are gone; at most `settle_seconds`)."""
    now = time.time() if now is None else now
    wait = 0.0
    for name in names:
        try:
            modified = (landing / name).stat().st_mtime
        except OSError:
            continue
        wait = max(wait, min(settle_seconds, modified + settle_seconds - now))
    return wait


# What the progress says of a file this check did not record.
_SAID = {
    None: "changed, next scan",
    "recorded": "recorded by another check",
    "in_progress": "being checked by another check",
}


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
    `failed` and `duplicate` (name -> reason), `waiting` (files still within their settle
    time) and `in_progress` (files another check is checking right now: it records them);
    `on_file(done, total, name, status)` is called after each file. Checks may run at once:
    each file is recorded by one of them."""
    outcome: dict[str, Any] = {"accepted": [], "failed": {}, "duplicate": {}, "in_progress": []}
    token = uuid.uuid4().hex
    with open_ledger(ledger_dir) as conn:
        found = scan_landing(landing, conn, settle_seconds)
        for done, landed in enumerate(found, start=1):
            status, reason = _check_one(conn, ledger_dir, landed, config, token)
            name = landed.path.name
            if status == "accepted":
                outcome["accepted"].append(name)
            elif status == "in_progress":
                outcome["in_progress"].append(name)
            elif status in ("failed", "duplicate"):
                outcome[status][name] = reason
            if on_file is not None:
                on_file(done, len(found), name, _SAID.get(status, status))
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
    token: str,
) -> tuple[str | None, str | None]:
    """Check and record one landed file -> (status, reason); status `recorded` or
    `in_progress`: another check has it; None: it changed while being copied, next scan."""
    status, reason = claim_check(conn, landed, token, CHECK_TIMEOUT_SECONDS)
    if status == "duplicate":
        return status, _with_version_kept(conn, landed.path.name, reason)
    if status != "claimed":
        return status, reason
    try:
        return _check_claimed(conn, ledger_dir, landed, config, token)
    finally:
        release_claim(conn, landed.sha256, token)  # nothing left to release once recorded


def _check_claimed(
    conn: sqlite3.Connection,
    ledger_dir: Path,
    landed: LandedFile,
    config: RunConfig,
    token: str,
) -> tuple[str | None, str | None]:
    stored = store_file(ledger_dir, landed)
    if sha256_file(stored) != landed.sha256:
        stored.unlink()
        return None, None
    try:
        report = file_report(stored, config)
        check_quality([report], config.max_bad_fraction)
    except PipelineError as exc:
        reason = str(exc).replace(str(stored), landed.path.name)
        if not finish_check(conn, landed, token, "failed", reason=reason):
            return "in_progress", None
        stored.unlink()
        return "failed", _with_version_kept(conn, landed.path.name, reason)
    counts = {"rows": report.rows, "accepted": report.accepted, "quarantined": report.quarantined}
    if not finish_check(conn, landed, token, "accepted", stored_path=stored, **counts):
        return "in_progress", None
    return "accepted", None


def _with_version_kept(conn: sqlite3.Connection, name: str, reason: str) -> str:
    """The reason a file was not accepted, saying which earlier version of its name stays in
    the dataset (a bad re-send does not take good data out)."""
    kept = current_version(conn, name)
    if kept is None:
        return reason
    return f"{reason}; the dataset keeps the earlier {name} (sha256 {kept[:12]})"


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
