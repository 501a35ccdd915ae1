"""Storage plumbing below every stage: run ids, JSON documents at a location (a path or an
s3:// URI: the readable copies of manifests), a run's staging (its working files: on the local
disk, or on the store for a cluster on an object-store root) and what a full disk means for it.
The output tables are Delta tables (tasks/outputs/tables.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas.params import RUN_TIMEOUT_SECONDS
from tasks.common import store
from tasks.common.errors import PipelineError, PublishError
from tasks.common.paths import confine, output_roots
from tasks.common.runlog import run_logger
from tasks.common.store import Location

MANIFESTS = "manifests"
STAGING = ".staging"
# Staging older than this belongs to a run that died (no run lives longer than its timeout).
STAGING_MAX_AGE = RUN_TIMEOUT_SECONDS + 3600
# The worker's own disk for what a run on an object-store root keeps locally (its staging
# folder, the pass-1 cache): SALES_MODEL_CACHE_DIR, by default ~/.cache/sales-model. A local
# output root keeps both under itself, as it always did.
CACHE_DIR_ENV = "SALES_MODEL_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/sales-model"


@dataclass(frozen=True)
class RunInfo:
    """Identity of one training run: its id, output root (a folder or an s3:// URI), start time
    and parameters."""

    run_id: str
    output_root: Location
    started_at: str
    parameters: dict[str, Any]


class _RunClock:
    """Millisecond UTC timestamps that strictly increase within this process: a second id made
    in the same millisecond (or after the wall clock stepped back) takes the next millisecond."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self, now: datetime | None = None) -> datetime:
        with self._lock:
            ms = int((now or datetime.now(UTC)).timestamp() * 1000)
            self._last = max(ms, self._last + 1)
            return datetime.fromtimestamp(self._last / 1000, UTC)


_CLOCK = _RunClock()


def format_run_id(started: datetime, suffix: str) -> str:
    """`20261201T081530.123Z-1a2b3c4d`: UTC start to the millisecond, then random hex."""
    return f"{started:%Y%m%dT%H%M%S}.{started.microsecond // 1000:03d}Z-{suffix}"


def new_run(output: Location, parameters: dict[str, Any], now: datetime | None = None) -> RunInfo:
    """A new run. Its id (see format_run_id) sorts by creation: the milliseconds strictly
    increase within a process, and the random hex keeps runs of other processes apart."""
    started = _CLOCK.next(now)
    run_id = format_run_id(started, secrets.token_hex(4))
    root = str(output) if store.is_remote(output) else Path(output)
    return RunInfo(run_id, root, started.isoformat(timespec="milliseconds"), parameters)


def data_fingerprint(sha256s: list[str]) -> str:
    """sha256 over the sorted input sha256s: the same data gives the same fingerprint."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


def _errno(exc: Exception) -> int | None:
    # pyarrow says "[errno 28]", delta-rs "(os error 28)".
    match = re.search(r"\[errno (\d+)\]|\(os error (\d+)\)", str(exc), flags=re.IGNORECASE)
    number = getattr(exc, "errno", None)
    return number or (int(match.group(1) or match.group(2)) if match else None)


def describe_error(exc: Exception) -> str:
    """'No space left on device' rather than pyarrow's 'Error writing bytes ... [errno 28]' or
    delta-rs' 'Generic LocalFileSystem error: ... (os error 28)'; one line for an object store's
    error (delta-rs tells those over several lines)."""
    number = _errno(exc)
    if not number:
        return store.describe(exc)
    where = getattr(exc, "filename", None)  # the file the store could not write, when known
    return f"{where}: {os.strerror(number)}" if where else os.strerror(number)


# The errors of a disk that takes no more (full, a file size limit, a quota, read-only).
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


@contextlib.contextmanager
def working_files(folder: Location) -> Iterator[None]:
    """A disk that takes no more while a run writes its working files (the kept rows, staged
    parts) is one line naming the folder; nothing is published."""
    try:
        yield
    except OSError as exc:
        if _errno(exc) not in _DISK_FULL:
            raise
        raise PublishError(
            f"{folder}: could not write the run's working files ({describe_error(exc)}); "
            "nothing was published"
        ) from exc


def output_root(output: str) -> Location:
    """The `output` parameter confined to SALES_MODEL_OUTPUT_ROOTS; an s3:// root's bucket must
    answer (a missing bucket, refused credentials or an endpoint that does not answer is one
    PipelineError naming the URI, before any work). Nothing is created."""
    root = confine(output, output_roots(), "output")
    store.check_reachable(root)
    return root


def cache_dir() -> Path:
    """The worker's local folder for the runs on an object-store root (CACHE_DIR_ENV)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def local_folder(root: Location, name: str) -> Path:
    """A folder of the local disk for `root`'s runs: `<root>/<name>` for a local root; for an
    object-store root, `<cache_dir>/<last part of name, without its dot>` on this worker
    (`.staging`: `staging`; `.cache/pass1`: `pass1`): Arrow spills, hard links and renames
    need a disk."""
    if store.is_remote(root):
        return cache_dir() / Path(name).name.lstrip(".")
    return Path(root) / name


@contextlib.contextmanager
def staging_area(root: Location, run_id: str, shared: bool = False) -> Iterator[Location]:
    """Where a run keeps its working files (pass 1's kept rows, records and keys) until it ends;
    removed then, whether the run succeeded or failed. Staging left by runs that died is
    removed by a later run once it is older than any run can live (no PID: a run on another
    host must keep its staging).

    A run whose tasks run on other machines (`shared`: a cluster) on an object-store root
    stages on the store, `<root>/.staging/<run_id>/`, so that every worker reads what any
    other wrote; any other run stages on this machine's disk (see local_folder). Every run on
    an object-store root sweeps the store's staging of dead runs (one list request)."""
    if store.is_remote(root):
        sweep_store_staging(store.join(root, STAGING))
    if shared and store.is_remote(root):
        folder = store.join(root, STAGING, run_id)
    else:
        staging = local_folder(root, STAGING)
        sweep_staging(staging)
        folder = staging / run_id
        folder.mkdir(parents=True, exist_ok=True)
    run_logger().info("working files staged under %s", shown(folder))
    try:
        yield folder
    finally:
        _remove_staging(folder)


def _remove_staging(folder: Location) -> None:
    if not store.is_remote(folder):
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # another run may be staging there
            Path(folder).parent.rmdir()
        return
    try:
        remove_tree(folder)
    except PipelineError as exc:  # (not to hide the run's own outcome: swept later, by age)
        run_logger().warning("the run's staging could not be removed: %s", exc)


def sweep_staging(staging: Path) -> None:
    """Remove staging folders untouched for longer than a run can live."""
    if not staging.is_dir():
        return
    dead = time.time() - STAGING_MAX_AGE
    for folder in staging.iterdir():
        with contextlib.suppress(OSError):
            if folder.is_dir() and folder.stat().st_mtime < dead:
                shutil.rmtree(folder, ignore_errors=True)


def sweep_store_staging(staging: Location, now: datetime | None = None) -> int:
    """Remove the objects under `staging` (a store's `.staging/`) older than a run can live:
    a run still going on any host wrote all of its own since it started. Returns how many
    were removed."""
    dead = (now or datetime.now(UTC)) - timedelta(seconds=STAGING_MAX_AGE)
    old = [entry for entry in store.list_files(staging) if entry.modified < dead]
    for entry in old:
        store.delete(entry.location)
    return len(old)


def write_json(location: Location, payload: dict[str, Any]) -> Location:
    """Write a JSON document whole (readers see the old one or the new one, never a part)."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    store.write(location, text.encode())
    return location


def manifest_path(root: Location, run_id: str) -> str:
    return store.join(root, MANIFESTS, f"{run_id}.json")


def shown(location: Location) -> str:
    """A location as people are shown it: a local path made absolute, a URI as it is."""
    return str(location) if store.is_remote(location) else str(Path(location).resolve())


def remove_tree(location: Location) -> None:
    """Delete every file under the folder or prefix `location` (nothing there: nothing to do)."""
    for entry in store.list_files(location):
        store.delete(entry.location)
    if not store.is_remote(location):  # a write that failed on a disk leaves its folders
        shutil.rmtree(location, ignore_errors=True)
