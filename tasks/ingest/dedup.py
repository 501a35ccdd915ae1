"""Repeated ids over a whole file, in bounded memory.

Within one file a country appears once: a row whose id appeared on an earlier line (accepted or
not) is a duplicate key, the first is kept. Pass 1 writes a key record (id hash, line, whether
the row was otherwise accepted) for every row with an id, into hash partitions in the run's
staging (a folder or a bucket's prefix, through the store layer), so that
all rows of one id land in one partition; each partition (about PARTITION_BYTES of input) is
then loaded alone. Rows sharing a hash are few; their ids are read back from the file and
compared as text, so a hash collision never makes a duplicate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.common import store
from tasks.common.store import Location
from tasks.ingest.blocks import LineReader
from tasks.ingest.validate import as_csv_lines, duplicate_detail, quarantine_table

# Input bytes per duplicate-check partition: each partition's keys (12 bytes a row, about 700k
# rows of the sales contract) are loaded and sorted alone, one per thread.
PARTITION_BYTES = 24 << 20
# A key record: the id's hash and the range-local line, negative (-line - 1) for a row that
# was refused for other reasons.
KEY = np.dtype([("hash", "<u8"), ("line", "<i4")])


def partitions_for(size: int) -> int:
    """How many key partitions a file of `size` bytes gets (every range of it the same)."""
    return max(1, math.ceil(size / PARTITION_BYTES))


class KeyWriter:
    """Key records of one byte range, appended to one file per partition."""

    def __init__(self, folder: Location, n_parts: int) -> None:
        self.paths = [store.join(folder, f"keys-{p:04d}.bin") for p in range(n_parts)]
        self.files = [store.open_output(path) for path in self.paths]

    def write(self, hashes: np.ndarray, lines: np.ndarray, ok: np.ndarray) -> None:
        lines = np.where(ok, lines, -lines - 1)
        n = len(self.files)
        bounds = None
        if n > 1:  # grouped by partition (numpy takes plain arrays faster than records)
            part = partition_of(hashes, n)
            order = np.argsort(part, kind="stable")
            bounds = np.searchsorted(part[order], np.arange(n + 1))
            hashes, lines = hashes[order], lines[order]
        keys = np.empty(len(hashes), KEY)
        keys["hash"], keys["line"] = hashes, lines
        if bounds is None:
            self.files[0].write(keys.view(np.uint8))
            return
        for p in range(n):
            if bounds[p + 1] > bounds[p]:
                self.files[p].write(keys[bounds[p] : bounds[p + 1]].view(np.uint8))

    def close(self) -> tuple[str, ...]:
        for fh in self.files:
            fh.close()
        return tuple(self.paths)


def _repeats_in(
    p: int,
    parts: list[tuple[Location, ...]],
    offsets: list[int],
    ids_of: Callable[[np.ndarray], dict[int, str]],
) -> pd.DataFrame | None:
    """The repeated ids of partition p (see repeated_ids), or None."""
    read = [np.frombuffer(store.read(ranges[p]), dtype=KEY) for ranges in parts]
    keys = np.concatenate(read)
    shared = _shared(keys["hash"]) if len(keys) > 1 else []
    if not len(shared):
        return None
    starts = np.cumsum([0] + [len(keys) for keys in read])
    offset = np.asarray(offsets, np.int64)[np.searchsorted(starts, shared, side="right") - 1]
    local = keys["line"][shared].astype(np.int64)
    ok = local >= 0
    candidates = pd.DataFrame({"line": np.where(ok, local, -local - 1) + offset, "ok": ok})
    candidates = candidates.sort_values("line", kind="stable")
    candidates["id"] = candidates["line"].map(ids_of(candidates["line"].to_numpy()))
    return candidates[candidates["id"].duplicated()]


def _shared(hashes: np.ndarray) -> np.ndarray:
    """Positions of the hashes that occur more than once (sorting beats hashing here)."""
    ordered = np.sort(hashes)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.isin(hashes, repeated))


def partition_of(hashes: np.ndarray, n: int) -> np.ndarray:
    """The partition (0..n-1) of each hash, from its top bits."""
    return ((hashes >> np.uint64(40)).astype(np.int64) * n >> 24).astype(np.int16)


def repeated_ids(
    parts: list[tuple[Location, ...]],
    offsets: list[int],
    ids_of: Callable[[np.ndarray], dict[int, str]],
    threads: int = 1,
) -> pd.DataFrame:
    """The rows of a file whose id appeared on an earlier line: (source_line, ok, id), in line
    order. `parts` holds each byte range's partition files and `offsets` their first lines;
    `ids_of(lines)` reads the trimmed ids of those lines back from the file. Partitions are
    checked on `threads` threads."""
    with ThreadPoolExecutor(max(1, threads)) as pool:  # numpy sorts outside the GIL
        found = [
            rows
            for rows in pool.map(
                lambda p: _repeats_in(p, parts, offsets, ids_of), range(len(parts[0]))
            )
            if rows is not None
        ]
    if not found:
        return pd.DataFrame(
            {
                "source_line": pd.Series([], dtype="int64"),
                "ok": pd.Series([], dtype=bool),
                "id": pd.Series([], dtype=object),
            }
        )
    repeated = pd.concat(found, ignore_index=True).sort_values("line", ignore_index=True)
    return repeated.rename(columns={"line": "source_line"})[["source_line", "ok", "id"]]


def duplicate_records(source: str, repeats: pd.DataFrame, lines: LineReader) -> pa.Table:
    """Quarantine records of the repeated ids (see repeated_ids), with their lines' text."""
    fields = lines.fields(repeats["source_line"].to_numpy())
    rows = pd.DataFrame(
        [fields[line] for line in repeats["source_line"]], columns=list(lines.file.header)
    )
    frame = pd.DataFrame(
        {
            "source_file": source,
            "source_line": repeats["source_line"].to_numpy(),
            "column": lines.id_column,
            "reason": "duplicate key",
            "detail": [duplicate_detail(lines.id_column, value) for value in repeats["id"]],
            "raw": as_csv_lines(rows),
        }
    )
    return quarantine_table(frame)
