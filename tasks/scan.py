"""Pass 1 over one byte range of a CSV: every block parsed once, checked, split, summed.

One reader goes through the range in order (the range's sha256 comes from the same read) and
hands each block to a pool of threads, which parse, screen and hash it (pyarrow, polars and
numpy work outside the GIL, so the blocks of one file use every core). Results are taken back
in block order, so that records, spills and sums do not depend on timing:

- the rows the screen cleared go straight on; the others (and the parser's rejected rows) are
  gathered over blocks and checked together by pandera (validate.check_rows), whose cost is
  mostly per call;
- accepted rows are kept (id, values, line, split), in memory up to a budget and in Arrow IPC
  files above it: all that training and pass 2 read, so the CSV text is never parsed again;
- quarantine records go to a staged Parquet file; a key record per row with an id goes to the
  duplicate-key partitions (tasks/dedup.py);
- per spilled batch: float64 statistics of its train and holdout rows and a profile sketch.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
from prefect import get_run_logger, task

from schemas.outputs import QUARANTINE_ARROW
from schemas.params import RunConfig
from schemas.sales import ID_COLUMN
from tasks.csvfile import Block, ByteRange, CsvFile, LineRejection, parse_block, read_blocks
from tasks.dedup import KeyWriter, partitions_for
from tasks.profile import NO_KEY, ProfileSketch, sample_keys
from tasks.retry import FILE_READ_TASK
from tasks.split import holdout_of_hashes
from tasks.stats import Moments, moments_of_columns
from tasks.storage import working_files
from tasks.validate import QUARANTINE_COLUMNS, check_rows, screen_block

# Rows the screen could not clear, gathered before pandera checks them together (a call costs
# about 0.1 s whatever its size, when values fail); the check runs in the pool while later
# blocks are parsed.
SUSPECT_ROWS = 100_000


@dataclass
class BatchStats:
    """What accepted rows add up to: train and holdout statistics, and the profile sketch."""

    train: Moments
    holdout: Moments
    profile: ProfileSketch

    def absorb(self, other: BatchStats) -> None:
        """Add another batch's statistics to these, in place."""
        self.train = self.train + other.train
        self.holdout = self.holdout + other.holdout
        self.profile.absorb(other.profile)

    @staticmethod
    def zero(config: RunConfig) -> BatchStats:
        d, k = len(config.features), len(config.targets)
        return BatchStats(Moments.zero(d, k), Moments.zero(d, k), ProfileSketch(config.values))


