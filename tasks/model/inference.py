"""Inference of least squares on the training split: the coefficient covariance (classical, from
the float64 sufficient statistics; HC1 robust, from one more sum over the training rows),
standard errors, t statistics, two-sided p-values, confidence intervals, the F test, and
prediction intervals for new rows.

Everything is computed in coordinates centred on the training means (the intercept there is
the mean prediction, and X^T X is block diagonal: the centred Sxx and n), then mapped to the raw
scale the weights are published on. Sxx^-1 comes from the statistics' QR factor (R^-1 R^-T),
never from inverting the sums of products, which would square the condition number.
Degenerate data (too few rows, a constant or collinear feature, a target fitted exactly) leaves
the affected numbers NaN with a note saying why; the point estimates do not depend on any of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.ingest.stats import (
    COLLINEAR_SINGULAR_VALUE,
    EXACT_FIT_SHARE,
    Moments,
    column_scale,
    features_svd,
    least_squares_of_moments,
)

# A feature whose standard deviation is at most this share of its root mean square is
# constant as far as float64 values can tell: their own rounding (~1e-16 of their size) would
# be 1e-4 of its spread.
CONSTANT_SPREAD = 1e-12


@dataclass(frozen=True)
class Inference:
    """Per target (first axis): the least-squares estimate [k, p + 1] (features in order, then
    the intercept), its classical and HC1 covariance [k, p + 1, p + 1], the residual variance
    sse / dof, the F test of all features, and a note where the numbers are undefined (NaN)."""

    estimate: np.ndarray
    covariance: np.ndarray
    robust_covariance: np.ndarray
    residual_variance: np.ndarray
    adj_r2: np.ndarray
    f_stat: np.ndarray
    f_p_value: np.ndarray
    dof: int
    confidence: float
    notes: tuple[str | None, ...]

    @property
    def std_error(self) -> np.ndarray:
        return np.sqrt(np.diagonal(self.covariance, axis1=1, axis2=2))

    @property
    def robust_std_error(self) -> np.ndarray:
        # the HC sandwich of very ill-conditioned features (cond ~1e9: NIST's Filip) can round
        # to a negative variance: that error is NaN, not a warning on the terminal
        with np.errstate(invalid="ignore"):
            return np.sqrt(np.diagonal(self.robust_covariance, axis1=1, axis2=2))

    @property
    def t_stat(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.estimate / self.std_error

    @property
    def p_value(self) -> np.ndarray:
        return 2.0 * _special().stdtr(self.dof, -np.abs(self.t_stat))

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) [k, p + 1]: the estimate -/+ the t quantile times the standard error."""
        half = t_quantile(self.confidence, self.dof) * self.std_error
        return self.estimate - half, self.estimate + half


