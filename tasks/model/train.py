"""Train: linear regression y = X @ W.T + b by full-batch gradient descent with torch autograd.

The notebook's loop (loss.backward(), W -= lr * W.grad under no_grad, zero the grads) on the true
per-row MSE, preconditioned so it converges in a few epochs whatever the conditioning of the
data: the weights on standardized features are W = Z P^T, and descent runs on Z, with P the
inverse of the features' QR factor (from the same statistics the run gathers, through its
SVD). In Z the Hessian is the identity up to rounding, so the step 1/L is exact; the loss is
still computed from the rows (or from the factor), never from the normal equations, so the
weights reach the accuracy of a QR solve (the digits the condition number leaves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from schemas.params import AUTO_DIRECT_MAX_ROWS, RunConfig
from tasks.common.errors import DataQualityError, TrainingError
from tasks.ingest.scan import Scan, training_rows
from tasks.ingest.stats import (
    COLLINEAR_SINGULAR_VALUE,
    Moments,
    Scaler,
    features_svd,
    least_squares_of_moments,
    moments_of,
    scaler_of_moments,
)
from tasks.model.refine import STEPS, refine
from tasks.model.tensors import DTYPES, check_shapes

# Epochs without any decrease of the loss before training stops. Preconditioned descent reaches
# the rounding floor of the loss in a few epochs; below it the loss no longer decreases while
# the certificate may not hold (float32, or data too ill-conditioned for float64): a stall ends
# training, and only the certificate says whether it converged.
STALL_PATIENCE = 20
# An MSE below this share of the targets' variance is an exact fit as far as float64 can tell
# (the residuals' rounding): the certificate's relative gap is taken against at least that,
# since no MSE is a small share of a zero optimum.
EXACT_FIT_SHARE = 1e-20
# The coefficient certificate is relative to the target's largest standardized coefficient,
# and to at least this share of the target's standard deviation (features that explain nothing
# of a target have no size of their own to be relative to).
COEFFICIENT_FLOOR = 1e-3
# A stalled loss this far above its lowest (relative) has risen, not levelled off: the step is
# too large (at the rounding floor the loss moves by ~1e-13 in float64, ~1e-6 in float32).
DIVERGENCE_RISE = 1e-3


def predict(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The notebook's model: X [N, d], W [k, d], b [k] -> predictions [N, k]."""
    return X @ W.T + b