def take_rows(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The rows of an [N, m] array where `mask` holds, as a column-major array (numpy sums and
    compares the columns of that layout ten times faster than across rows)."""
    out = np.empty((int(np.count_nonzero(mask)), values.shape[1]), order="F")
    for j in range(values.shape[1]):
        np.compress(mask, values[:, j], out=out[:, j])
    return out


def batch_stats(
    values: np.ndarray,
    holdout: np.ndarray,
    hashes: np.ndarray,
    config: RunConfig,
    below: np.uint64 = NO_KEY,
) -> BatchStats:
    """The statistics of accepted rows (values [N, features + targets], holdout mask, id
    hashes); sample keys at or above `below` are left out of the profile's sample."""
    d = len(config.features)
    profile = ProfileSketch(config.values)
    profile.add(values, sample_keys(hashes), below, holdout)
    train = moments_of_columns(take_rows(values, ~holdout), d)
    return BatchStats(train, moments_of_columns(take_rows(values, holdout), d), profile)


def spill_schema(config: RunConfig) -> pa.Schema:
    """Accepted rows as pass 1 keeps them: the id, the numeric columns, the line (local to the
    byte range) and whether the row is in the holdout split."""
    return pa.schema(
        [(ID_COLUMN, pa.string())]
        + [(name, pa.float64()) for name in config.values]
        + [("line", pa.int64()), ("holdout", pa.bool_())]
    )


def spilled_values(batch: pa.RecordBatch, config: RunConfig) -> np.ndarray:
    """The numeric columns of a spilled batch as float64 [N, features + targets]."""
    columns = [batch.column(name).to_numpy() for name in config.values]
    return np.asfortranarray(np.column_stack(columns).reshape(batch.num_rows, len(config.values)))


# Accepted rows spilled in memory (up to RunConfig.memory_bytes per range) or in IPC files: a
# chunk is a tuple of batches or a file, about CHUNK_BLOCKS blocks of rows (pass 2 writes one
# predictions part per chunk, in parallel).
SpillChunk = tuple[pa.RecordBatch, ...] | Path
CHUNK_BLOCKS = 8


@dataclass(frozen=True)
class RangeScan:
    """Pass 1's result for one byte range. Lines are local (the range's first line is 0).
    `blocks` holds (file offset, first line, bytes) per block, to read lines back;
    `rejection` is (local line, message with `{line}`) when the file is refused there."""

    path: Path
    span: ByteRange
    lines: int
    rows: int
    accepted: int
    stats: BatchStats
    quarantine: Path | None
    spill: tuple[SpillChunk, ...]
    keys: tuple[Path, ...]
    blocks: np.ndarray
    sha256: str
    rejection: tuple[int, str] | None = None


def scan_range(
    file: CsvFile, span: ByteRange, config: RunConfig, staging: Path, name: str
) -> RangeScan:
    """Pass 1 over one byte range (see the module docstring); `name` makes its staged files
    unique."""
    digest = hashlib.sha256()
    if span.start == file.data_start:
        with file.path.open("rb") as fh:
            digest.update(fh.read(file.data_start))
    with working_files(staging):
        return _scan(file, span, config, staging / name, digest)


def _scan(
    file: CsvFile, span: ByteRange, config: RunConfig, folder: Path, digest: hashlib._Hash
) -> RangeScan:
    state = _RangeState(file, config, folder)
    window: deque = deque()
    rejection = None
    try:
        with ThreadPoolExecutor(max(1, config.threads)) as pool:

            def take(limit: int) -> None:
                # results in order; gathered suspects go back to the pool as a check
                while window and (len(window) > limit or window[0].done()):
                    job = state.commit(window.popleft().result())
                    if job is not None:
                        window.append(pool.submit(_check, job, file, config))

            try:
                for block in read_blocks(file.path, span, config.block_bytes, digest):
                    below = state.stats.profile.sample.threshold
                    window.append(pool.submit(_screen, file, block, config, below))
                    take(config.threads + 1)
                take(0)
                job = state.suspects.take()
                if job is not None:
                    window.append(pool.submit(_check, job, file, config))
                take(0)
            except LineRejection as exc:
                rejection = (exc.local_line, exc.message)
                for future in window:
                    future.cancel()
    finally:
        quarantine, spill, keys = state.close()
    blocks = np.array(state.blocks, dtype=np.int64).reshape(-1, 3)
    return RangeScan(
        file.path, span, state.lines, state.rows, state.accepted, state.stats,
        quarantine, spill, keys, blocks, digest.hexdigest(), rejection,
    )  # fmt: skip


@dataclass(frozen=True)
class _Screened:
    block: Block
    rows: pa.Table
    lines: np.ndarray
    parse_errors: list[tuple[int, str, int, int]]
    hashes: np.ndarray
    has_id: np.ndarray
    cleared: np.ndarray
    clean: pa.RecordBatch
    stats: BatchStats


def _screen(file: CsvFile, block: Block, config: RunConfig, below: np.uint64) -> _Screened:
    """The part of pass 1 that runs in the pool: parse, screen, hash, split and sum a block."""
    text = parse_block(file, block)
    screened = screen_block(text.rows, config.features, config.targets, config.seed)
    clean = screened.clean
    values, hashes = take_rows(screened.values, clean), screened.hashes[clean]
    holdout = holdout_of_hashes(hashes, config.holdout_fraction)
    batch = _spill_batch(
        screened.ids.filter(pa.array(clean)), values, text.lines[clean], holdout, config
    )
    has_id = screened.ids.is_valid().to_numpy(zero_copy_only=False)
    stats = batch_stats(values, holdout, hashes, config, below)
    hashes_all = screened.hashes
    return _Screened(
        block, text.rows, text.lines, text.parse_errors, hashes_all, has_id, clean, batch, stats
    )  # fmt: skip


def _spill_batch(
    ids: pa.Array, values: np.ndarray, lines: np.ndarray, holdout: np.ndarray, config: RunConfig
) -> pa.RecordBatch:
    columns = [pa.array(values[:, j]) for j in range(values.shape[1])]
    return pa.record_batch(
        [ids, *columns, pa.array(lines), pa.array(holdout)], schema=spill_schema(config)
    )


@dataclass(frozen=True)
class _Suspects:
    """Rows the screen could not clear and the parser's rejected rows, gathered over blocks."""

    rows: pa.Table
    lines: np.ndarray
    hashes: np.ndarray
    has_id: np.ndarray
    parse_errors: list[tuple[int, str, int, int]]


class _Gathered:
    def __init__(self, header: tuple[str, ...]) -> None:
        self.header = header
        self.parts: list[tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]] = []
        self.errors: list[tuple[int, str, int, int]] = []
        self.rows = 0

    def add(self, done: _Screened) -> None:
        suspect = np.flatnonzero(~done.cleared)
        if len(suspect):
            picked = pa.array(suspect)
            self.parts.append(
                (
                    done.rows.take(picked),
                    done.lines[suspect],
                    done.hashes[suspect],
                    done.has_id[suspect],
                )
            )
            self.rows += len(suspect)
        self.errors += done.parse_errors

    def take(self) -> _Suspects | None:
        if not self.parts and not self.errors:
            return None
        if self.parts:
            text = pa.concat_tables([part[0] for part in self.parts])
            lines, hashes, has_id = (np.concatenate([p[i] for p in self.parts]) for i in (1, 2, 3))
        else:
            text = pa.table({name: pa.array([], pa.string()) for name in self.header})
            lines, hashes, has_id = np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, bool)
        job = _Suspects(text, lines, hashes, has_id, self.errors)
        self.parts, self.errors, self.rows = [], [], 0
        return job


