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
from tasks.dataset import Scan, training_rows
from tasks.errors import DataQualityError, TrainingError
from tasks.stats import Moments, Scaler, moments_of, scaler_of_moments
from tasks.tensors import DTYPES, check_shapes

# Epochs without any decrease of the loss before training stops: gradient descent with step 1/L
# decreases a quadratic every epoch, so a plateau means float rounding has been reached.
STALL_PATIENCE = 200


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
    """(L, mu) from A^T A / N (see curvature)."""
    eig = np.linalg.eigvalsh(gram)
    scale = 2.0 / n_targets
    return float(eig[-1] * scale), float(max(eig[0], 0.0) * scale)


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
    intercept is trained relative to the targets' mean), as a function of (W, b) in the dtype
    gradient descent runs in, with what gradient descent needs: the parameter shape and
    dtype, the scaler, the targets' mean, and the Hessian's extreme eigenvalues L and mu."""

    loss: Loss
    shape: tuple[int, int]
    dtype: torch.dtype
    scaler: Scaler
    target_mean: np.ndarray
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

    shape = (y.shape[1], X.shape[1])
    return Objective(loss, shape, dtype, scaler, target_mean, L, mu)


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

    return Objective(loss, (k, d), torch.float64, scaler, m.mean_y, L, mu)


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
    (default X's; pass float64 rows to keep their precision for the centring). Training stops
    when the certified bound on the relative gap to the optimum, ||grad||^2 / (2 mu loss), is
    below tol, when the loss stops decreasing (float precision reached), or after max_epochs.
    A non-finite loss or gradient raises TrainingError.
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


def descend(
    objective: Objective,
    lr: float | None,
    max_epochs: int,
    tol: float,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> FitResult:
    """The notebook's loop on `objective`: loss.backward(), W -= lr * W.grad and b -= lr * b.grad
    under no_grad, zero the grads; stopping rules as in fit_linear_regression."""
    step = 1.0 / objective.L if lr is None else lr
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(*objective.shape, generator=generator, dtype=objective.dtype)
    b = torch.randn(objective.shape[0], generator=generator, dtype=objective.dtype)
    W.requires_grad_(True)
    b.requires_grad_(True)

    history: list[float] = []
    best, since_best = float("inf"), 0
    converged, reason, epoch = False, f"reached max_epochs={max_epochs}", 0
    for epoch in range(max_epochs + 1):
        loss = objective.loss(W, b)
        loss.backward()
        value = loss.item()
        grad_sq = float((W.grad * W.grad).sum() + (b.grad * b.grad).sum())
        if not (np.isfinite(value) and np.isfinite(grad_sq)):
            raise TrainingError(
                f"training diverged at epoch {epoch}: loss={value}, squared gradient "
                f"norm={grad_sq} (step size lr={step:g}); lower --lr or leave it unset"
            )
        history.append(value)
        if on_epoch is not None:
            on_epoch(epoch, value)
        mu = objective.mu
        if mu > 0 and grad_sq / (2 * mu) <= tol * max(value, np.finfo(np.float64).tiny):
            converged, reason = True, f"certified relative gap <= tol={tol:g}"
            break
        if value < best:
            best, since_best = value, 0
        else:
            since_best += 1
            if since_best >= STALL_PATIENCE:
                converged = lr is None
                reason = f"loss flat for {STALL_PATIENCE} epochs (float precision)"
                break
        if epoch == max_epochs:
            break
        with torch.no_grad():
            W -= step * W.grad
            b -= step * b.grad
            W.grad.zero_()
            b.grad.zero_()

    return _result(objective, W, b, step, epoch, converged, reason, history)


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
