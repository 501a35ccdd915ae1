"""Sufficient statistics of linear least squares, in float64: what training, the metrics, the
promotion gate and the scaler need, gathered over the rows once. Partial statistics of disjoint
row sets merge (blocks, files, processes, machines). No torch here: both the pass over the rows
and the training import this module.

The statistics are centred: each block's sums of products are taken about the block's own
means, and blocks merge with the exact pairwise update of Chan, Golub and LeVeque. Sums of raw
squares would cancel to nothing for a column whose offset dwarfs its spread (a year, epoch
milliseconds, targets around 1e6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The smallest eigenvalue of the features' correlation matrix below which they are collinear
# (a condition number above ~1e10: standard errors would be rounding noise, and gradient
# descent could not move along that direction in any number of epochs).
COLLINEAR_EIGENVALUE = 1e-10


@dataclass(frozen=True)
class Moments:
    """The statistics of n rows of features x [d] then targets y [k]: a row of the data
    (origin [d + k]), the means' offsets from it (offset [d + k]), and the sums of products of
    deviations from the means, Sxx [d, d], Sxy [d, k] and Syy per target [k]. Means held as
    offsets from a value of the data are rounded to the size of the columns' spread, not to
    the size of the columns: two blocks' means of epoch milliseconds differ exactly."""

    n: int
    origin: np.ndarray
    offset: np.ndarray
    sxx: np.ndarray
    sxy: np.ndarray
    syy: np.ndarray

    @property
    def mean_x(self) -> np.ndarray:
        return (self.origin + self.offset)[: len(self.sxx)]

    @property
    def mean_y(self) -> np.ndarray:
        return (self.origin + self.offset)[len(self.sxx) :]

    def __add__(self, other: Moments) -> Moments:
        """The statistics of both row sets: the sums about the merged mean are each part's
        plus the spread between the two means, weighted by n_a n_b / n."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n, d = self.n + other.n, len(self.sxx)
        # origins of one column are near each other where its offset dwarfs its spread, so
        # their difference is exact; the offsets are of the spread's size
        delta = (other.origin - self.origin) + (other.offset - self.offset)
        dx, dy = delta[:d], delta[d:]
        weight = self.n * other.n / n
        return Moments(
            n,
            self.origin,
            self.offset + delta * (other.n / n),
            self.sxx + other.sxx + weight * np.outer(dx, dx),
            self.sxy + other.sxy + weight * np.outer(dx, dy),
            self.syy + other.syy + weight * dy * dy,
        )

    @staticmethod
    def zero(d: int, k: int) -> Moments:
        none = np.zeros(d + k)
        return Moments(0, none, none.copy(), np.zeros((d, d)), np.zeros((d, k)), np.zeros(k))


def moments_of(X: np.ndarray, y: np.ndarray) -> Moments:
    """The statistics of X [N, d] and y [N, k], in float64."""
    X64 = np.asarray(X, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    if X64.ndim != 2 or y64.ndim != 2 or len(X64) != len(y64):
        raise ValueError(f"expected X [N, d] and y [N, k], got {X64.shape} and {y64.shape}")
    return moments_of_columns(np.asfortranarray(np.hstack([X64, y64])), X64.shape[1])


def moments_of_columns(values: np.ndarray, d: int) -> Moments:
    """The same from one float64 array [N, d + k] of features then targets, in two passes:
    the deviations from the first row (a constant column is exactly zero), then from their
    mean; one product of the deviations gives Sxx, Sxy and Syy (column-major arrays sum
    fastest)."""
    if len(values) == 0:
        return Moments.zero(d, values.shape[1] - d)
    origin = values[0].copy()
    deviations = values - origin
    offset = deviations.mean(axis=0)
    deviations -= offset
    gram = deviations.T @ deviations
    return Moments(
        len(values), origin, offset, gram[:d, :d], gram[:d, d:], np.diag(gram)[d:].copy()
    )


def sum_moments(parts: list[Moments]) -> Moments:
    """The statistics of all rows of `parts` (at least one)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def moments_mse(m: Moments, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MSE per target [k] of the model (W [k, d], b [k]) on the rows summed in `m`, without
    the rows: the quadratic form in the centred statistics plus the error at the means."""
    bias = m.mean_x @ W.T + b - m.mean_y
    sse = ((W @ m.sxx) * W).sum(1) - 2 * (W * m.sxy.T).sum(1) + m.syy + m.n * bias * bias
    return np.maximum(sse, 0.0) / m.n


def least_squares_of_moments(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares optimum (W [k, d], b [k]) from the statistics (centred normal
    equations, float64)."""
    scale = np.sqrt(np.maximum(np.diag(m.sxx), np.finfo(np.float64).tiny))
    gram, right = m.sxx / np.outer(scale, scale), m.sxy / scale[:, None]
    if not (np.isfinite(gram).all() and np.isfinite(right).all()):
        # LAPACK's least squares can loop for ever on NaN
        nan = np.full((m.sxy.shape[1], len(scale)), np.nan)
        return nan, np.full(m.sxy.shape[1], np.nan)
    solution, *_ = np.linalg.lstsq(gram, right, rcond=None)
    W = (solution / scale[:, None]).T
    return W, m.mean_y - W @ m.mean_x


@dataclass(frozen=True)
class Scaler:
    """Per-feature mean and standard deviation of the training rows (float64)."""

    mean: np.ndarray
    std: np.ndarray


def scaler_of_moments(m: Moments) -> Scaler:
    """Mean and std (ddof=0) of the features from their moments; a constant column (its
    deviations are exactly zero) keeps 1."""
    std = np.sqrt(np.diag(m.sxx) / max(m.n, 1))
    return Scaler(m.mean_x, np.where(std > 0, std, 1.0))