@dataclass(frozen=True)
class _Checked:
    quarantine: pd.DataFrame
    refused: tuple[np.ndarray, np.ndarray]
    accepted: pa.RecordBatch
    hashes: np.ndarray
    stats: BatchStats


def _check(job: _Suspects, file: CsvFile, config: RunConfig) -> _Checked:
    """pandera on gathered rows (in the pool): their records, the ids of the refused ones (they
    count for repeats too) and the accepted ones as a spill batch."""
    rows = job.rows.to_pandas(types_mapper=pd.ArrowDtype)
    rows["source_line"] = job.lines
    errors = parse_error_frame(job.parse_errors)
    checked = check_rows(str(file.path), rows, errors, config.features, config.targets)
    keep = checked.keep
    refused = job.has_id & ~keep
    typed = checked.typed[keep]
    values = typed[list(config.values)].to_numpy(np.float64)
    values = np.asfortranarray(values.reshape(len(typed), len(config.values)))
    hashes = job.hashes[keep]
    holdout = holdout_of_hashes(hashes, config.holdout_fraction)
    ids = pa.array(typed[ID_COLUMN].astype(object), pa.string())
    batch = _spill_batch(ids, values, job.lines[keep], holdout, config)
    return _Checked(
        checked.quarantine,
        (job.hashes[refused], job.lines[refused]),
        batch,
        hashes,
        batch_stats(values, holdout, hashes, config),
    )


