"""Pass 1 over one byte range of a CSV: every block parsed once, checked, split, summed.

One reader goes through the range in order (the range's sha256 comes from the same read) and
hands each block to a pool of threads, which parse, screen and hash it (pyarrow, polars and
numpy work outside the GIL, so the blocks of one file use every core). Results are taken back
in block order, so that records, spills and sums do not depend on timing:

- the rows the screen cleared go straight on; the others (and the parser's rejected rows) are
  gathered over blocks and checked together by pandera (tasks/ingest/suspects.py);
- accepted rows are appended to Arrow IPC chunk files (tasks/ingest/spill.py): all that training and
  pass 2 read, so the CSV text is never parsed again;
- quarantine records go to a staged Parquet file; a key record per row with an id goes to the
  duplicate-key partitions (tasks/ingest/dedup.py), unless the run's files have no id column;
- per block: float64 statistics of its train and holdout rows and a profile sketch
  (tasks/ingest/batchstats.py).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task

from schemas.outputs import QUARANTINE_ARROW
from schemas.params import RunConfig
from tasks.common import progress, store
from tasks.common.errors import InputFileError
from tasks.common.retry import FILE_READ_TASK
from tasks.common.storage import working_files
from tasks.common.store import Location
from tasks.ingest.batchstats import BatchStats, batch_stats, take_rows
from tasks.ingest.blocks import Block, ByteRange, LineRejection, parse_block, read_blocks
from tasks.ingest.csvfile import UTF8_BOM, CsvFile, changed_message, header_fields
from tasks.ingest.dedup import KeyWriter, partitions_for
from tasks.ingest.screen import screen_block
from tasks.ingest.spill import SpillWriter, spill_batch
from tasks.ingest.split import holdout_of_hashes
from tasks.ingest.suspects import SUSPECT_ROWS, Checked, Gathered, Suspects, check_suspects
from tasks.ingest.validate import quarantine_table


@dataclass(frozen=True)
class RangeScan:
    """Pass 1's result for one byte range. Lines are local (the range's first line is 0).
    `spill` holds the chunk files of accepted rows; `keys` the duplicate-key partitions;
    `blocks` (file offset, first line, bytes, crc32) per block, to read lines back;
    `rejection` is (local line, message with `{line}`) when the file is refused there; `sha256`
    is that of the bytes the range parsed (the first range's with the header)."""

    path: Location
    span: ByteRange
    lines: int
    rows: int
    accepted: int
    stats: BatchStats
    quarantine: str | None
    spill: tuple[str, ...]
    keys: tuple[str, ...]
    blocks: np.ndarray
    sha256: str
    rejection: tuple[int, str] | None = None


def scan_range(
    file: CsvFile, span: ByteRange, config: RunConfig, staging: Location, name: str
) -> RangeScan:
    """Pass 1 over one byte range (see the module docstring); its files are staged under
    `staging` (a folder or a store's prefix), in `name`, which makes them unique."""
    digest = hashlib.sha256()
    if span.start == file.data_start:
        with store.open_input(file.path) as fh:
            head = fh.readline()
        if len(head) != file.data_start or _fields(head) != file.header:
            raise InputFileError(changed_message(file.path, "line 1, the header"))
        digest.update(head)
    with working_files(staging):
        return _scan(file, span, config, store.join(staging, name), digest)


def _fields(head: bytes) -> tuple[str, ...] | None:
    try:
        return header_fields(head.removeprefix(UTF8_BOM).decode("utf-8"))
    except (UnicodeDecodeError, csv.Error):
        return None


def _scan(
    file: CsvFile, span: ByteRange, config: RunConfig, folder: Location, digest: hashlib._Hash
) -> RangeScan:
    state = _RangeState(file, config, folder)
    window: deque = deque()
    rejection = None
    source = str(file.path)
    try:
        with ThreadPoolExecutor(max(1, config.threads)) as pool:

            def take(limit: int) -> None:
                # results in order; gathered suspects go back to the pool as a check
                while window and (len(window) > limit or window[0].done()):
                    job = state.commit(window.popleft().result())
                    if job is not None:
                        window.append(pool.submit(check_suspects, job, source, config))

            try:
                for block in read_blocks(file.path, span, config.block_bytes, digest):
                    progress.advance(len(block.data), block.lines)
                    below = state.stats.profile.sample.threshold
                    window.append(pool.submit(_screen, file, block, config, below))
                    take(config.threads + 1)
                take(0)
                job = state.suspects.take()
                if job is not None:
                    window.append(pool.submit(check_suspects, job, source, config))
                take(0)
            except LineRejection as exc:
                rejection = (exc.local_line, exc.message)
                for future in window:
                    future.cancel()
    finally:
        quarantine, spill, keys = state.close()
    blocks = np.array(state.blocks, dtype=np.int64).reshape(-1, 4)
    return RangeScan(
        file.path, span, state.lines, state.rows, state.accepted, state.stats,
        quarantine, spill, keys, blocks, digest.hexdigest(), rejection,
    )  # fmt: skip


@dataclass(frozen=True)
class _Screened:
    """A block after the screen: the crc32 of its bytes, its rows the screen cleared (as a
    spill batch, with their hashes and statistics) and the suspects to gather."""

    block: Block
    crc: int
    rows: int
    clean: pa.RecordBatch
    clean_hashes: np.ndarray
    stats: BatchStats
    suspects: tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray, list]


