"""Gradient descent: linear regression y = X @ W.T + b by full-batch descent with torch autograd.

The notebook's loop (loss.backward(), W -= lr * W.grad under no_grad, zero the grads) on the true
per-row MSE, preconditioned so it converges in a few epochs whatever the conditioning of the
data: the weights on standardized features are W = Z P^T, and descent runs on Z, with P the
inverse of the features' QR factor (from the same statistics the run gathers, through its
SVD). In Z the Hessian is the identity up to rounding, so the step 1/L is exact; the loss is
still computed from the rows (or from the factor), never from the normal equations, so the
weights reach the accuracy of a QR solve (the digits the condition number leaves).

This module, objective.py and tensors.py are the torch code: tasks/model/train.py imports them
when a run trains, so importing a flow does not load torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from tasks.common.errors import TrainingError
from tasks.ingest.stats import EXACT_FIT_SHARE, Moments, Scaler, least_squares_of_moments
from tasks.model.objective import (
    Certificate,
    Objective,
    certificate,
    direct_objective,
    exact_certificate,
    moments_objective,
)
from tasks.model.refine import STEPS, refine

# Epochs without any decrease of the loss before training stops. Preconditioned descent reaches
# the rounding floor of the loss in a few epochs; below it the loss no longer decreases while
# the certificate may not hold (float32, or data too ill-conditioned for float64): a stall ends
# training, and only the certificate says whether it converged.
STALL_PATIENCE = 20
# A stalled loss this far above its lowest (relative) has risen, not levelled off: the step is
# too large (at the rounding floor the loss moves by ~1e-13 in float64, ~1e-6 in float32).
DIVERGENCE_RISE = 1e-3


@dataclass
class FitResult:
    """A trained model: raw-scale W [k, d] and b [k] (float64), the standardized ones, the
    scaler, and how training went: the certified relative MSE gap and coefficient error."""

    W: np.ndarray
    b: np.ndarray
    W_std: np.ndarray
    b_std: np.ndarray
    scaler: Scaler
    lr: float
    epochs: int
    converged: bool
    stop_reason: str
    loss_history: list[float] = field(repr=False)
    gap: float = float("nan")
    coefficient_error: float = float("nan")
    # the least-squares optimum polished over the rows (W [k, d], b [k]) where the solver had
    # them (direct); None: the factor's solve is the estimate
    optimum: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


def fit_linear_regression(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float | None = None,
    max_epochs: int,
    tol: float,
    seed: int,
    dtype: torch.dtype | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Gradient descent on the exact MSE, row by row. X [N, d], y [N, k] -> FitResult.

    lr is the step on the preconditioned weights (default 1/L); gradient descent runs in `dtype`
    (default X's). Training stops at the first of three rules (see descend): the certificate
    holds, the loss stalls, or max_epochs. A non-finite loss or gradient raises TrainingError.
    """
    objective = direct_objective(X, y, dtype)
    fit = descend(objective, lr, max_epochs, tol, seed, on_epoch)
    X64, y64 = (t.detach().to(torch.float64).numpy() for t in (X, y))
    optimum = refine(X64, y64, objective.moments, *least_squares_of_moments(objective.moments))
    return replace(polished(objective, fit, X64, y64, tol), optimum=optimum)


def polished(
    objective: Objective, fit: FitResult, X: np.ndarray, y: np.ndarray, tol: float
) -> FitResult:
    """A converged fit with its last digits settled by extended-precision Newton steps over
    the rows (tasks/model/refine.py), if the certificate still holds at the polished weights
    (it is evaluated again there); otherwise the fit as it was."""
    if not fit.converged:
        return fit
    refined = refine(X, y, objective.moments, fit.W, fit.b)
    if refined is None:
        return fit
    W, b = refined
    scaler = objective.scaler
    W_std, b_std = W * scaler.std, b + W @ scaler.mean
    Z = np.linalg.solve(objective.preconditioner.P, W_std.T).T
    b_centred = b_std - objective.target_mean
    final = exact_certificate(objective, torch.from_numpy(Z), torch.from_numpy(b_centred))
    if not final.holds(tol):
        return fit
    reason = f"{fit.stop_reason}; polished by {STEPS} extended-precision Newton steps"
    return replace(
        fit, W=W, b=b, W_std=W_std, b_std=b_std, stop_reason=reason, gap=final.gap,
        coefficient_error=final.coefficients,
    )  # fmt: skip


