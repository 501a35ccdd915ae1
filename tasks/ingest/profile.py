"""Profile and drift: summary statistics of the accepted data, and how far the new data has moved
from the champion's training data.

The profile's count, mean and std come from the float64 statistics pass 1 sums anyway; min and
max are tracked exactly; the quantiles come from a uniform sample of the rows (exact up to
PROFILE_SAMPLE_ROWS rows), chosen by a hash of the id so that it is the same whatever the order
or grouping of the rows.

Drift measure: the standardized mean shift |mean_new - mean_ref| / std_ref per column. A shift
above the threshold (default 0.5: half a reference standard deviation) is flagged. Drift is
reported, never acted on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tasks.ingest.split import mix64
from tasks.ingest.stats import Moments

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
PROFILE_SAMPLE_ROWS = 1 << 17
_SAMPLE_SALT = np.uint64(0x5EED5A3B1E5A3B1E)
NO_KEY = np.uint64(2**64 - 1)


class BottomK:
    """A uniform sample: the rows with the k smallest sample keys, exact (all rows) up to k
    rows. `rows` is a numpy array or a DataFrame, row-aligned with `keys`. Rows that may enter
    wait in a pending list and are selected together once there are k/2 of them, so that adding
    a few rows to a full sample costs a few rows, not k."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._keys = np.zeros(0, np.uint64)
        self._rows: np.ndarray | pd.DataFrame | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray | pd.DataFrame]] = []
        self._waiting = 0

    @property
    def threshold(self) -> np.uint64:
        """Keys at or above this cannot enter (the largest kept key once full)."""
        return self._keys.max() if len(self._keys) >= self.k else NO_KEY

    @property
    def keys(self) -> np.ndarray:
        self._select()
        return self._keys

    @property
    def rows(self) -> np.ndarray | pd.DataFrame | None:
        self._select()
        return self._rows

    def add(self, keys: np.ndarray, rows: np.ndarray | pd.DataFrame) -> None:
        if len(self._keys) >= self.k:
            pick = np.flatnonzero(keys < self.threshold)
            keys, rows = keys[pick], _take(rows, pick)
            if not len(keys):
                return
        self._pending.append((keys, rows))
        self._waiting += len(keys)
        if self._waiting >= max(1, self.k // 2):
            self._select()

    def _select(self) -> None:
        if not self._pending:
            return
        parts = self._pending if self._rows is None else [(self._keys, self._rows), *self._pending]
        keys = np.concatenate([part[0] for part in parts])
        rows = _concat([part[1] for part in parts])
        if len(keys) > self.k:
            keep = np.argpartition(keys, self.k - 1)[: self.k]
            keys, rows = keys[keep], _take(rows, keep)
        self._keys, self._rows = keys, rows
        self._pending, self._waiting = [], 0

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


def _concat(parts: list[np.ndarray | pd.DataFrame]) -> np.ndarray | pd.DataFrame:
    if isinstance(parts[0], pd.DataFrame):
        return pd.concat(parts, ignore_index=True)
    return np.concatenate(parts)


def sample_keys(hashes: np.ndarray) -> np.ndarray:
    """Sample keys from the rows' id hashes, independent of the split (which takes the rows
    with the small hashes)."""
    return mix64(np.asarray(hashes, dtype=np.uint64) ^ _SAMPLE_SALT)


@dataclass
class ProfileSketch:
    """Exact min and max per column and a BottomK sample for the quantiles; sketches of
    disjoint rows merge, whatever their order."""

    columns: tuple[str, ...]
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    sample: BottomK = field(default_factory=lambda: BottomK(PROFILE_SAMPLE_ROWS))

    def add(
        self,
        values: np.ndarray,
        keys: np.ndarray,
        below: np.uint64 = NO_KEY,
        extra: np.ndarray | None = None,
    ) -> None:
        """Add rows (values [N, columns], sample keys [N]); rows whose key is at or above
        `below` (a threshold the whole sample is already below) are not needed. `extra`
        columns ride along in the sample (the report's split flag)."""
        if not len(values):
            return
        low, high = values.min(axis=0), values.max(axis=0)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)
        rows = values if extra is None else np.column_stack([values, extra])
        if below != NO_KEY:
            pick = np.flatnonzero(keys < below)
            rows, keys = rows[pick], keys[pick]
        self.sample.add(keys, np.ascontiguousarray(rows))

    def absorb(self, other: ProfileSketch) -> None:
        """Add another sketch's rows to this one, in place."""
        if other.low is None:
            return
        self.low = other.low if self.low is None else np.minimum(self.low, other.low)
        self.high = other.high if self.high is None else np.maximum(self.high, other.high)
        rows = other.sample.rows
        if rows is not None:
            self.sample.add(other.sample.keys, rows)

    def merge(self, other: ProfileSketch) -> ProfileSketch:
        if other.low is None:
            return self
        if self.low is None:
            return other
        return ProfileSketch(
            self.columns,
            np.minimum(self.low, other.low),
            np.maximum(self.high, other.high),
            self.sample.merge(other.sample),
        )


def profile_table(sketch: ProfileSketch, moments: Moments) -> pd.DataFrame:
    """The profile table: count, mean, std (ddof=1), min, p05..p95, max per column, from the
    sketch and the statistics of the same rows (features in x, targets in y)."""
    n = moments.n
    means = np.concatenate([moments.mean_x, moments.mean_y])
    spreads = np.concatenate([np.diag(moments.sxx), moments.syy])
    records = []
    for i, column in enumerate(sketch.columns):
        if n:
            mean = means[i]
            std = math.sqrt(spreads[i] / (n - 1)) if n > 1 else np.nan
            quantiles = np.quantile(sketch.sample.rows[:, i], QUANTILES)
            low, high = sketch.low[i], sketch.high[i]
        else:
            mean = std = low = high = np.nan
            quantiles = [np.nan] * len(QUANTILES)
        records.append(
            {
                "column": column,
                "count": n,
                "mean": mean,
                "std": std,
                "min": low,
                **{f"p{round(q * 100):02d}": v for q, v in zip(QUANTILES, quantiles, strict=True)},
                "max": high,
            }
        )
    return pd.DataFrame.from_records(records)


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