def _screen(file: CsvFile, block: Block, config: RunConfig, below: np.uint64) -> _Screened:
    """The part of pass 1 that runs in the pool: parse, screen, hash, split and sum a block."""
    text = parse_block(file, block)
    screened = screen_block(text.rows, config)
    clean = screened.clean
    values, hashes = take_rows(screened.values, clean), screened.hashes[clean]
    holdout = holdout_of_hashes(hashes, config.holdout_fraction)
    ids = screened.ids.filter(pa.array(clean))
    batch = spill_batch(ids, values, text.lines[clean], holdout, config)
    stats = batch_stats(values, holdout, hashes, config, below)
    suspect = np.flatnonzero(~clean)
    has_id = screened.ids.is_valid().to_numpy(zero_copy_only=False)
    suspects = (
        text.rows.take(pa.array(suspect)),
        text.lines[suspect],
        screened.hashes[suspect],
        has_id[suspect],
        text.parse_errors,
    )
    rows = text.rows.num_rows + len(text.parse_errors)
    crc = zlib.crc32(block.data)  # lines read back later are checked against it
    return _Screened(block, crc, rows, batch, hashes, stats, suspects)


class _RangeState:
    """What the blocks of a range add up to, taken in block order."""

    def __init__(self, file: CsvFile, config: RunConfig, folder: Location) -> None:
        self.lines = self.rows = self.accepted = 0
        self.stats = BatchStats.zero(config)
        self.blocks: list[tuple[int, int, int, int]] = []
        self.spill = SpillWriter(folder, config)
        self.keys = KeyWriter(folder, partitions_for(file.size))
        self.quarantine_path = store.join(folder, "quarantine.parquet")
        self.quarantine: contextlib.ExitStack | None = None  # the writer, then the object
        self.suspects = Gathered(file.header)
        self.has_ids = config.id_column is not None

    def commit(self, done: _Screened | Checked) -> Suspects | None:
        """Take a block's (or a check's) result; returns the gathered suspects once there
        are enough of them to check."""
        if isinstance(done, Checked):
            self._write_quarantine(done.quarantine)
            hashes, lines = done.refused
            self.keys.write(hashes, lines, np.zeros(len(hashes), bool))
            self._accept(done.accepted, done.hashes, done.stats)
            return None
        block = done.block
        self.blocks.append((block.offset, block.first_line, len(block.data), done.crc))
        self.lines += block.lines
        self.rows += done.rows
        self._accept(done.clean, done.clean_hashes, done.stats)
        self.suspects.add(*done.suspects)
        return self.suspects.take() if self.suspects.rows >= SUSPECT_ROWS else None

    def _accept(self, batch: pa.RecordBatch, hashes: np.ndarray, stats: BatchStats) -> None:
        if batch.num_rows:
            self.spill.write(batch)
            if self.has_ids:  # (rows without an id column have no key to repeat)
                lines = batch.column("line").to_numpy()
                self.keys.write(hashes, lines, np.ones(len(hashes), bool))
            self.stats.absorb(stats)
            self.accepted += batch.num_rows

    def _write_quarantine(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        if self.quarantine is None:
            self.quarantine = contextlib.ExitStack()
            sink = self.quarantine.enter_context(store.open_output(self.quarantine_path))
            self.writer = self.quarantine.enter_context(pq.ParquetWriter(sink, QUARANTINE_ARROW))
        self.writer.write_table(quarantine_table(frame))

    def close(self) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
        quarantine = None
        if self.quarantine is not None:
            self.quarantine.close()
            quarantine = self.quarantine_path
        return quarantine, self.spill.close(), self.keys.close()


@task(**FILE_READ_TASK, task_run_name="read-{file.name}-{span.index}")
def scan_range_task(
    file: CsvFile, span: ByteRange, config: RunConfig, staging: Location, name: str
) -> RangeScan:
    """scan_range as a task (retried on transient I/O errors), logging its row counts."""
    scanned = scan_range(file, span, config, staging, name)
    get_run_logger().info(
        "%s bytes %d-%d: %d rows, %d accepted before the duplicate-key check",
        file.path,
        span.start,
        span.end,
        scanned.rows,
        scanned.accepted,
    )
    return scanned
