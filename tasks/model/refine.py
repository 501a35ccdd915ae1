"""The last digits of a trained model: Newton steps of least squares whose gradient is summed
over the raw training rows in extended precision (numpy's longdouble, 64-bit mantissa on x86),
solved with the statistics' float64 QR factor.

float64 least squares, by any factorization, loses about eps * cond^2 * |residual| / |fit| of
each coefficient: on NIST's Wampler5 (noise 1e6 times the signal of the low powers) the centring
and the factor keep 5.8 digits. The gradient at the trained weights, summed in extended
precision from the rows as they are (exact float64 values, not centred copies), points at the
exact optimum; one step with the factor's Hessian (the preconditioned gradient step training
takes, lr 1/L) removes all but eps * cond^2 of the error, a second what rounding left: 9.4 digits
on Wampler5, 11.8 on Wampler4. The rows must be at hand, so the direct solver takes these steps.
"""

from __future__ import annotations

import numpy as np

from tasks.ingest.stats import COLLINEAR_SINGULAR_VALUE, Moments, features_svd

STEPS = 2
# The largest error shrink per step the polish accepts (see refine).
CONTRACTION = 1e-2


def refine(
    X: np.ndarray, y: np.ndarray, m: Moments, W: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(W [k, d], b [k]) moved by STEPS Newton steps towards the least-squares optimum of the
    rows X [N, d], y [N, k] (whose statistics are `m`), or None where the factor cannot take
    them (collinear or too ill-conditioned features, non-finite values)."""
    from scipy.linalg import solve_triangular

    if not np.isfinite(m.r).all():
        return None
    scale, _, singular, _ = features_svd(m)
    if singular.min() <= COLLINEAR_SINGULAR_VALUE:
        return None
    # each step shrinks the error by about eps * cond^2 (the factor's own rounding): past
    # CONTRACTION it would not converge (Filip, cond 1e9), and the factor's solve is kept
    if np.finfo(np.float64).eps * (singular.max() / singular.min()) ** 2 > CONTRACTION:
        return None
    factor = m.r[: m.d, : m.d] / scale
    rows, targets = X.astype(np.longdouble), y.astype(np.longdouble)
    weights, intercept = W.T.astype(np.longdouble), b.astype(np.longdouble)
    for _ in range(STEPS):
        residual = targets - rows @ weights - intercept  # [N, k]
        total = residual.sum(axis=0)
        # the gradient in coordinates centred on the means: sum (x_i - mean) r_i
        centred = rows.T @ residual - np.outer(m.mean_x, total)
        # Sxx^-1 g with Sxx = R^T R, the columns scaled apart for the solves
        half = solve_triangular(factor.T, centred.astype(np.float64) / scale[:, None], lower=True)
        step = solve_triangular(factor, half) / scale[:, None]  # [d, k]
        weights += step.astype(np.longdouble)
        intercept += (total.astype(np.float64) / m.n - m.mean_x @ step).astype(np.longdouble)
    refined = weights.T.astype(np.float64), intercept.astype(np.float64)
    return refined if all(np.isfinite(part).all() for part in refined) else None