def mse_loss(preds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over rows and targets; the shapes must match exactly."""
    if preds.shape != y.shape:
        raise ValueError(
            f"predictions {tuple(preds.shape)} and targets {tuple(y.shape)} differ in shape; "
            "refusing to broadcast"
        )
    diff = preds - y
    return (diff * diff).mean()


def fit_scaler(X: torch.Tensor) -> Scaler:
    """Column mean and std (ddof=0) in float64, as the statistics compute them (a constant
    column keeps std 1)."""
    X64 = X.detach().to(torch.float64).numpy()
    return scaler_of_moments(moments_of(X64, np.zeros((len(X64), 0))))


def standardize(X: torch.Tensor, scaler: Scaler) -> torch.Tensor:
    """(X - mean) / std, computed in float64 and returned in X's dtype."""
    mean = torch.from_numpy(scaler.mean)
    std = torch.from_numpy(scaler.std)
    return ((X.to(torch.float64) - mean) / std).to(X.dtype)


@dataclass(frozen=True)
class Preconditioner:
    """P [d, d] with W = Z P^T, from the SVD of the standardized features' factor R_s (R_s^T R_s
    is their correlation matrix): P = V S^-1, so R_s P = U has orthonormal columns and the
    Hessian in Z is 2/k times the identity. Directions with a singular value below
    COLLINEAR_SINGULAR_VALUE (a constant column, collinear columns) get a zero column: Z does
    not move along them, and W is the minimum-norm least-squares solution. (L, mu): the
    Hessian's largest eigenvalue in (Z, b) and its smallest on the spanned directions."""

    P: np.ndarray
    L: float
    mu: float
    condition: float

    @staticmethod
    def of(m: Moments) -> Preconditioner:
        # the factor of Xs / sqrt(n): the features' columns at unit length (features_svd)
        _, U, singular, vt = features_svd(m)
        spanned = singular > COLLINEAR_SINGULAR_VALUE
        inverse = np.where(spanned, 1.0 / np.where(spanned, singular, 1.0), 0.0)
        P = vt.T * inverse
        k = len(m.mean_y)
        # the intercept's curvature is 2/k too; the features' is 2/k (R_s P)^T (R_s P)
        r_s = (U * singular) @ vt
        whitened = np.linalg.svd(r_s @ P[:, spanned], compute_uv=False) ** 2
        curvatures = np.concatenate([whitened, [1.0]]) * (2.0 / k)
        kept = singular[spanned]
        condition = float(kept.max() / kept.min()) if len(kept) else float("inf")
        return Preconditioner(P, float(curvatures.max()), float(curvatures.min()), condition)


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


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """The exact MSE of a linear model on standardized features and centred targets (the
    intercept is trained relative to the targets' mean), as a function of the preconditioned
    weights Z and b (W = Z P^T): `loss` in the dtype gradient descent runs in, `exact` the same
    in float64 (what the certificate is evaluated with). Also the parameter shape and dtype,
    the scaler, the targets' mean and variance (per target: the loss of predicting the mean),
    and the preconditioner."""

    loss: Loss
    exact: Loss
    shape: tuple[int, int]
    dtype: torch.dtype
    scaler: Scaler
    target_mean: np.ndarray
    variance: np.ndarray
    preconditioner: Preconditioner
    moments: Moments


def direct_objective(
    X: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None
) -> Objective:
    """The MSE computed row by row: X [N, d], y [N, k], O(N d k) per evaluation, in `dtype`
    (default X's). The rows are standardized and centred in float64 before they are cast:
    float32 then holds their spread, whatever their offset (targets around 1e6, timestamps).
    The preconditioner comes from the QR factor of the same rows."""
    check_shapes(X, y)
    dtype = X.dtype if dtype is None else dtype
    X64, y64 = X.detach().to(torch.float64), y.detach().to(torch.float64)
    m = moments_of(X64.numpy(), y64.numpy())
    scaler = scaler_of_moments(m)
    target_mean = m.mean_y
    Xs64, yc64 = standardize(X64, scaler), y64 - torch.from_numpy(target_mean)
    preconditioner = Preconditioner.of(m)
    P64 = torch.from_numpy(preconditioner.P)
    Xs, yc, P = Xs64.to(dtype), yc64.to(dtype), P64.to(dtype)

    def loss(Z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mse_loss(predict(Xs, Z @ P.T, b), yc)

    def exact(Z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mse_loss(predict(Xs64, Z @ P64.T, b), yc64)

    variance = (yc64 * yc64).mean(dim=0).numpy()
    shape = (y.shape[1], X.shape[1])
    return Objective(loss, exact, shape, dtype, scaler, target_mean, variance, preconditioner, m)


def moments_objective(m: Moments) -> Objective:
    """The same MSE from the statistics' factor, O(d^2 k) per evaluation whatever N; float64.
    With [Xs, yc] = Q [A, B] (A the standardized features' columns of the factor, B the
    targets'), sum_i (xs_i w + b - yc_i)^2 = ||A w - B||^2 + n b^2 per target: the residual
    of the small triangular system, so nothing squares the condition number."""
    scaler = scaler_of_moments(m)
    n, k, d = m.n, len(m.mean_y), m.d
    A = torch.from_numpy(m.r[:, :d] / scaler.std)
    B = torch.from_numpy(m.r[:, d:])
    preconditioner = Preconditioner.of(m)
    P = torch.from_numpy(preconditioner.P)

    def loss(Z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        residual = A @ (Z @ P.T).T - B
        return ((residual * residual).sum() + n * (b * b).sum()) / (n * k)

    variance = m.syy / n
    return Objective(
        loss, loss, (k, d), torch.float64, scaler, m.mean_y, variance, preconditioner, m
    )


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


@dataclass(frozen=True)
class Certificate:
    """What the gradient proves about the distance to the least-squares optimum. The loss is a
    quadratic in (Z, b) whose curvature is at least mu, so (Z, b) is within ||grad|| / mu of
    the optimum, and the MSE at most ||grad||^2 / (2 mu) above it. `gap` bounds the relative
    MSE gap; `coefficients` bounds every standardized weight's distance to the optimum's
    (through W = Z P^T: row i of P times the distance in Z), and the intercept's, relative to
    the target's largest standardized weight (and to at least COEFFICIENT_FLOOR of its standard
    deviation). Both are inf where no direction is spanned."""

    gap: float
    coefficients: float

    def holds(self, tol: float) -> bool:
        return self.gap <= tol and self.coefficients <= tol


def certificate(
    objective: Objective, loss: float, Z: torch.Tensor, grad_Z: torch.Tensor, grad_b: torch.Tensor
) -> Certificate:
    """The certificate at Z given the loss there and its gradients (any dtype)."""
    mu = objective.preconditioner.mu
    if mu <= 0:
        return Certificate(float("inf"), float("inf"))
    gZ = grad_Z.detach().to(torch.float64).numpy()
    gb = grad_b.detach().to(torch.float64).numpy()
    grad_sq = float((gZ * gZ).sum() + (gb * gb).sum())
    floor = max(EXACT_FIT_SHARE * float(objective.variance.mean()), np.finfo(np.float64).tiny)
    gap = grad_sq / (2 * mu * max(loss, floor))
    P = objective.preconditioner.P
    W_std = Z.detach().to(torch.float64).numpy() @ P.T
    distance = np.linalg.norm(gZ, axis=1) / mu  # per target, in Z
    weights = distance[:, None] * np.linalg.norm(P, axis=1)[None, :]
    worst = np.maximum(weights.max(axis=1, initial=0.0), np.abs(gb) / mu)
    size = np.abs(W_std).max(axis=1, initial=0.0)
    # a constant target's optimum is W = 0: its floor is the rounding of the target's values
    resolution = np.finfo(np.float64).eps * (
        np.sqrt(objective.variance) + np.abs(objective.target_mean)
    )
    reference = np.maximum(
        size, np.maximum(COEFFICIENT_FLOOR * np.sqrt(objective.variance), resolution)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        relative = np.where(reference > 0, worst / reference, np.where(worst > 0, np.inf, 0.0))
    return Certificate(gap, float(relative.max(initial=0.0)))


def exact_certificate(objective: Objective, Z: torch.Tensor, b: torch.Tensor) -> Certificate:
    """The certificate at (Z, b) with the loss and gradients evaluated in float64."""
    Z64 = Z.detach().to(torch.float64).clone().requires_grad_(True)
    b64 = b.detach().to(torch.float64).clone().requires_grad_(True)
    loss = objective.exact(Z64, b64)
    loss.backward()
    return certificate(objective, loss.item(), Z64, Z64.grad, b64.grad)


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
        if value > history[0] or (stalled and value > stall.best * (1 + DIVERGENCE_RISE)):
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


def fit_scan(
    scan: Scan, config: RunConfig, on_epoch: Callable[[int, float], None] | None = None
) -> FitResult:
    """Fit the model on a run's training rows with the configured solver (`auto`: `direct`
    while the training rows are few, the sufficient statistics above)."""
    if scan.train.n == 0:
        raise DataQualityError(
            f"all {scan.accepted} accepted rows fell in the holdout split; lower holdout_fraction"
        )
    options = {"lr": config.lr, "max_epochs": config.max_epochs, "tol": config.tol}
    if solver_for(config, scan.train.n) == "moments":
        return fit_from_moments(scan.train, seed=config.seed, on_epoch=on_epoch, **options)
    X, y = training_rows(scan, config)
    return fit_linear_regression(
        torch.from_numpy(X), torch.from_numpy(y), dtype=DTYPES[config.dtype], seed=config.seed,
        on_epoch=on_epoch, **options,
    )  # fmt: skip


def solver_for(config: RunConfig, train_rows: int) -> str:
    """The solver a run uses: as configured, `auto` resolved by the number of training rows."""
    if config.solver != "auto":
        return config.solver
    return "direct" if train_rows <= AUTO_DIRECT_MAX_ROWS else "moments"


@task(cache_policy=NONE, task_run_name="fit-{config.solver}")
def train_model(scan: Scan, config: RunConfig, log_every: int = 500) -> FitResult:
    """fit_scan as a task, logging the loss and updating a Prefect progress artifact every
    `log_every` epochs."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description="Gradient descent: share of max_epochs")

    def log_progress(epoch: int, loss: float) -> None:
        if epoch % log_every == 0:
            logger.info("epoch %d: train MSE %.6g", epoch, loss)
            update_progress_artifact(progress, 100.0 * epoch / config.max_epochs)

    fit = fit_scan(scan, config, log_progress)
    logger.info(
        "%s solver stopped after %d epochs (%s), step size %.4g, final train MSE %.6g",
        solver_for(config, scan.train.n),
        fit.epochs,
        fit.stop_reason,
        fit.lr,
        fit.loss_history[-1],
    )
    update_progress_artifact(progress, 100.0)
    return fit