def _special() -> Any:
    """scipy.special, imported on first use: the t and F distribution functions themselves
    (0.16 s to import, against 1 s for scipy.stats, which wraps the same functions)."""
    from scipy import special

    return special


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student t quantile of a confidence level (NaN without degrees of freedom)."""
    if dof < 1:
        return float("nan")
    return float(_special().stdtrit(dof, 0.5 + confidence / 2.0))


def meat_of_rows(X: np.ndarray, residuals: np.ndarray, mean_x: np.ndarray) -> np.ndarray:
    """sum_i e_ij^2 a_i a_i^T per target j, a_i = [x_i - mean_x, 1]: [k, p + 1, p + 1] (the
    middle of the HC sandwich; sums of disjoint rows add up)."""
    A = np.empty((len(X), X.shape[1] + 1), order="F")
    A[:, :-1] = X - mean_x
    A[:, -1] = 1.0
    return np.stack([(A * (e * e)[:, None]).T @ A for e in residuals.T])


def infer(
    m: Moments,
    sse: np.ndarray,
    meat: np.ndarray,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    confidence: float,
    optimum: tuple[np.ndarray, np.ndarray] | None = None,
) -> Inference:
    """Inference of the least-squares fit on the rows summed in `m`, given the fit's residual
    sum of squares per target (`sse`, summed over the rows) and the HC meat (meat_of_rows, with
    the same rows' means). The estimate is `optimum` (W, b) where training polished it over the
    rows, else the factor's solve."""
    n, p, k = m.n, len(features), len(targets)
    dof = n - p - 1
    mean_x, syy = m.mean_x, m.syy
    W, b = least_squares_of_moments(m) if optimum is None else optimum
    estimate = np.column_stack([W, b])
    problem = degeneracy(m, features)
    # the residuals are computed on the raw targets, so their rounding scales with sum y^2
    squares_y = syy + m.n * m.mean_y * m.mean_y
    exact = sse <= EXACT_FIT_SHARE * np.maximum(squares_y, np.finfo(np.float64).tiny)
    notes = tuple(
        problem
        or (f"zero residual variance: the features fit {target} exactly" if exact[j] else None)
        for j, target in enumerate(targets)
    )
    nan = np.full((k, p + 1, p + 1), np.nan)
    variance = sse / dof if dof > 0 else np.full(k, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        adj_r2 = 1.0 - variance / (syy / (n - 1)) if n > 1 else np.full(k, np.nan)
        f_stat = ((syy - sse) / p) / variance
    if problem is not None:
        return Inference(
            estimate, nan, nan.copy(), variance, adj_r2, np.full(k, np.nan), np.full(k, np.nan),
            dof, confidence, notes,
        )  # fmt: skip
    bread = np.zeros((p + 1, p + 1))
    bread[:p, :p] = _inverse_gram(m)
    bread[p, p] = 1.0 / n
    to_raw = np.eye(p + 1)
    to_raw[p, :p] = -mean_x  # b = b_centred - w . mean_x
    covariance = np.stack([to_raw @ (s2 * bread) @ to_raw.T for s2 in variance])
    robust = np.stack([n / dof * to_raw @ bread @ mj @ bread @ to_raw.T for mj in meat])
    defined = ~exact
    covariance[~defined] = np.nan
    robust[~defined] = np.nan
    f_stat = np.where(defined, f_stat, np.nan)
    f_p = np.where(defined, _special().fdtrc(p, dof, f_stat), np.nan)
    return Inference(
        estimate, covariance, robust, variance, adj_r2, f_stat, f_p, dof, confidence, notes
    )


def _inverse_gram(m: Moments) -> np.ndarray:
    """Sxx^-1 = R^-1 R^-T from the features' factor R, its columns scaled to unit length for
    the solve (the scales apart, for conditioning)."""
    scale = column_scale(m)
    inverse = np.linalg.solve(m.r[: m.d, : m.d] / scale, np.eye(m.d))
    return (inverse @ inverse.T) / np.outer(scale, scale)


def degeneracy(m: Moments, features: tuple[str, ...]) -> str | None:
    """Why the training rows cannot carry inference (for every target), or None."""
    p = len(features)
    if m.n < p + 2:
        return (
            f"only {m.n} training rows for {p + 1} parameters: standard errors need at least "
            f"{p + 2} (n - p - 1 >= 1 degrees of freedom)"
        )
    spread = np.diag(m.sxx)
    squares = spread + m.n * m.mean_x * m.mean_x
    floor = CONSTANT_SPREAD**2 * np.maximum(squares, np.finfo(np.float64).tiny)
    constant = [f for f, s, low in zip(features, spread, floor, strict=True) if s <= low]
    if constant:
        return (
            f"constant on the training rows: {', '.join(constant)} (no variation to estimate from)"
        )
    _, _, singular, vectors = features_svd(m)
    if singular[-1] < COLLINEAR_SINGULAR_VALUE:
        involved = [f for f, v in zip(features, vectors[-1], strict=True) if abs(v) > 1e-3]
        return (
            f"collinear on the training rows: {', '.join(involved)} (one is a linear "
            f"combination of the others to {singular[-1]:.1g} of their scale); drop one of them"
        )
    return None


def prediction_interval(
    X: np.ndarray,
    predicted: np.ndarray,
    covariance: np.ndarray,
    residual_variance: np.ndarray,
    dof: int,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) [N, k] for new observations at X [N, p]: the prediction -/+ the t quantile
    times sqrt(residual variance + a^T C a), a = [x, 1], C the raw-scale covariance."""
    A = np.column_stack([X, np.ones(len(X))])
    pairs = zip(covariance, residual_variance, strict=True)
    spread = np.stack([((A @ C) * A).sum(axis=1) + s2 for C, s2 in pairs], axis=1)
    half = t_quantile(confidence, dof) * np.sqrt(np.maximum(spread, 0.0))
    return predicted - half, predicted + half
