"""What accepted rows add up to, per batch and merged in block order: float64 statistics of the
train and holdout rows (tasks/ingest/stats.py) and the profile sketch (tasks/ingest/profile.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.params import RunConfig
from tasks.ingest.profile import NO_KEY, ProfileSketch, sample_keys
from tasks.ingest.stats import Moments, moments_of_columns


@dataclass
class BatchStats:
    """The train and holdout statistics and the profile sketch of some accepted rows."""

    train: Moments
    holdout: Moments
    profile: ProfileSketch

    def absorb(self, other: BatchStats) -> None:
        """Merge another batch's statistics into these, in place."""
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
