"""Sufficient statistics of linear least squares, in float64: what training, the metrics, the
promotion gate and the scaler need, gathered over the rows once. Partial statistics of disjoint
row sets merge (blocks, files, processes, machines). No torch here: both the pass over the rows
and the training import this module.

The statistics are a QR factor, never the normal equations: each block's rows are centred on
the block's own means and factored (Householder QR, LAPACK's dgeqrf), and two blocks merge by
factoring their stacked factors plus one row for the spread between their means (TSQR with the
exact pairwise update of Chan, Golub and LeVeque). Sums of products X^T X would square the
condition number of the design (Longley, polynomial features); sums of raw squares would cancel
to nothing for a column whose offset dwarfs its spread (a year, epoch milliseconds, targets
around 1e6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The smallest singular value of the features' scaled factor (each column scaled to unit
# length: the square root of the correlation matrix's smallest eigenvalue) below which they are
# collinear: a condition number above ~1e10, where float64 least squares keeps fewer than about
# six digits (NIST's Filip, a degree-10 polynomial, is 8e-10 and is solved to 7.9).
COLLINEAR_SINGULAR_VALUE = 1e-10
# A squared error below this share of the targets' squares is an exact fit as far as float64
# can tell (the residuals' rounding, ~1e-32 of them, with room): no residual variance for the
# inference, a loss floor for the descent's certificate, one model for the promotion gate.
EXACT_FIT_SHARE = 1e-20


@dataclass(frozen=True)
class Moments:
    """The statistics of n rows of d features x then k targets y: a row of the data (origin
    [d + k]), the means' offsets from it (offset [d + k]), and `r` [d + k, d + k], the upper
    triangular factor of the rows' deviations from their means, [X - mean_x, y - mean_y] = Q r,
    its diagonal >= 0. Means held as offsets from a value of the data are rounded to the size of
    the columns' spread, not to the size of the columns: two blocks' means of epoch
    milliseconds differ exactly. r^T r holds the sums of products of deviations (Sxx, Sxy, Syy),
    which are derived from it, never summed."""

    n: int
    origin: np.ndarray
    offset: np.ndarray
    r: np.ndarray
    d: int

    @property
    def mean_x(self) -> np.ndarray:
        return (self.origin + self.offset)[: self.d]

    @property
    def mean_y(self) -> np.ndarray:
        return (self.origin + self.offset)[self.d :]

    @property
    def sxx(self) -> np.ndarray:
        """Sums of products of the features' deviations [d, d]."""
        return self.r[:, : self.d].T @ self.r[:, : self.d]

    @property
    def sxy(self) -> np.ndarray:
        """Sums of products of the features' and the targets' deviations [d, k]."""
        return self.r[:, : self.d].T @ self.r[:, self.d :]

    @property
    def syy(self) -> np.ndarray:
        """Sums of squares of each target's deviations [k]."""
        return (self.r[:, self.d :] ** 2).sum(axis=0)

    def __add__(self, other: Moments) -> Moments:
        """The statistics of both row sets: the factor of the stacked factors and the spread
        between the two means, weighted by sqrt(n_a n_b / n) (the deviations about the merged
        mean are each part's plus that spread)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        # origins of one column are near each other where its offset dwarfs its spread, so
        # their difference is exact; the offsets are of the spread's size
        delta = (other.origin - self.origin) + (other.offset - self.offset)
        spread = np.sqrt(self.n * other.n / n) * delta
        stacked = np.vstack([self.r, other.r, spread[None, :]])
        return Moments(
            n, self.origin, self.offset + delta * (other.n / n), _triangular_factor(stacked), self.d
        )

    @staticmethod
    def zero(d: int, k: int) -> Moments:
        none = np.zeros(d + k)
        return Moments(0, none, none.copy(), np.zeros((d + k, d + k)), d)


def _triangular_factor(rows: np.ndarray) -> np.ndarray:
    """R [m, m] of rows [N, m] = Q R (any N), upper triangular with a diagonal >= 0. Householder
    QR (LAPACK dgeqrf) in place: a column-major float64 `rows` is overwritten, so callers pass
    arrays they own (a copy is made of any other)."""
    from scipy.linalg import lapack  # the first block pays the import, not every command

    n, m = rows.shape
    if n == 0:
        return np.zeros((m, m))
    packed, _, _, info = lapack.dgeqrf(np.asfortranarray(rows, dtype=np.float64), overwrite_a=1)
    if info != 0:
        raise ValueError(f"QR factorization failed (LAPACK dgeqrf info={info})")
    r = np.zeros((m, m))
    top = min(n, m)
    r[:top] = np.triu(packed[:top])
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return r * signs[:, None]


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
    mean; the deviations are factored in place (column-major arrays are not copied)."""
    if len(values) == 0:
        return Moments.zero(d, values.shape[1] - d)
    origin = values[0].copy()
    deviations = values - origin
    offset = deviations.mean(axis=0)
    deviations -= offset
    return Moments(len(values), origin, offset, _triangular_factor(deviations), d)


def sum_moments(parts: list[Moments]) -> Moments:
    """The statistics of all rows of `parts` (at least one)."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def moments_mse(m: Moments, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MSE per target [k] of the model (W [k, d], b [k]) on the rows summed in `m`, without
    the rows: ||r_x w - r_y||^2 per target (the centred residuals, through the factor) plus the
    error at the means."""
    bias = m.mean_x @ W.T + b - m.mean_y
    centred = m.r[:, : m.d] @ W.T - m.r[:, m.d :]
    sse = (centred * centred).sum(axis=0) + m.n * bias * bias
    return sse / m.n


def column_scale(m: Moments) -> np.ndarray:
    """The length of each feature's centred column (1 for a constant one): dividing the
    factor's columns by it gives the factor of the correlation matrix."""
    length = np.sqrt((m.r[:, : m.d] ** 2).sum(axis=0))
    return np.where(length > 0, length, 1.0)


def features_svd(m: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scale, U, s, Vt): the SVD of the features' factor with its columns scaled to unit length
    (column_scale), whose singular values are the square roots of the correlation matrix's
    eigenvalues. One rank rule for every solve: directions with s <= COLLINEAR_SINGULAR_VALUE
    are not spanned (least squares, the preconditioner, the inference and the polish agree)."""
    scale = column_scale(m)
    U, singular, Vt = np.linalg.svd(m.r[: m.d, : m.d] / scale)
    return scale, U, singular, Vt


def least_squares_of_moments(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares optimum (W [k, d], b [k]) from the factor: the triangular system
    r_xx w = r_xy by back substitution (accurate term by term, also for coefficients of very
    different sizes), or, when the features are collinear (see features_svd), the minimum-norm
    solution on the directions they span; float64."""
    from scipy.linalg import solve_triangular

    d = m.d
    r_xy = m.r[:d, d:]
    k = r_xy.shape[1]
    if not (np.isfinite(m.r).all()):
        return np.full((k, d), np.nan), np.full(k, np.nan)
    scale, U, singular, Vt = features_svd(m)
    if singular.min() > COLLINEAR_SINGULAR_VALUE:
        solution = solve_triangular(m.r[:d, :d] / scale, r_xy, check_finite=False)
    else:
        spanned = singular > COLLINEAR_SINGULAR_VALUE
        inverse = np.where(spanned, 1.0 / np.where(spanned, singular, 1.0), 0.0)
        solution = Vt.T @ (inverse[:, None] * (U.T @ r_xy))
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
    std = np.sqrt((m.r[:, : m.d] ** 2).sum(axis=0) / max(m.n, 1))
    return Scaler(m.mean_x, np.where(std > 0, std, 1.0))
