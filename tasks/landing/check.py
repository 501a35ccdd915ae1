"""Landing: complete new files at the landing location (a folder or an `s3://bucket/prefix`)
checked with the training run's own pipeline and recorded in the ledger
(tasks/landing/ledger.py): accepted (copied into the ledger's store), failed (with the reason)
or duplicate. Everything is read through the store (tasks/common/store.py).

A file counts as complete when it is a visible *.csv directly under the landing location, not
named as still being written, and either its content matches the sha256 announced next to it
(`<name>.sha256`, as `sha256sum` writes it: `make land` writes one, any producer may) or it has
not been modified for `settle_seconds`. On a bucket an object is complete once it is listed (a
PUT appears whole), so there is no settle time. Whichever way a file was announced, nothing else
makes it complete: an event only says when to look. A file is checked from a local copy whose
hash is the one it was found with, so a file rewritten meanwhile waits for the next scan.
"""

from __future__ import annotations

import hashlib
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
from tasks.common import store
from tasks.common.errors import PipelineError
from tasks.ingest.scan import scan_file
from tasks.ingest.validate import FileReport, check_quality
from tasks.landing.announce import (  # noqa: F401 (announce, is_candidate: read from here too)
    IN_PROGRESS_SUFFIXES,
    announce,
    announced_sha256,
    is_candidate,
    is_candidate_name,
)
from tasks.landing.ledger import (
    Claim,
    LandedFile,
    Ledger,
    claim_check,
    current_version,
    read_ledger,
    record_verdict,
    release_claim,
    sha256_of,
    store_file,
)

# A check that hangs (a stuck store) fails after this long, so that it cannot hold up every
# later check; its claims then expire.
CHECK_TIMEOUT_SECONDS = 15 * 60
_CHUNK = 8 << 20


def settle_time(landing: store.Location, settle_seconds: float) -> float:
    """How long a file must go unmodified to count as complete: none on a bucket, where an
    object is only listed once it is whole."""
    return 0.0 if store.is_remote(landing) else settle_seconds


def landed_objects(landing: store.Location) -> list[store.Entry]:
    """The candidate files directly under the landing location, by name."""
    base = str(landing).rstrip("/") + "/"
    return [
        entry
        for entry in store.list_files(landing)
        if "/" not in entry.location[len(base) :]
        and is_candidate_name(store.name_of(entry.location))
    ]


def scan_landing(
    landing: store.Location, ledger: Ledger, settle_seconds: float
) -> tuple[list[LandedFile], list[str]]:
    """(complete files at `landing` whose (name, content) the ledger has not seen, files still
    within their settle time that the ledger has not seen), by name. An object listed with
    the name, size and ETag of one recorded is known without reading it."""
    settle, now = settle_time(landing, settle_seconds), time.time()
    found, waiting = [], []
    for entry in landed_objects(landing):
        name = store.name_of(entry.location)
        if entry.etag and ledger.seen(name, entry.size, entry.etag):
            continue
        digest = None
        if now - entry.modified.timestamp() >= settle:
            digest = sha256_of(entry.location)
        elif (announced := announced_sha256(entry.location)) is not None:
            digest = sha256_of(entry.location)
            digest = digest if digest == announced else None  # not yet the announced content
        if digest is None:
            if not ledger.seen(name, entry.size):  # same name and size: not a new file
                waiting.append(name)
        elif not ledger.is_recorded(name, digest):
            found.append(LandedFile(entry.location, digest, entry.size, entry.etag))
    return found, waiting


def time_to_settle(
    landing: store.Location, names: list[str], settle_seconds: float, now: float | None = None
) -> float:
    """Seconds until every named file at `landing` has gone `settle_seconds` unmodified (0 when
    all have, or are gone; at most `settle_seconds`)."""
    now = time.time() if now is None else now
    settle = settle_time(landing, settle_seconds)
    modified = {store.name_of(e.location): e.modified.timestamp() for e in landed_objects(landing)}
    waits = [min(settle, modified[name] + settle - now) for name in names if name in modified]
    return max([0.0, *waits])


# What the progress says of a file this check did not record.
_SAID = {
    None: "changed, next scan",
    "recorded": "recorded by another check",
    "in_progress": "being checked by another check",
}


