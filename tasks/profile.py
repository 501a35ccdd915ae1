"""Profile and drift: summary statistics of the accepted data, and how far the new data has moved
from the champion's training data.

Drift measure: the standardized mean shift |mean_new - mean_ref| / std_ref per column. A shift
above the threshold (default 0.5: half a reference standard deviation) is flagged. Drift is
reported, never acted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks.split import mix64

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Rows kept for the quantiles: exact up to this many accepted rows, estimated from a uniform
# sample of this size above it (rank error about 0.1 percentile point).
PROFILE_SAMPLE_ROWS = 1 << 17
_SAMPLE_SALT = np.uint64(0x5EED5A3B1E5A3B1E)


@dataclass
class BottomK:
    """A uniform sample: the rows with the k smallest sample keys (a hash of the id), so it is
    the same whatever the order or grouping of the rows, and exact (all rows) up to k rows.
    `rows` is a numpy array or a DataFrame, row-aligned with `keys`."""

    k: int
    keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    rows: np.ndarray | pd.DataFrame | None = None

    def add(self, keys: np.ndarray, rows: np.ndarray | pd.DataFrame) -> None:
        if len(self.keys) >= self.k:  # full: only keys below the largest kept can enter
            pick = np.flatnonzero(keys < self.keys.max())
            keys, rows = keys[pick], _take(rows, pick)
        if not len(keys) and self.rows is not None:
            return
        if self.rows is not None:
            keys = np.concatenate([self.keys, keys])
            rows = _concat(self.rows, rows)
        if len(keys) > self.k:
            keep = np.argpartition(keys, self.k - 1)[: self.k]
            keys, rows = keys[keep], _take(rows, keep)
        self.keys, self.rows = keys, rows

    def merge(self, other: BottomK) -> BottomK:
        merged = BottomK(self.k)
        for part in (self, other):
            if part.rows is not None:
                merged.add(part.keys, part.rows)
        return merged


def _take(rows: np.ndarray | pd.DataFrame, index: np.ndarray) -> np.ndarray | pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        return rows.iloc[index].reset_index(drop=True)
    return rows[index]


def _concat(a: np.ndarray | pd.DataFrame, b: np.ndarray | pd.DataFrame):
    if isinstance(a, pd.DataFrame):
        return pd.concat([a, b], ignore_index=True)
    return np.concatenate([a, b])


def sample_keys(hashes: np.ndarray) -> np.ndarray:
    """Sample keys from the rows' id hashes, independent of the split (which takes the rows
    with the small hashes)."""
    return mix64(np.asarray(hashes, dtype=np.uint64) ^ _SAMPLE_SALT)


@dataclass
class ProfileSketch:
    """Exact count, mean, variance (Chan's parallel update), min and max per column, and a
    BottomK sample for the quantiles; sketches of disjoint rows merge."""

    columns: tuple[str, ...]
    n: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    sample: BottomK = field(default_factory=lambda: BottomK(PROFILE_SAMPLE_ROWS))

    def add(self, values: np.ndarray, keys: np.ndarray) -> None:
        if not len(values):
            return
        mean = values.mean(axis=0)
        part = ProfileSketch(
            self.columns,
            len(values),
            mean,
            ((values - mean) ** 2).sum(axis=0),
            values.min(axis=0),
            values.max(axis=0),
            BottomK(self.sample.k),
        )
        part.sample.add(keys, values)
        merged = self.merge(part)
        vars(self).update(vars(merged))

    def merge(self, other: ProfileSketch) -> ProfileSketch:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return ProfileSketch(
            self.columns,
            n,
            self.mean + delta * other.n / n,
            self.m2 + other.m2 + delta * delta * self.n * other.n / n,
            np.minimum(self.low, other.low),
            np.maximum(self.high, other.high),
            self.sample.merge(other.sample),
        )

    def frame(self) -> pd.DataFrame:
        """The profile table (see tasks.profile.profile_frame): count, mean, std (ddof=1),
        min, p05..p95, max."""
        records = []
        for i, column in enumerate(self.columns):
            if self.n:
                values = self.sample.rows[:, i]
                quantiles = np.quantile(values, QUANTILES)
                stats = (
                    self.mean[i],
                    math.sqrt(self.m2[i] / (self.n - 1)) if self.n > 1 else np.nan,
                )
                low, high = self.low[i], self.high[i]
            else:
                quantiles, stats, low, high = (
                    [np.nan] * len(QUANTILES),
                    (np.nan, np.nan),
                    np.nan,
                    np.nan,
                )
            records.append(
                {
                    "column": column,
                    "count": self.n,
                    "mean": stats[0],
                    "std": stats[1],
                    "min": low,
                    **{
                        f"p{round(q * 100):02d}": v
                        for q, v in zip(QUANTILES, quantiles, strict=True)
                    },
                    "max": high,
                }
            )
        return pd.DataFrame.from_records(records)


def profile_frame(
    frame: pd.DataFrame, columns: list[str], keys: np.ndarray | None = None
) -> pd.DataFrame:
    """The profile of `columns` of `frame` (see ProfileSketch.frame). `keys` (one uint64 per
    row, e.g. sample_keys of the id hashes) choose the quantile sample above
    PROFILE_SAMPLE_ROWS rows; by default the row positions do."""
    sketch = ProfileSketch(tuple(columns))
    if keys is None:
        keys = sample_keys(np.arange(len(frame), dtype=np.uint64))
    sketch.add(frame[columns].to_numpy(dtype=np.float64), keys)
    return sketch.frame()


def compare_profiles(new: pd.DataFrame, reference: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per column present in both profiles: both means, the reference std, the standardized
    mean shift and whether it exceeds `threshold`."""
    both = new.merge(reference, on="column", suffixes=("_new", "_reference"))
    std = both["std_reference"].where(both["std_reference"] > 0)
    shift = (both["mean_new"] - both["mean_reference"]).abs() / std
    return pd.DataFrame(
        {
            "column": both["column"],
            "mean_new": both["mean_new"],
            "mean_reference": both["mean_reference"],
            "std_reference": both["std_reference"],
            "mean_shift": shift,
            "drifted": (shift > threshold).fillna(False).astype(bool),
        }
    )
