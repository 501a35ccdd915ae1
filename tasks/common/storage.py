"""Storage: Parquet tables and JSON documents under the output root, each written atomically.

Layout: `<root>/<table>/run_id=<id>/part-0.parquet` per table, `<root>/manifests/<id>.json`.
Every file is written to a hidden temp name in its final folder and renamed into place, so a reader
never sees a half-written file; a table written in parts (predictions, scores) moves in as one run
folder, so a reader sees all its parts or none; the manifest is written last, and a run counts only
once it has one.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow
import pyarrow.parquet as pq

from schemas.outputs import NULLABLE_ARROW, SCHEMA_VERSION
from tasks.common.errors import PublishError

MANIFESTS = "manifests"
STAGING = ".staging"
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.tmp$")


@dataclass(frozen=True)
class RunInfo:
    """Identity of one training run: its id, output root, start time and parameters."""

    run_id: str
    output_root: Path
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


def new_run(output: str | Path, parameters: dict[str, Any], now: datetime | None = None) -> RunInfo:
    """A new run. Its id (see format_run_id) sorts by creation: the milliseconds strictly
    increase within a process, and the random hex keeps runs of other processes apart."""
    started = _CLOCK.next(now)
    run_id = format_run_id(started, secrets.token_hex(4))
    return RunInfo(run_id, Path(output), started.isoformat(timespec="milliseconds"), parameters)


def data_fingerprint(sha256s: list[str]) -> str:
    """sha256 over the sorted input sha256s: the same data gives the same fingerprint."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode()).hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write via `write(tmp)` to a hidden temp file beside `path`, fsync, rename into place.

    On failure (disk full, no permission) the temp file is removed, `path` is left as it was,
    and PublishError says which file could not be written.
    """
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.replace(path)
    except OSError as exc:
        raise PublishError(
            f"{path}: could not write ({_describe(exc)}); the previous contents are unchanged"
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _errno(exc: OSError) -> int | None:
    match = re.search(r"\[errno (\d+)\]", str(exc), flags=re.IGNORECASE)
    return exc.errno or (int(match.group(1)) if match else None)


def _describe(exc: OSError) -> str:
    """'No space left on device' rather than pyarrow's 'Error writing bytes ... [errno 28]'."""
    number = _errno(exc)
    return os.strerror(number) if number else str(exc)


# The errors of a disk that takes no more (full, a file size limit, a quota, read-only).
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}


@contextlib.contextmanager
def working_files(folder: Path) -> Iterator[None]:
    """A disk that takes no more while a run writes its working files (the kept rows, staged
    parts) is one line naming the folder; nothing is published."""
    try:
        yield
    except OSError as exc:
        if _errno(exc) not in _DISK_FULL:
            raise
        raise PublishError(
            f"{folder}: could not write the run's working files ({_describe(exc)}); "
            "nothing was published"
        ) from exc


def remove_written(paths: list[Path]) -> None:
    """Remove the files and run folders a failed publish had written (or was about to write),
    and the run folders they leave empty. Best effort: the error that failed the publish is the
    one reported, not a later one of the clean-up."""
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def sweep_temp_files(root: Path) -> list[Path]:
    """Remove temp files and staging folders left by runs that are no longer running, and run
    folders they leave empty; return what was removed. Call it holding the output lock."""
    removed = []
    if not root.exists():
        return removed
    for path in root.rglob(".*.tmp"):
        match = _TEMP_NAME.match(path.name)
        if match and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    for folder in root.glob(f"{STAGING}/*.*"):
        pid = folder.name.rsplit(".", 1)[-1]
        if folder.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    for folder in root.glob("*/run_id=*"):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process runs with this PID (a zombie, exited but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return True


def run_folder(root: Path, table: str, run_id: str) -> Path:
    """A run's folder (its partition) in a table."""
    return root / table / f"run_id={run_id}"


def table_path(root: Path, table: str, run_id: str) -> Path:
    """Where a run's part of a table lives."""
    return run_folder(root, table, run_id) / "part-0.parquet"


def table_metadata(run: RunInfo, table: str, fingerprint: str) -> dict[bytes, bytes]:
    """The key-value metadata every Parquet file of a run carries."""
    return {
        b"run_id": run.run_id.encode(),
        b"table": table.encode(),
        b"data_fingerprint": fingerprint.encode(),
        b"schema_version": SCHEMA_VERSION.encode(),
        b"parameters": json.dumps(run.parameters, sort_keys=True).encode(),
    }


def write_table(
    frame: pd.DataFrame, root: Path, table: str, run: RunInfo, fingerprint: str
) -> Path:
    """Write one table of one run as Parquet with the run's key-value metadata."""
    arrow = pyarrow.Table.from_pandas(frame, preserve_index=False)
    for name, kind in NULLABLE_ARROW.items():
        if name in arrow.column_names:
            index = arrow.schema.get_field_index(name)
            arrow = arrow.set_column(index, name, arrow.column(name).cast(kind))
    metadata = {**(arrow.schema.metadata or {}), **table_metadata(run, table, fingerprint)}
    arrow = arrow.replace_schema_metadata(metadata)
    return atomic_write(table_path(root, table, run.run_id), lambda tmp: pq.write_table(arrow, tmp))


def write_table_chunks(
    chunks: Iterator[pyarrow.Table],
    schema: pyarrow.Schema,
    root: Path,
    table: str,
    run: RunInfo,
    fingerprint: str,
) -> Path:
    """Write one table of one run from chunks (bounded memory), atomically, with the run's
    metadata."""
    schema = schema.with_metadata(table_metadata(run, table, fingerprint))

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema) as writer:
            for chunk in chunks:
                writer.write_table(chunk.cast(schema))

    return atomic_write(table_path(root, table, run.run_id), write)


def move_parts(parts: list[Path], root: Path, table: str, run_id: str) -> Path:
    """Move staged Parquet files (already carrying the run's metadata, on the output root's
    file system) into the table's run folder, keeping their names; returns the folder.

    The parts are gathered out of sight, in a new folder beside the first, which then becomes
    the run folder in one rename: readers see every part or none, and a failure leaves the
    table as it was (the gathered parts stay in the run's working files)."""
    folder = run_folder(root, table, run_id)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not parts:
            folder.mkdir()
            return folder
        whole = parts[0].parent / f".{table}-{run_id}"
        whole.mkdir()
        for part in parts:
            part.replace(whole / part.name)
        whole.rename(folder)
    except OSError as exc:
        raise PublishError(
            f"{folder}: could not move the staged files in ({_describe(exc)})"
        ) from exc
    return folder


@contextlib.contextmanager
def staging_area(root: Path, run_id: str) -> Iterator[Path]:
    """A private folder under `<root>/.staging/` for the files a run writes before it
    publishes; removed when the run ends, or by a later sweep if its process died."""
    folder = root / STAGING / f"{run_id}.{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # another run may be staging there
            folder.parent.rmdir()


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Atomically write a JSON document."""
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def manifest_path(root: Path, run_id: str) -> Path:
    return root / MANIFESTS / f"{run_id}.json"
