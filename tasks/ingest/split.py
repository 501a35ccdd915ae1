"""Split: a deterministic train/holdout assignment per row, keyed on the row's id (or, for files
without an id column, on the row's values).

A row's split depends only on its id (the country) and the seed: the same country lands in the
same split on every run, in every file and whatever its position, so a country whose figures are
updated in a new file is never trained on by one run and held out by the next. The hash is
computed column-wise from the Arrow string buffers (no Python object per row), so the streaming
path hashes a 1M-row batch in milliseconds.
"""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pyarrow as pa

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 that spreads every input bit."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_text(values: pa.Array | pa.ChunkedArray | pd.Series, seed: int) -> np.ndarray:
    """64-bit keyed hash of each string (nulls hash like ''): uint64 [N].

    A polynomial in a seeded odd multiplier r modulo 2^64, sum of byte_i * r^i over the string,
    computed over the whole buffer at once (prefix sums of byte * r^position, rescaled by
    r^-start), then mixed with the length. Equal strings hash equally; duplicates found by hash
    are confirmed on the text.
    """
    if isinstance(values, pd.Series):
        values = pa.array(values.astype(object), type=pa.string(), from_pandas=True)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    values = values.cast(pa.large_string()).fill_null("")
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[
        values.offset : values.offset + n + 1
    ]
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8) if n else np.zeros(0, np.uint8)
    key = int(mix64(np.uint64(seed) ^ _GOLDEN))
    sums = np.zeros(n, dtype=np.uint64)
    first = 0
    while first < n:  # strings in chunks of about _CHUNK_BYTES, so the power tables stay small
        last = int(np.searchsorted(offsets, offsets[first] + _CHUNK_BYTES, side="right")) - 1
        last = min(max(last, first + 1), n)
        base, end = int(offsets[first]), int(offsets[last])
        powers, inverse = _power_tables(key | 1, end - base + 1)
        starts = offsets[first:last] - base
        filled = np.flatnonzero(offsets[first + 1 : last + 1] - base > starts)
        if end > base and len(filled):
            with np.errstate(over="ignore"):
                weighted = data[base:end] * powers[: end - base]
                per_string = np.add.reduceat(weighted, starts[filled], dtype=np.uint64)
                sums[first + filled] = per_string * inverse[starts[filled]]
        first = last
    lengths = np.diff(offsets).astype(np.uint64)
    with np.errstate(over="ignore"):
        return mix64(sums ^ mix64(lengths + np.uint64(key)))


def hash_values(values: np.ndarray, seed: int) -> np.ndarray:
    """64-bit keyed hash of each row of float64 values [N, m] (-0.0 hashes like 0.0; rows
    with a NaN are rejected rows, whatever they hash to): uint64 [N]."""
    h = np.full(len(values), mix64(np.uint64(seed) ^ _GOLDEN), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(values.shape[1]):
            bits = np.ascontiguousarray(values[:, j] + 0.0).view(np.uint64)
            h = mix64(h + bits * np.uint64(2 * j + 1) + _GOLDEN)
    return h


_CHUNK_BYTES = 1 << 20
# One pair of tables (one seed per run), shared by the threads of the process.
_TABLES: dict[int, tuple[np.ndarray, np.ndarray]] = {}
_TABLES_LOCK = threading.Lock()


def _power_tables(r: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """r^i and r^-i modulo 2^64 for i < size (r odd), cached per r."""
    with _TABLES_LOCK:
        cached = _TABLES.get(r)
    if cached is not None and len(cached[0]) >= size:
        return cached
    size = max(size, _CHUNK_BYTES + 1)
    r_inv = r  # Newton's iteration for the inverse of an odd number modulo 2^64
    for _ in range(6):
        r_inv = (r_inv * (2 - r * r_inv)) % 2**64
    tables = []
    for factor in (r, r_inv):
        table = np.full(size, factor, dtype=np.uint64)
        table[0] = 1
        with np.errstate(over="ignore"):
            tables.append(np.cumprod(table, dtype=np.uint64))
    built = (tables[0], tables[1])
    with _TABLES_LOCK:
        _TABLES.clear()
        _TABLES[r] = built
    return built


def unit_interval(hashes: np.ndarray) -> np.ndarray:
    """uint64 hashes -> floats uniform on [0, 1) (the top 53 bits)."""
    return (hashes >> np.uint64(11)).astype(np.float64) / 2.0**53


def holdout_of_hashes(hashes: np.ndarray, holdout_fraction: float) -> np.ndarray:
    """Boolean holdout mask from the rows' id hashes (see hash_text)."""
    return unit_interval(hashes) < holdout_fraction


def split_holdout(
    keys: pa.Array | pa.ChunkedArray | pd.Series, holdout_fraction: float, seed: int
) -> np.ndarray:
    """Boolean mask of holdout rows for the rows' ids (padding already stripped)."""
    return holdout_of_hashes(hash_text(keys, seed), holdout_fraction)
