"""A cache of per-file pass-1 results, so that a retrain parses only the files it has not seen.

An entry is one file's Scan (tasks/ingest/scan.py) under a key: the file's sha256 and everything
that changes pass 1 (CACHE_FORMAT, the output schema version, the row contract as the pandera
schema states it, the columns, the id column, the split's seed and fraction). It holds the
statistics per split and the profile sketch (`arrays.npz`), the quarantine records and the
accepted rows (the staged Parquet and Arrow IPC files, hard-linked in, so storing copies
nothing), and `meta.json`: the key, the row accounting, the layout, and the sha256 of every
payload file and of itself.

An entry cannot lie: it is built in a temporary folder and renamed into place (a crash leaves
no entry, only a `tmp-` folder swept later); on use its key, format and every checksum are
checked, and a truncated, corrupted, foreign or stale entry is logged, removed and rebuilt.
Entries are taken into a run by hard links (so eviction by another run cannot pull them away
mid-run); the cache keeps at most `max_bytes`, evicting the least recently used; one lock file
serializes lookups, stores and evictions between runs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from schemas.outputs import SCHEMA_VERSION
from schemas.params import RunConfig
from schemas.sales import sales_schema
from tasks.common.runlog import run_logger
from tasks.common.storage import local_folder
from tasks.common.store import Location
from tasks.ingest.cache_entry import (
    CACHE_FORMAT,
    BadEntry,
    link_all,
    read_meta,
    scan_of,
    verify,
    write_entry,
)
from tasks.ingest.csvfile import ByteRange, CsvFile, FileHash, hash_file
from tasks.ingest.scan import Scan

# Under a local output root; a run on an object-store root keeps its cache on the worker's disk
# (SALES_MODEL_CACHE_DIR/pass1: see tasks/common/storage.py local_folder), so a second run on
# the same machine finds it.
CACHE_FOLDER = Path(".cache") / "pass1"
# The cache's size limit (payload bytes); SALES_MODEL_CACHE_MAX_MB overrides it.
DEFAULT_MAX_MB = 20_480
# A `tmp-` folder older than this is a crashed store's leftover.
STALE_TMP_SECONDS = 3600.0


def pass1_key(sha256: str, config: RunConfig) -> str:
    """The entry key of a file with content `sha256` under the run's pass-1 settings."""
    schema = sales_schema(config.features, config.targets, config.id_column)
    contract = [
        [name, str(col.dtype), col.nullable, [[c.name, repr(c.statistics)] for c in col.checks]]
        for name, col in schema.columns.items()
    ]
    settings = {
        "format": CACHE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "sha256": sha256,
        "features": config.features,
        "targets": config.targets,
        "id_column": config.id_column,
        "seed": config.seed,
        "holdout_fraction": config.holdout_fraction,
        "contract": contract,
        "unique": schema.unique,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Pass1Cache:
    """The cache folder (on the local disk: see CACHE_FOLDER) and its size limit."""

    folder: Path
    max_bytes: int

    @staticmethod
    def under(root: Location) -> Pass1Cache:
        mb = float(os.environ.get("SALES_MODEL_CACHE_MAX_MB", DEFAULT_MAX_MB))
        return Pass1Cache(local_folder(root, str(CACHE_FOLDER)), int(mb * 2**20))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def entry(self, key: str) -> Path:
        return self.folder / "entries" / key

    def load(self, key: str, source: str, index: int, staging: Path) -> Scan | None:
        """The file's Scan from its entry, its payload linked into `staging`, or None (no
        entry, or one that failed a check: logged, removed)."""
        folder = staging / f"cached-{index:05d}"
        try:
            with self._locked():
                entry = self.entry(key)
                if not entry.is_dir():
                    return None
                meta = read_meta(entry, key)
                link_all(entry, folder, meta["files"])
                os.utime(entry)  # most recently used
            verify(folder, meta["files"])
            return scan_of(meta, folder, source, index)
        except BadEntry as exc:
            run_logger().warning(
                "pass-1 cache entry of %s is not used (%s): parsing the file", source, exc
            )
            shutil.rmtree(folder, ignore_errors=True)
            self.discard(key)
            return None

    def discard(self, key: str) -> None:
        with self._locked():
            _remove(self.entry(key), self.folder)

    def store(self, key: str, scan: Scan) -> None:
        """Keep one file's Scan (its staged files hard-linked, not copied), then evict the
        least recently used entries above the size limit."""
        tmp = self.folder / f"tmp-{secrets.token_hex(6)}"
        tmp.mkdir(parents=True)
        try:
            meta = write_entry(tmp, key, scan)
            with self._locked():
                target = self.entry(key)
                target.parent.mkdir(exist_ok=True)
                if target.exists():  # another run stored it meanwhile
                    return
                tmp.rename(target)
                self._evict(keep=key)
            run_logger().info(
                "pass-1 cache: stored %s (%d bytes)", scan.files[0].path, meta["bytes"]
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _evict(self, keep: str) -> None:
        entries = []
        for entry in (self.folder / "entries").iterdir():
            try:
                size = json.loads((entry / "meta.json").read_text())["meta"]["bytes"]
            except (OSError, ValueError, KeyError, TypeError):
                _remove(entry, self.folder)  # unreadable: of no use to anyone
                continue
            entries.append((entry.stat().st_mtime, size, entry))
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            if entry.name != keep:
                _remove(entry, self.folder)
                total -= size
        now = time.time()
        for tmp in self.folder.glob("tmp-*"):
            try:
                stale = now - tmp.stat().st_mtime > STALE_TMP_SECONDS
            except FileNotFoundError:  # a store that ended meanwhile (its own, unlocked, end)
                continue
            if stale:
                shutil.rmtree(tmp, ignore_errors=True)


def _remove(entry: Path, folder: Path) -> None:
    """Take an entry out of `entries/` in one rename, then delete it."""
    if not entry.exists():
        return
    trash = folder / f"tmp-{secrets.token_hex(6)}"
    entry.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


@dataclass(frozen=True)
class Lookup:
    """A file's cache lookup: its hash pass (sha256 and the ranges', see FileHash), its entry
    key, and its Scan if the entry was good."""

    hashed: FileHash
    key: str
    scan: Scan | None


@task(cache_policy=NONE, task_run_name="cache-{file.name}")
def lookup_task(
    cache: Pass1Cache,
    file: CsvFile,
    spans: list[ByteRange],
    index: int,
    config: RunConfig,
    staging: Path,
) -> Lookup:
    """Hash a file (with its byte ranges `spans`) and look its pass-1 result up in the cache."""
    path = file.path
    started = time.perf_counter()
    hashed = hash_file(path, spans)
    key = pass1_key(hashed.sha256, config)
    hashed_at = time.perf_counter()
    try:
        scan = cache.load(key, str(path), index, staging)
    except OSError as exc:  # an unreadable cache folder: the file is parsed, the run goes on
        run_logger().warning("%s: the pass-1 cache could not be read (%s)", path, exc)
        scan = None
    run_logger().info(
        "%s: %s (hashed in %.2f s, entry read and checked in %.2f s)",
        path,
        "read from the pass-1 cache" if scan is not None else "not in the pass-1 cache",
        hashed_at - started,
        time.perf_counter() - hashed_at,
    )
    return Lookup(hashed, key, scan)


@task(cache_policy=NONE, task_run_name="keep-{scan.parts[0].index}")
def store_task(cache: Pass1Cache, lookup: Lookup, scan: Scan) -> None:
    """Keep a file's fresh pass-1 result, if the file was not changed since it was hashed. The
    cache only saves work: a store that fails (disk full, permissions) is logged and the run
    goes on."""
    path = scan.files[0].path
    if scan.files[0].sha256 != lookup.hashed.sha256:  # (see tasks/ingest/scan.py sha256_read)
        run_logger().warning("%s changed while it was read: its pass-1 result is not cached", path)
        return
    try:
        cache.store(lookup.key, scan)
    except OSError as exc:
        run_logger().warning("%s: its pass-1 result could not be cached (%s)", path, exc)
