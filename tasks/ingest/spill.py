"""Accepted rows between the passes, in Arrow IPC files: what training and pass 2 read, so that
the CSV text is parsed once. Pass 1 appends each block's accepted rows (id, values, line,
split) to the current chunk file; a chunk is about CHUNK_BLOCKS blocks of rows, and pass 2
writes one predictions part per chunk, in parallel. The files are always written, through the
store layer into the run's staging (a local folder, or a bucket's prefix for a cluster): on a
disk the page cache keeps small ones in memory, and big ones never count against the process."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from schemas.params import RunConfig
from tasks.common import store
from tasks.common.store import Location

CHUNK_BLOCKS = 8
ROW_BYTES = 34  # about one row of the sales contract as CSV text


def spill_schema(config: RunConfig) -> pa.Schema:
    """Accepted rows as pass 1 keeps them: the id (if the files have one), the numeric
    columns, the line (local to the byte range) and whether the row is in the holdout split."""
    ids = [] if config.id_column is None else [(config.id_column, pa.string())]
    return pa.schema(
        ids
        + [(name, pa.float64()) for name in config.values]
        + [("line", pa.int64()), ("holdout", pa.bool_())]
    )


def spill_batch(
    ids: pa.Array, values: np.ndarray, lines: np.ndarray, holdout: np.ndarray, config: RunConfig
) -> pa.RecordBatch:
    """Accepted rows (ids, values [N, features + targets], lines, holdout mask) as a batch."""
    columns = [pa.array(values[:, j]) for j in range(values.shape[1])]
    if config.id_column is not None:
        columns.insert(0, ids)
    return pa.record_batch(
        [*columns, pa.array(lines), pa.array(holdout)], schema=spill_schema(config)
    )


def spilled_values(batch: pa.RecordBatch, config: RunConfig) -> np.ndarray:
    """The numeric columns of a spilled batch as float64 [N, features + targets]."""
    columns = [batch.column(name).to_numpy() for name in config.values]
    return np.asfortranarray(np.column_stack(columns).reshape(batch.num_rows, len(config.values)))


def read_chunk(path: Location) -> Iterator[pa.RecordBatch]:
    """The batches of one chunk file, one at a time (read by ranges, not memory-mapped, so
    that they do not count as resident)."""
    with store.open_input(path) as source, ipc.open_file(source) as reader:
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)


class SpillWriter:
    """The accepted rows of one byte range, appended in order to chunk files in `folder`."""

    def __init__(self, folder: Location, config: RunConfig) -> None:
        self.folder, self.schema = folder, spill_schema(config)
        self.chunk_rows = CHUNK_BLOCKS * max(1, config.block_bytes // ROW_BYTES)
        self.chunks: list[str] = []
        self.writer: Any = None
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if self.writer is not None and self.rows >= self.chunk_rows:
            self._end_chunk()
        if self.writer is None:
            path = store.join(self.folder, f"spill-{len(self.chunks):04d}.arrow")
            self.chunks.append(path)
            self.writer = contextlib.ExitStack()  # the IPC footer first, then the object's end
            sink = self.writer.enter_context(store.open_output(path))
            self.ipc = self.writer.enter_context(ipc.new_file(sink, self.schema))
        self.ipc.write_batch(batch)
        self.rows += batch.num_rows

    def _end_chunk(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.rows = 0

    def close(self) -> tuple[str, ...]:
        self._end_chunk()
        return tuple(self.chunks)