def check_landed(
    landing: store.Location,
    ledger: store.Location,
    settle_seconds: float,
    config: RunConfig,
    on_file: Callable[[int, int, str, str], None] | None = None,
) -> dict[str, Any]:
    """Record every new complete file at the landing location, checked with the run's
    columns: duplicate (same content as an earlier file), failed (rejected file, or more bad
    rows than config.max_bad_fraction) or accepted (copied into the store). Returns `accepted`
    (names), `failed` and `duplicate` (name -> reason), `waiting` (files still within their
    settle time) and `in_progress` (files another check is checking right now: it records
    them); `on_file(done, total, name, status)` is called after each file. Checks may run at
    once, on any machines sharing the store: each file is recorded by one of them."""
    outcome: dict[str, Any] = {"accepted": [], "failed": {}, "duplicate": {}, "in_progress": []}
    token = uuid.uuid4().hex
    found, outcome["waiting"] = scan_landing(landing, read_ledger(ledger), settle_seconds)
    for done, landed in enumerate(found, start=1):
        status, reason = _check_one(ledger, landed, config, token)
        if status == "accepted":
            outcome["accepted"].append(landed.name)
        elif status == "in_progress":
            outcome["in_progress"].append(landed.name)
        elif status in ("failed", "duplicate"):
            outcome[status][landed.name] = reason
        if on_file is not None:
            on_file(done, len(found), landed.name, _SAID.get(status, status))
    return outcome


def file_report(path: Path, config: RunConfig, staging: Path) -> FileReport:
    """Row accounting of one local file, with the training run's checks, read in blocks so
    that a landed file of any size is checked in bounded memory."""
    return scan_file(path, 0, config, staging).files[0]


def _check_one(
    ledger: store.Location, landed: LandedFile, config: RunConfig, token: str
) -> tuple[str | None, str | None]:
    """Check and record one landed file -> (status, reason); status `recorded` or
    `in_progress`: another check has it; None: it changed since it was found, next scan."""
    status, detail = claim_check(ledger, landed, token, CHECK_TIMEOUT_SECONDS)
    if status == "duplicate":
        return status, _with_version_kept(ledger, landed.name, detail)
    if status != "claimed":
        return status, None
    status, reason = None, None
    try:
        status, reason = _check_claimed(ledger, landed, config, detail)
    finally:
        if status is None:  # nothing recorded: let the next check have it at once
            release_claim(detail)
    return status, reason


def _check_claimed(
    ledger: store.Location, landed: LandedFile, config: RunConfig, claim: Claim
) -> tuple[str | None, str | None]:
    with tempfile.TemporaryDirectory(prefix="ledger-check-") as staging:
        local = Path(staging) / landed.name
        if _copy_hashed(landed.location, local) != landed.sha256:
            return None, None
        try:
            report = file_report(local, config, Path(staging))
            check_quality([report], config.max_bad_fraction)
        except PipelineError as exc:
            reason = str(exc).replace(str(local), landed.name)
            if not record_verdict(ledger, landed, claim, "failed", reason=reason):
                return "recorded", None
            return "failed", _with_version_kept(ledger, landed.name, reason)
        # Stored before its verdict: an accepted entry never names a missing copy.
        stored = store_file(ledger, landed, local)
    counts = {"rows": report.rows, "accepted": report.accepted, "quarantined": report.quarantined}
    if not record_verdict(ledger, landed, claim, "accepted", stored=stored, **counts):
        return "recorded", None
    return "accepted", None


def _copy_hashed(location: str, target: Path) -> str:
    """Copy a landed file to a local file; returns the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    with store.open_input(location) as source, target.open("wb") as sink:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            sink.write(chunk)
    return digest.hexdigest()


def _with_version_kept(ledger: store.Location, name: str, reason: str) -> str:
    """The reason a file was not accepted, saying which earlier version of its name stays in
    the dataset (a bad re-send does not take good data out)."""
    kept = current_version(ledger, name)
    if kept is None:
        return reason
    return f"{reason}; the dataset keeps the earlier {name} (sha256 {kept[:12]})"


@task(cache_policy=NONE, task_run_name="check-landed-files", timeout_seconds=CHECK_TIMEOUT_SECONDS)
def check_landed_files(
    landing: str, ledger: str, settle_seconds: float, config: RunConfig
) -> dict[str, Any]:
    """Scan the landing location and record new files in the ledger (see check_landed),
    logging each file and updating a Prefect progress artifact (none when nothing new is
    found, so a quiet poll leaves nothing behind). The locations are checked by the flow."""
    logger = get_run_logger()
    progress = None

    def on_file(done: int, total: int, name: str, status: str) -> None:
        nonlocal progress
        if progress is None:
            progress = create_progress_artifact(0.0, description="Checking landed files")
        logger.info("landed file %d/%d: %s -> %s", done, total, name, status)
        update_progress_artifact(progress, 100.0 * done / total)

    return check_landed(landing, ledger, settle_seconds, config, on_file)
