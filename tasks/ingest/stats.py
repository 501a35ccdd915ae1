"""Sufficient statistics of linear least squares, in float64: what training, the metrics, the
promotion gate and the scaler need, summed over the rows once. Partial statistics of disjoint
row sets add up (blocks, files, processes, machines). No torch here: both the pass over the rows
and the training import this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """n, sum x [d], sum y [k], X^T X [d, d], X^T y [d, k], and sum y^2 per target [k]."""

    n: int
    sum_x: np.ndarray
    sum_y: np.ndarray
    xtx: np.ndarray
    xty: np.ndarray
    yty: np.ndarray

    def __add__(self, other: Moments) -> Moments:
        return Moments(
            self.n + other.n,
            self.sum_x + other.sum_x,
            self.sum_y + other.sum_y,
            self.xtx + other.xtx,
            self.xty + other.xty,
            self.yty + other.yty,
        )

    @staticmethod
    def zero(d: int, k: int) -> Moments:
        return moments_of(np.zeros((0, d)), np.zeros((0, k)))


def moments_of(X: np.ndarray, y: np.ndarray) -> Moments:
    """One pass over X [N, d] and y [N, k], accumulated in float64."""
    X64 = np.asarray(X, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    if X64.ndim != 2 or y64.ndim != 2 or len(X64) != len(y64):
        raise ValueError(f"expected X [N, d] and y [N, k], got {X64.shape} and {y64.shape}")
    return moments_of_columns(np.asfortranarray(np.hstack([X64, y64])), X64.shape[1])


def moments_of_columns(values: np.ndarray, d: int) -> Moments:
    """The same from one float64 array [N, d + k] of features then targets: one product
    values^T values gives X^T X, X^T y and y^T y (column-major arrays sum fastest)."""
    gram = values.T @ values
    sums = values.sum(axis=0)
    return Moments(
        len(values), sums[:d], sums[d:], gram[:d, :d], gram[:d, d:], np.diag(gram)[d:].copy()
    )


def sum_moments(parts: list[Moments]) -> Moments:
    """The statistics of all rows of `parts` (at least one)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def centred_moments(m: Moments) -> tuple[np.ndarray, ...]:
    """(mean x [d], mean y [k], Sxx [d, d], Sxy [d, k], Syy [k]): sums of products of
    deviations from the means."""
    mean_x, mean_y = m.sum_x / m.n, m.sum_y / m.n
    sxx = m.xtx - m.n * np.outer(mean_x, mean_x)
    sxy = m.xty - m.n * np.outer(mean_x, mean_y)
    syy = m.yty - m.n * mean_y * mean_y
    return mean_x, mean_y, sxx, sxy, syy


def moments_mse(m: Moments, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MSE per target [k] of the model (W [k, d], b [k]) on the rows summed in `m`, without
    the rows: the quadratic form in centred statistics."""
    mean_x, mean_y, sxx, sxy, syy = centred_moments(m)
    bias = mean_x @ W.T + b - mean_y
    sse = ((W @ sxx) * W).sum(1) - 2 * (W * sxy.T).sum(1) + syy + m.n * bias * bias
    return np.maximum(sse, 0.0) / m.n


def least_squares_of_moments(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares optimum (W [k, d], b [k]) from the statistics (centred normal
    equations, float64)."""
    mean_x, mean_y, sxx, sxy, _ = centred_moments(m)
    scale = np.sqrt(np.maximum(np.diag(sxx), np.finfo(np.float64).tiny))
    solution, *_ = np.linalg.lstsq(sxx / np.outer(scale, scale), sxy / scale[:, None], rcond=None)
    W = (solution / scale[:, None]).T
    return W, mean_y - W @ mean_x


@dataclass(frozen=True)
class Scaler:
    """Per-feature mean and standard deviation of the training rows (float64)."""

    mean: np.ndarray
    std: np.ndarray


def scaler_of_moments(m: Moments) -> Scaler:
    """Mean and std (ddof=0) of the features from their moments; a constant column keeps 1."""
    mean, _, sxx, _, _ = centred_moments(m)
    std = np.sqrt(np.maximum(np.diag(sxx) / m.n, 0.0))
    return Scaler(mean, np.where(std > 0, std, 1.0))