class _RangeState:
    """What the blocks of a range add up to, taken in block order."""

    def __init__(self, file: CsvFile, config: RunConfig, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.file, self.config, self.folder = file, config, folder
        self.lines = self.rows = self.accepted = 0
        self.stats = BatchStats.zero(config)
        self.blocks: list[tuple[int, int, int]] = []
        self.spill = _Spill(folder, spill_schema(config), config)
        self.keys = KeyWriter(folder, partitions_for(file.size))
        self.quarantine_path = folder / "quarantine.parquet"
        self.quarantine: pq.ParquetWriter | None = None
        self.suspects = _Gathered(file.header)

    def commit(self, done: _Screened | _Checked) -> _Suspects | None:
        """Take a block's (or a check's) result; returns the gathered suspects once there
        are enough of them to check."""
        if isinstance(done, _Checked):
            self._write_quarantine(done.quarantine)
            hashes, lines = done.refused
            self.keys.write(hashes, lines, np.zeros(len(hashes), bool))
            self._accept(done.accepted, done.hashes, done.stats)
            return None
        block = done.block
        self.blocks.append((block.offset, block.first_line, len(block.data)))
        self.lines += block.lines
        self.rows += done.rows.num_rows + len(done.parse_errors)
        self._accept(done.clean, done.hashes[done.cleared], done.stats)
        self.suspects.add(done)
        return self.suspects.take() if self.suspects.rows >= SUSPECT_ROWS else None

    def _accept(self, batch: pa.RecordBatch, hashes: np.ndarray, stats: BatchStats) -> None:
        if batch.num_rows:
            self.spill.write(batch)
            self.keys.write(hashes, batch.column("line").to_numpy(), np.ones(len(hashes), bool))
            self.stats.absorb(stats)
            self.accepted += batch.num_rows

    def _write_quarantine(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        if self.quarantine is None:
            self.quarantine = pq.ParquetWriter(self.quarantine_path, QUARANTINE_ARROW)
        self.quarantine.write_table(quarantine_table(frame))

    def close(self) -> tuple[Path | None, tuple[SpillChunk, ...], tuple[Path, ...]]:
        quarantine = None
        if self.quarantine is not None:
            self.quarantine.close()
            quarantine = self.quarantine_path
        return quarantine, self.spill.close(), self.keys.close()


class _Spill:
    """Accepted rows in chunks: kept in memory while they fit `memory_bytes`, in Arrow IPC
    files after that (read back without memory-mapping, so they never count as resident)."""

    def __init__(self, folder: Path, schema: pa.Schema, config: RunConfig) -> None:
        self.folder, self.schema = folder, schema
        self.budget = config.memory_bytes
        self.chunk_rows = CHUNK_BLOCKS * max(1, config.block_bytes // 34)  # ~34 bytes a row
        self.chunks: list[SpillChunk] = []
        self.kept: list[pa.RecordBatch] = []
        self.writer = None
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self.rows >= self.chunk_rows:
            self._end_chunk()
        if self.writer is None and batch.nbytes <= self.budget:
            self.kept.append(batch)
            self.budget -= batch.nbytes
        else:
            if self.kept:
                self._end_chunk()
            if self.writer is None:
                path = self.folder / f"spill-{len(self.chunks):04d}.arrow"
                self.writer = (path, ipc.new_file(path, self.schema))
            self.writer[1].write_batch(batch)
        self.rows += batch.num_rows

    def _end_chunk(self) -> None:
        if self.kept:
            self.chunks.append(tuple(self.kept))
            self.kept = []
        if self.writer is not None:
            self.writer[1].close()
            self.chunks.append(self.writer[0])
            self.writer = None
        self.rows = 0

    def close(self) -> tuple[SpillChunk, ...]:
        self._end_chunk()
        return tuple(self.chunks)


def parse_error_frame(parse_errors: list[tuple[int, str, int, int]]) -> pd.DataFrame:
    """Rows the parser rejected -> source_line, reason, detail, raw."""
    return pd.DataFrame(
        {
            "source_line": pd.Series([e[0] for e in parse_errors], dtype="int64"),
            "reason": "wrong field count",
            "detail": [f"expected {e[3]} fields, found {e[2]}" for e in parse_errors],
            "raw": pd.Series([e[1] for e in parse_errors], dtype="str"),
        }
    )


def quarantine_table(frame: pd.DataFrame) -> pa.Table:
    """Quarantine records with the table's Arrow types (text columns as str, nulls kept)."""
    frame = frame[QUARANTINE_COLUMNS].copy()
    for column in ("source_file", "column", "reason", "detail", "raw"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["source_line"] = frame["source_line"].astype("int64")
    return pa.Table.from_pandas(frame, schema=QUARANTINE_ARROW, preserve_index=False)


@task(**FILE_READ_TASK, task_run_name="scan-{name}")
def scan_range_task(
    file: CsvFile, span: ByteRange, config: RunConfig, staging: Path, name: str
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
