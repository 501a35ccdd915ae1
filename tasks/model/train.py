"""Train: linear regression y = X @ W.T + b by full-batch gradient descent with torch autograd.

The notebook's loop (loss.backward(), W -= lr * W.grad under no_grad, zero the grads) on the true
per-row MSE, with standardized features and a step size taken from the curvature of the loss, so
it converges without hand tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from schemas.params import AUTO_DIRECT_MAX_ROWS, RunConfig
from tasks.common.errors import DataQualityError, TrainingError
from tasks.ingest.scan import Scan, training_rows
from tasks.ingest.stats import COLLINEAR_EIGENVALUE, Moments, Scaler, moments_of, scaler_of_moments
from tasks.model.tensors import DTYPES, check_shapes

# Epochs without any decrease of the loss before training stops. In exact arithmetic gradient
# descent with step 1/L decreases a quadratic every epoch, but on ill-conditioned data the
# decrease can fall below the rounding of the loss while the weights are still far from the
# optimum: a stall ends training, and only the certificate says whether it converged.
STALL_PATIENCE = 200
# An MSE below this share of the targets' variance is an exact fit as far as float64 can tell
# (the residuals' rounding): the certificate's relative gap is taken against at least that,
# since no MSE is a small share of a zero optimum.
EXACT_FIT_SHARE = 1e-20


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


def curvature(Xs: torch.Tensor, n_targets: int) -> tuple[float, float]:
    """(L, mu): largest and smallest eigenvalues of the MSE's Hessian in (W, b).

    loss = 1/(N k) * sum ||A theta_j - y_j||^2 with A = [Xs, 1], so H = 2/(N k) * A^T A.
    """
    A = torch.cat([Xs.to(torch.float64), torch.ones(Xs.shape[0], 1, dtype=torch.float64)], 1)
    return curvature_of_gram((A.T @ A / Xs.shape[0]).numpy(), n_targets)


def curvature_of_gram(gram: np.ndarray, n_targets: int) -> tuple[float, float]:
    """(L, mu) from A^T A / N (see curvature). mu is the smallest eigenvalue above
    COLLINEAR_EIGENVALUE (0 if none is): below it are directions the standardized features
    do not span as far as float64 can tell (a constant column, collinear columns; the
    inference names them), along which the gradient of least squares has no component."""
    eig = np.linalg.eigvalsh(gram)
    scale = 2.0 / n_targets
    spanned = eig[eig > COLLINEAR_EIGENVALUE]
    return float(eig[-1] * scale), float(spanned[0] * scale) if len(spanned) else 0.0


@dataclass
class FitResult:
    """A trained model: raw-scale W [k, d] and b [k] (float64), the standardized ones, the
    scaler, and how training went."""

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


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """The exact MSE of a linear model on standardized features and centred targets (the
    intercept is trained relative to the targets' mean), as a function of (W, b): `loss` in
    the dtype gradient descent runs in, `exact` the same in float64 (what the certificate is
    evaluated with). Also the parameter shape and dtype, the scaler, the targets' mean and
    variance (averaged over targets: the loss of predicting the mean), and the Hessian's
    largest eigenvalue L and smallest on the spanned directions mu."""

    loss: Loss
    exact: Loss
    shape: tuple[int, int]
    dtype: torch.dtype
    scaler: Scaler
    target_mean: np.ndarray
    variance: float
    L: float
    mu: float


def direct_objective(
    X: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None
) -> Objective:
    """The MSE computed row by row: X [N, d], y [N, k], O(N d k) per evaluation, in `dtype`
    (default X's). The rows are standardized and centred in float64 before they are cast:
    float32 then holds their spread, whatever their offset (targets around 1e6, timestamps)."""
    check_shapes(X, y)
    dtype = X.dtype if dtype is None else dtype
    X64, y64 = X.detach().to(torch.float64), y.detach().to(torch.float64)
    scaler = fit_scaler(X64)
    target_mean = y64.mean(dim=0).numpy()
    Xs64, yc64 = standardize(X64, scaler), y64 - torch.from_numpy(target_mean)
    L, mu = curvature(Xs64, y.shape[1])
    Xs, yc = Xs64.to(dtype), yc64.to(dtype)

    def loss(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mse_loss(predict(Xs, W, b), yc)

    def exact(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mse_loss(predict(Xs64, W, b), yc64)

    shape, variance = (y.shape[1], X.shape[1]), float((yc64 * yc64).mean())
    return Objective(loss, exact, shape, dtype, scaler, target_mean, variance, L, mu)


def moments_objective(m: Moments) -> Objective:
    """The same MSE from sufficient statistics, O(d^2 k) per evaluation whatever N; float64."""
    scaler = scaler_of_moments(m)
    inv = 1.0 / scaler.std
    # Standardized statistics: G = Xs^T Xs and H = Xs^T (y - mean y); Xs^T 1 is zero, since
    # the features are centred on the same means.
    G = torch.from_numpy(m.sxx * np.outer(inv, inv))
    H = torch.from_numpy(m.sxy * inv[:, None])
    q = torch.from_numpy(m.syy)
    n, k, d = m.n, len(m.mean_y), len(m.mean_x)
    gram = np.zeros((d + 1, d + 1))
    gram[:d, :d], gram[d, d] = G.numpy() / n, 1.0
    L, mu = curvature_of_gram(gram, k)

    def loss(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # sum_i (xs_i w + b - (y_i - mean y))^2 per target, in centred statistics: the
        # intercept's term stands apart, and nothing of the size of the offsets cancels
        per_target = ((W @ G) * W).sum(1) - 2 * (W * H.T).sum(1) + q + n * b * b
        return per_target.sum() / (n * k)

    variance = float(m.syy.sum() / (n * k))
    return Objective(loss, loss, (k, d), torch.float64, scaler, m.mean_y, variance, L, mu)


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

    lr is the step on standardized features (default 1/L); gradient descent runs in `dtype`
    (default X's; pass float64 rows to keep their precision for the centring and the
    certificate). Training stops at the first of three rules (see descend): the certificate
    holds, the loss stalls, or max_epochs. A non-finite loss or gradient raises TrainingError.
    """
    return descend(direct_objective(X, y, dtype), lr, max_epochs, tol, seed, on_epoch)


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


def gap_bound(objective: Objective, loss: float, grad_sq: float) -> float:
    """The certified bound on the relative gap to the optimum, (f - f*) / f <= ||grad||^2 /
    (2 mu f): a quadratic is at most ||grad||^2 / (2 mu) above its minimum, mu the smallest
    curvature along the gradient (inf without one). f is at least an exact fit's MSE (see
    EXACT_FIT_SHARE)."""
    if objective.mu <= 0:
        return float("inf")
    floor = max(EXACT_FIT_SHARE * objective.variance, np.finfo(np.float64).tiny)
    return grad_sq / (2 * objective.mu * max(loss, floor))


def exact_gap_bound(objective: Objective, W: torch.Tensor, b: torch.Tensor) -> float:
    """gap_bound at (W, b) with the loss and gradient evaluated in float64."""
    W64 = W.detach().to(torch.float64).clone().requires_grad_(True)
    b64 = b.detach().to(torch.float64).clone().requires_grad_(True)
    loss = objective.exact(W64, b64)
    loss.backward()
    grad_sq = float((W64.grad * W64.grad).sum() + (b64.grad * b64.grad).sum())
    return gap_bound(objective, loss.item(), grad_sq)


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
    """The notebook's loop on `objective`: loss.backward(), W -= lr * W.grad and b -= lr * b.grad
    under no_grad, zero the grads (lr defaults to 1/L).

    Stops at the first of three rules: `certified` (the bound on the relative gap is within
    tol, in the training dtype and then in float64), `stalled` (STALL_PATIENCE epochs without
    a decrease) or `out_of_epochs` (max_epochs). `converged` means the certificate holds at the
    final weights in float64, whichever rule stopped training."""
    lr = 1.0 / objective.L if lr is None else lr
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(*objective.shape, generator=generator, dtype=objective.dtype)
    b = torch.randn(objective.shape[0], generator=generator, dtype=objective.dtype)
    W.requires_grad_(True)
    b.requires_grad_(True)

    history: list[float] = []
    stall = Stall()
    certified = stalled = False
    epoch = 0
    for epoch in range(max_epochs + 1):
        value, grad_sq = _gradient(objective, W, b, epoch, lr)
        history.append(value)
        if on_epoch is not None:
            on_epoch(epoch, value)
        # the training dtype's bound is a cheap screen; float64 decides (float32 rounding
        # can hide or fake the last digits of the gradient)
        certified = gap_bound(objective, value, grad_sq) <= tol and (
            objective.dtype == torch.float64 or exact_gap_bound(objective, W, b) <= tol
        )
        stalled = stall.stalled(value)
        out_of_epochs = epoch == max_epochs
        if certified or stalled or out_of_epochs:
            break
        with torch.no_grad():
            W -= lr * W.grad
            b -= lr * b.grad
            W.grad.zero_()
            b.grad.zero_()

    bound = exact_gap_bound(objective, W, b)
    converged = bound <= tol
    reason = _stop_reason(certified, stalled, bound, tol, max_epochs, objective.dtype)
    return _result(objective, W, b, lr, epoch, converged, reason, history)


def _gradient(
    objective: Objective, W: torch.Tensor, b: torch.Tensor, epoch: int, lr: float
) -> tuple[float, float]:
    """The loss at (W, b) and its squared gradient norm (the gradients left in W.grad and
    b.grad); TrainingError if either is not finite."""
    loss = objective.loss(W, b)
    loss.backward()
    value = loss.item()
    grad_sq = float((W.grad * W.grad).sum() + (b.grad * b.grad).sum())
    if not (np.isfinite(value) and np.isfinite(grad_sq)):
        raise TrainingError(
            f"training diverged at epoch {epoch}: loss={value}, squared gradient "
            f"norm={grad_sq} (step size lr={lr:g}); lower --lr or leave it unset"
        )
    return value, grad_sq


def _stop_reason(
    certified: bool, stalled: bool, bound: float, tol: float, max_epochs: int, dtype: torch.dtype
) -> str:
    if certified:
        return f"certified relative gap <= tol={tol:g}"
    rule = f"loss flat for {STALL_PATIENCE} epochs" if stalled else f"reached {max_epochs=}"
    if bound <= tol:
        return f"{rule}; certified relative gap <= tol={tol:g}"
    hint = " (try --dtype float64)" if stalled and dtype != torch.float64 else ""
    return f"{rule} with the relative gap up to {bound:.3g} > tol={tol:g}: not converged{hint}"


def _result(
    objective: Objective,
    W: torch.Tensor,
    b: torch.Tensor,
    lr: float,
    epochs: int,
    converged: bool,
    reason: str,
    history: list[float],
) -> FitResult:
    """The trained (W, b), trained on standardized features and centred targets, mapped back
    to the targets' scale (standardized) and to the raw features, in float64."""
    scaler = objective.scaler
    W_std = W.detach().to(torch.float64).numpy().copy()
    b_std = b.detach().to(torch.float64).numpy() + objective.target_mean
    W_raw = W_std / scaler.std
    b_raw = b_std - W_raw @ scaler.mean
    return FitResult(W_raw, b_raw, W_std, b_std, scaler, lr, epochs, converged, reason, history)


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