def fit_from_moments(
    m: Moments,
    *,
    lr: float | None = None,
    max_epochs: int,
    tol: float,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> FitResult:
    """The same gradient descent from sufficient statistics (see moments_objective)."""
    return descend(moments_objective(m), lr, max_epochs, tol, seed, on_epoch)


@dataclass
class Stall:
    """Watches the loss for STALL_PATIENCE epochs in a row without a decrease."""

    best: float = float("inf")
    since_best: int = 0

    def stalled(self, loss: float) -> bool:
        if loss < self.best:
            self.best, self.since_best = loss, 0
        else:
            self.since_best += 1
        return self.since_best >= STALL_PATIENCE


def descend(
    objective: Objective,
    lr: float | None,
    max_epochs: int,
    tol: float,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> FitResult:
    """The notebook's loop on `objective`: loss.backward(), Z -= lr * Z.grad and b -= lr * b.grad
    under no_grad, zero the grads (lr defaults to 1/L, one step to the optimum of an exact
    preconditioner).

    Stops at the first of three rules: `certified` (the certificate holds within tol, in the
    training dtype and then in float64), `stalled` (STALL_PATIENCE epochs without a decrease)
    or `out_of_epochs` (max_epochs). `converged` means the certificate holds at the final
    weights in float64, whichever rule stopped training."""
    lr = 1.0 / objective.preconditioner.L if lr is None else lr
    generator = torch.Generator().manual_seed(seed)
    Z = torch.randn(*objective.shape, generator=generator, dtype=objective.dtype)
    b = torch.randn(objective.shape[0], generator=generator, dtype=objective.dtype)
    Z.requires_grad_(True)
    b.requires_grad_(True)

    history: list[float] = []
    stall = Stall()
    certified = stalled = False
    epoch = 0
    for epoch in range(max_epochs + 1):
        value = _gradient(objective, Z, b, epoch, lr)
        history.append(value)
        if on_epoch is not None:
            on_epoch(epoch, value)
        # the training dtype's certificate is a cheap screen; float64 decides (float32
        # rounding can hide or fake the last digits of the gradient)
        certified = certificate(objective, value, Z, Z.grad, b.grad).holds(tol) and (
            objective.dtype == torch.float64 or exact_certificate(objective, Z, b).holds(tol)
        )
        # once certified, steps go on while they still lower the loss: the last digits of
        # the smaller coefficients settle at the rounding floor, a step or two later
        floor = certified and len(history) > 1 and value >= history[-2]
        stalled = stall.stalled(value)
        # with a step below 2/L every step lowers a quadratic: a loss above the first one, or
        # one that has risen well above its lowest by the time it stalls, is a step too large
        # (it overflows only many epochs later); rounding at the floor moves it far less
        # (an exact fit's loss is all rounding: the rise is measured against at least its
        # floor, EXACT_FIT_SHARE of the targets' variance)
        floor_loss = max(stall.best, EXACT_FIT_SHARE * float(objective.variance.mean()))
        rose = value > stall.best + DIVERGENCE_RISE * floor_loss
        if value > history[0] or (stalled and rose):
            raise TrainingError(
                f"training diverged at epoch {epoch}: the loss rose to {value:.6g} from "
                f"{min(stall.best, history[0]):.6g} (step size lr={lr:g}); lower --lr or leave "
                "it unset"
            )
        if floor or stalled or epoch == max_epochs:
            break
        with torch.no_grad():
            Z -= lr * Z.grad
            b -= lr * b.grad
            Z.grad.zero_()
            b.grad.zero_()

    final = exact_certificate(objective, Z, b)
    reason = _stop_reason(certified, stalled, final, tol, max_epochs, objective)
    return _result(objective, Z, b, lr, epoch, final, final.holds(tol), reason, history)


def _gradient(
    objective: Objective, Z: torch.Tensor, b: torch.Tensor, epoch: int, lr: float
) -> float:
    """The loss at (Z, b), its gradients left in Z.grad and b.grad; TrainingError if the loss
    or a gradient is not finite."""
    loss = objective.loss(Z, b)
    loss.backward()
    value = loss.item()
    grad_sq = float((Z.grad * Z.grad).sum() + (b.grad * b.grad).sum())
    if not (np.isfinite(value) and np.isfinite(grad_sq)):
        raise TrainingError(
            f"training diverged at epoch {epoch}: loss={value}, squared gradient "
            f"norm={grad_sq} (step size lr={lr:g}); lower --lr or leave it unset"
        )
    return value


def _stop_reason(
    certified: bool,
    stalled: bool,
    final: Certificate,
    tol: float,
    max_epochs: int,
    objective: Objective,
) -> str:
    bounds = (
        f"relative MSE gap <= {final.gap:.2g}, coefficients within {final.coefficients:.2g} "
        "of the optimum's (relative)"
    )
    if certified:
        return f"certified: {bounds} (tol={tol:g})"
    rule = f"loss flat for {STALL_PATIENCE} epochs" if stalled else f"reached {max_epochs=}"
    if final.holds(tol):
        return f"{rule}; certified: {bounds} (tol={tol:g})"
    return f"{rule} with {bounds}, above tol={tol:g}: not converged{_hint(stalled, objective)}"


def _hint(stalled: bool, objective: Objective) -> str:
    """What a stalled run can do: train in float64, or ask for the digits the features'
    conditioning leaves (float64 certifies about eps * condition)."""
    if not stalled:
        return ""
    if objective.dtype != torch.float64:
        return " (try --dtype float64)"
    condition = objective.preconditioner.condition
    reachable = 10 * np.finfo(np.float64).eps * condition
    return (
        f" (the features' condition number is {condition:.2g}: float64 certifies about "
        f"{reachable:.0e}; a --tol above that, or fewer or less dependent features)"
    )


def _result(
    objective: Objective,
    Z: torch.Tensor,
    b: torch.Tensor,
    lr: float,
    epochs: int,
    final: Certificate,
    converged: bool,
    reason: str,
    history: list[float],
) -> FitResult:
    """The trained (Z, b), trained on standardized features and centred targets, mapped back
    to the weights (W = Z P^T), to the targets' scale (standardized) and to the raw features,
    in float64."""
    scaler = objective.scaler
    W_std = Z.detach().to(torch.float64).numpy() @ objective.preconditioner.P.T
    b_std = b.detach().to(torch.float64).numpy() + objective.target_mean
    W_raw = W_std / scaler.std
    b_raw = b_std - W_raw @ scaler.mean
    return FitResult(
        W_raw, b_raw, W_std, b_std, scaler, lr, epochs, converged, reason, history,
        final.gap, final.coefficients,
    )  # fmt: skip
