"""A run's data after pass 1: per file and summed over files, one type (Scan).

finish_file turns the byte ranges of one file (tasks/ingest/range_scan.py) into the file's part
of a Scan:
the bytes each range parsed checked against the file's hash pass (a file that changed while it
was read is refused, see sha256_read), line numbers made absolute, the refusal (if any) raised
with its line, repeated ids found over the whole file (tasks/ingest/dedup.py) and quarantined with
their text, and the file's statistics summed again without them. Scans of several files add
up (`+`): what training, the gate, the metrics and pass 2 read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from schemas.params import RunConfig
from schemas.sales import allowed_columns, required_columns
from tasks.common import store
from tasks.common.errors import InputFileError
from tasks.common.retry import FILE_READ_TASK
from tasks.common.storage import data_fingerprint, working_files
from tasks.common.store import Location, name_of
from tasks.ingest.batchstats import BatchStats, batch_stats
from tasks.ingest.blocks import LineReader
from tasks.ingest.csvfile import (
    ByteRange,
    CsvFile,
    FileHash,
    changed_message,
    hash_file,
    open_csv,
    split_ranges,
)
from tasks.ingest.dedup import duplicate_records, repeated_ids
from tasks.ingest.profile import ProfileSketch, profile_table
from tasks.ingest.range_scan import RangeScan, scan_range
from tasks.ingest.spill import read_chunk, spilled_values
from tasks.ingest.split import hash_text
from tasks.ingest.stats import Moments
from tasks.ingest.validate import FileReport

FIRST_DATA_LINE = 2  # line 1 is the header


@dataclass(frozen=True)
class FilePart:
    """Where one file's accepted rows and records are, per byte range: its spill chunks (Arrow
    IPC) and staged quarantine records, with the absolute line of each range's first line; the
    lines of accepted rows that repeat an earlier id (left out of everything downstream) and
    the staged records of those repeats. Only locations (files of the run's staging: a folder,
    or a store's prefix for a cluster) and numbers: a part read back from the pass-1 cache
    (tasks/ingest/cache.py) is the same as one just scanned."""

    source: str
    index: int
    spills: tuple[tuple[Location, ...], ...]
    quarantines: tuple[Location | None, ...]
    offsets: tuple[int, ...]
    excluded: np.ndarray
    duplicates: Location | None

    def batches(self, chunk: tuple[int, int]) -> Iterator[pa.RecordBatch]:
        """The accepted rows of one spill chunk (range, chunk number), lines absolute."""
        r, c = chunk
        for batch in read_chunk(self.spills[r][c]):
            yield self._absolute(batch, self.offsets[r])

    def chunks(self) -> list[tuple[int, int]]:
        return [(r, c) for r, spill in enumerate(self.spills) for c in range(len(spill))]

    def _absolute(self, batch: pa.RecordBatch, offset: int) -> pa.RecordBatch:
        lines = batch.column("line").to_numpy() + offset
        batch = batch.set_column(batch.schema.get_field_index("line"), "line", pa.array(lines))
        if len(self.excluded):
            batch = batch.filter(pa.array(~np.isin(lines, self.excluded)))
        return batch

    def quarantine(self) -> Iterator[pd.DataFrame]:
        """The file's quarantine records in line order, a row group at a time, naming the
        file as this run was given it (a cached part may have been built under another
        name)."""
        late = None
        if self.duplicates is not None:
            with store.open_input(self.duplicates) as source:
                late = pq.read_table(source).to_pandas()
        if late is not None:
            late["source_file"] = self.source
        for path, offset in zip(self.quarantines, self.offsets, strict=True):
            if path is None:
                continue
            with store.open_input(path) as source:
                records = pq.ParquetFile(source)
                for group in range(records.num_row_groups):
                    frame = records.read_row_group(group).to_pandas()
                    frame["source_line"] += offset
                    frame["source_file"] = self.source
                    if late is not None and len(late):
                        take = late["source_line"] <= frame["source_line"].max()
                        frame = pd.concat([frame, late[take]], ignore_index=True)
                        frame = frame.sort_values("source_line", kind="stable")
                        late = late[~take]
                    yield frame
        if late is not None and len(late):
            yield late


@dataclass(frozen=True)
class Scan:
    """Pass 1's result for one or more files: their row accounting, where their rows are, the
    statistics of the train and holdout rows, and the profile of the accepted rows."""

    files: tuple[FileReport, ...]
    parts: tuple[FilePart, ...]
    train: Moments
    holdout: Moments
    profile: ProfileSketch

    def __add__(self, other: Scan) -> Scan:
        return Scan(
            self.files + other.files,
            self.parts + other.parts,
            self.train + other.train,
            self.holdout + other.holdout,
            self.profile.merge(other.profile),
        )

    @property
    def accepted(self) -> int:
        return sum(f.accepted for f in self.files)

    @property
    def fingerprint(self) -> str:
        """sha256 over the inputs' sha256s (see tasks.common.storage.data_fingerprint)."""
        return data_fingerprint([f.sha256 for f in self.files])

    def profile_table(self) -> pd.DataFrame:
        """The profile of the accepted rows (see tasks.ingest.profile.profile_table)."""
        return profile_table(self.profile, self.train + self.holdout)


def training_rows(scan: Scan, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """X [N, d] and y [N, k] of the training rows, read from the kept rows (float64)."""
    parts = []
    for part in scan.parts:
        for chunk in part.chunks():
            for batch in part.batches(chunk):
                holdout = batch.column("holdout").to_numpy(zero_copy_only=False)
                parts.append(spilled_values(batch, config)[~holdout])
    values = np.concatenate(parts) if parts else np.zeros((0, len(config.values)))
    d = len(config.features)
    return np.ascontiguousarray(values[:, :d]), np.ascontiguousarray(values[:, d:])


def sum_scans(scans: list[Scan]) -> Scan:
    total = scans[0]
    for scan in scans[1:]:
        total = total + scan
    return total


def finish_file(
    file: CsvFile,
    index: int,
    ranges: list[RangeScan],
    hashed: FileHash | None,
    config: RunConfig,
    staging: Location,
) -> Scan:
    """One file's ranges -> the file's Scan (see the module docstring). `hashed` is the hash
    pass over the file (see sha256_read); None for a file read as one range and not looked
    up in the cache (that range hashes the whole file itself)."""
    source = str(file.path)
    sha256 = sha256_read(file, ranges, hashed)
    offsets = list(np.cumsum([FIRST_DATA_LINE] + [r.lines for r in ranges[:-1]]))
    refused = [
        (off + r.rejection[0], r.rejection[1])
        for r, off in zip(ranges, offsets, strict=True)
        if r.rejection
    ]
    if refused:
        line, message = min(refused)
        raise InputFileError(message.format(line=line))
    rows = sum(r.rows for r in ranges)
    if rows == 0:
        raise InputFileError(f"{source}: no data rows (header only)")
    excluded, duplicates = np.zeros(0, np.int64), None
    if config.id_column is not None:
        lines = LineReader(file, [r.blocks for r in ranges], offsets, config.id_column)
        repeats = repeated_ids([r.keys for r in ranges], offsets, lines.ids, config.threads)
        excluded = repeats.loc[repeats["ok"], "source_line"].to_numpy(np.int64)
        if len(repeats):
            duplicates = store.join(staging, f"duplicates-{index:05d}.parquet")
            with working_files(staging), store.open_output(duplicates) as sink:
                pq.write_table(duplicate_records(source, repeats, lines), sink)
    part = FilePart(
        source,
        index,
        tuple(r.spill for r in ranges),
        tuple(r.quarantine for r in ranges),
        tuple(map(int, offsets)),
        excluded,
        duplicates,
    )
    stats = BatchStats.zero(config)
    if len(excluded):  # the statistics again, without the repeats
        for chunk in part.chunks():
            for batch in part.batches(chunk):
                values = spilled_values(batch, config)
                holdout = batch.column("holdout").to_numpy(zero_copy_only=False)
                hashes = hash_text(batch.column(config.id_column), config.seed)
                stats.absorb(batch_stats(values, holdout, hashes, config))
    else:
        for r in ranges:
            stats.absorb(r.stats)
    accepted = sum(r.accepted for r in ranges) - len(excluded)
    report = FileReport(
        source,
        sha256,
        file.size,
        rows,
        accepted,
        rows - accepted,
    )
    return Scan((report,), (part,), stats.train, stats.holdout, stats.profile)


def sha256_read(file: CsvFile, ranges: list[RangeScan], hashed: FileHash | None) -> str:
    """The sha256 of the file pass 1 read. Each range's scan hashed the bytes it parsed; the
    hash pass read them too: if the two differ, the file changed in between. A file of several
    ranges may then have been read as a mix of two versions and is refused; a file of one
    range was read whole and gets the sha256 of what was read (so the cache keeps nothing of
    it: tasks/ingest/cache.py store_task). A range refused at a line stopped reading there: it is
    not compared, its refusal is what the file gets."""
    if hashed is None:
        return ranges[0].sha256
    pairs = zip(ranges, hashed.ranges, strict=True)
    changed = [r.span for r, h in pairs if r.rejection is None and r.sha256 != h]
    if not changed:
        return hashed.sha256
    if len(ranges) == 1:
        return ranges[0].sha256
    where = f"bytes {changed[0].start}-{changed[0].end}"
    raise InputFileError(changed_message(file.path, where))


def open_input(path: Location, config: RunConfig) -> CsvFile:
    """An input file with the run's columns checked (see open_csv)."""
    columns = (config.features, config.targets, config.id_column)
    return open_csv(path, required_columns(*columns), allowed_columns(*columns))


def scan_file(path: Location, index: int, config: RunConfig, staging: Location) -> Scan:
    """Pass 1 over one file in this process (its byte ranges one after another): what the
    flow's tasks do, spread out. For tests, benchmarks and the landing check."""
    file = open_input(path, config)
    ranges = [
        scan_range(file, span, config, staging, f"{index:05d}-{span.index:04d}")
        for span in split_ranges(file, config.split_bytes)
    ]
    hashed = hash_file(path, [r.span for r in ranges]) if len(ranges) > 1 else None
    return finish_file(file, index, ranges, hashed, config, staging)


@task(**FILE_READ_TASK, task_run_name=lambda parameters: f"open-{name_of(parameters['path'])}")
def open_input_task(path: Location, config: RunConfig) -> tuple[CsvFile, list[ByteRange]]:
    """Check a file's header and cut it into byte ranges (one unless config.split_bytes)."""
    file = open_input(path, config)
    return file, split_ranges(file, config.split_bytes)


@task(**FILE_READ_TASK, task_run_name="hash-{file.name}")
def hash_input_task(file: CsvFile, spans: list[ByteRange]) -> FileHash:
    """The hash pass over a file split into several ranges (one range hashes itself as it
    reads)."""
    return hash_file(file.path, spans)


@task(cache_policy=NONE, task_run_name="check-{file.name}")
def finish_input_task(
    file: CsvFile,
    index: int,
    ranges: list[RangeScan],
    hashed: FileHash | None,
    config: RunConfig,
    staging: Location,
) -> Scan:
    """finish_file as a task, logging the file's row counts."""
    scan = finish_file(file, index, ranges, hashed, config, staging)
    report = scan.files[0]
    get_run_logger().info(
        "%s: %d data rows, %d accepted, %d quarantined",
        report.path,
        report.rows,
        report.accepted,
        report.quarantined,
    )
    return scan
