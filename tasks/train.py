"""Train: linear regression y = X @ W.T + b by full-batch gradient descent with torch autograd.

The notebook's loop (loss.backward(), W -= lr * W.grad under no_grad, zero the grads) on the true
per-row MSE, with standardized features and a step size taken from the curvature of the loss, so
it converges without hand tuning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from tasks.errors import DataQualityError, TrainingError
from tasks.tensors import check_shapes

if TYPE_CHECKING:
    from tasks.prepare import PreparedData
    from tasks.scan import StreamedData

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


@dataclass(frozen=True)
class Scaler:
    """Per-feature mean and standard deviation of the training rows (float64)."""

    mean: np.ndarray
    std: np.ndarray


def fit_scaler(X: torch.Tensor) -> Scaler:
    """Column mean and std (ddof=0) in float64; a constant column keeps std 1."""
    X64 = X.to(torch.float64)
    mean = X64.mean(dim=0).numpy()
    std = X64.std(dim=0, correction=0).numpy()
    return Scaler(mean, np.where(std > 0, std, 1.0))


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


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a linear least-squares problem, in float64: n, sum x [d],
    sum y [k], X^T X [d, d], X^T y [d, k], and sum y^2 per target [k]. Partial statistics of
    disjoint row sets add up (files, batches, processes, machines)."""

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


def moments_of(X: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> Moments:
    """One pass over X [N, d] and y [N, k], accumulated in float64."""
    X64 = np.asarray(X, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)
    if X64.ndim != 2 or y64.ndim != 2 or len(X64) != len(y64):
        raise ValueError(f"expected X [N, d] and y [N, k], got {X64.shape} and {y64.shape}")
    return Moments(len(X64), X64.sum(0), y64.sum(0), X64.T @ X64, X64.T @ y64, (y64 * y64).sum(0))


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


def scaler_of_moments(m: Moments) -> Scaler:
    """Mean and std (ddof=0) of the features from their moments; a constant column keeps 1."""
    mean, _, sxx, _, _ = centred_moments(m)
    std = np.sqrt(np.maximum(np.diag(sxx) / m.n, 0.0))
    return Scaler(mean, np.where(std > 0, std, 1.0))


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


@dataclass(frozen=True)
class Objective:
    """The exact MSE of a linear model on standardized features, as a function of (W, b),
    with what gradient descent needs: the parameter shape and dtype, the scaler, and the
    Hessian's extreme eigenvalues L and mu."""

    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    shape: tuple[int, int]
    dtype: torch.dtype
    scaler: Scaler
    L: float
    mu: float


def direct_objective(X: torch.Tensor, y: torch.Tensor) -> Objective:
    """The MSE computed row by row: X [N, d], y [N, k], O(N d k) per evaluation."""
    check_shapes(X, y)
    scaler = fit_scaler(X)
    Xs = standardize(X, scaler)
    L, mu = curvature(Xs, y.shape[1])

    def loss(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return mse_loss(predict(Xs, W, b), y)

    return Objective(loss, (y.shape[1], X.shape[1]), X.dtype, scaler, L, mu)


def moments_objective(m: Moments) -> Objective:
    """The same MSE from sufficient statistics, O(d^2 k) per evaluation whatever N; float64."""
    scaler = scaler_of_moments(m)
    inv = 1.0 / scaler.std
    # Standardized statistics: G = Xs^T Xs, g = Xs^T 1 (zero up to rounding), H = Xs^T y.
    _, _, sxx, sxy, _ = centred_moments(m)
    G = torch.from_numpy(sxx * np.outer(inv, inv))
    g = torch.from_numpy((m.sum_x - m.n * scaler.mean) * inv)
    H = torch.from_numpy(sxy * inv[:, None])
    s = torch.from_numpy(m.sum_y)
    q = torch.from_numpy(m.yty)
    n, k = m.n, len(m.sum_y)
    gram = np.block([[G.numpy(), g.numpy()[:, None]], [g.numpy()[None, :], np.array([[n]])]])
    L, mu = curvature_of_gram(gram / n, k)

    def loss(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # sum_i (x_i w + b - y_i)^2 expanded in the statistics, per target
        per_target = (
            ((W @ G) * W).sum(1)
            + 2 * b * (W @ g)
            + n * b * b
            - 2 * (W * H.T).sum(1)
            - 2 * b * s
            + q
        )
        return per_target.sum() / (n * k)

    return Objective(loss, (k, len(m.sum_x)), torch.float64, scaler, L, mu)


def fit_linear_regression(
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float | None = None,
    max_epochs: int,
    tol: float,
    seed: int,
    on_epoch: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Gradient descent on the exact MSE, row by row. X [N, d], y [N, k] -> FitResult.

    lr is the step on standardized features (default 1/L). Training stops when the certified
    bound on the relative gap to the optimum, ||grad||^2 / (2 mu loss), is below tol, when the
    loss stops decreasing (float precision reached), or after max_epochs. A non-finite loss or
    gradient raises TrainingError.
    """
    return descend(direct_objective(X, y), lr, max_epochs, tol, seed, on_epoch)


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

    scaler = objective.scaler
    W_std = W.detach().to(torch.float64).numpy()
    b_std = b.detach().to(torch.float64).numpy()
    W_raw = W_std / scaler.std
    b_raw = b_std - W_raw @ scaler.mean
    return FitResult(W_raw, b_raw, W_std, b_std, scaler, step, epoch, converged, reason, history)


@task(cache_policy=NONE)
def train_model(
    prepared: PreparedData | StreamedData,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    lr: float | None,
    max_epochs: int,
    tol: float,
    seed: int,
    solver: str = "direct",
    dtype: str = "float32",
    log_every: int = 500,
) -> FitResult:
    """Fit the model on the training rows, row by row (`direct`, in `dtype`) or from the summed
    sufficient statistics (`moments`); `prepared` is in memory (PreparedData) or streamed
    (StreamedData), logging the loss and updating a Prefect progress
    artifact every `log_every` epochs."""
    if prepared.moments.n == 0:
        raise DataQualityError(
            f"all {prepared.accepted_rows} accepted rows fell in the holdout split; "
            "lower holdout_fraction"
        )
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description="Gradient descent: share of max_epochs")

    def log_progress(epoch: int, loss: float) -> None:
        if epoch % log_every == 0:
            logger.info("epoch %d: train MSE %.6g", epoch, loss)
            update_progress_artifact(progress, 100.0 * epoch / max_epochs)

    if solver == "moments":
        fit = fit_from_moments(
            prepared.moments,
            lr=lr,
            max_epochs=max_epochs,
            tol=tol,
            seed=seed,
            on_epoch=log_progress,
        )
    else:
        X, y = prepared.training_tensors(features, targets, dtype)
        fit = fit_linear_regression(
            X, y, lr=lr, max_epochs=max_epochs, tol=tol, seed=seed, on_epoch=log_progress
        )
    logger.info(
        "stopped after %d epochs (%s), step size %.4g, final train MSE %.6g",
        fit.epochs,
        fit.stop_reason,
        fit.lr,
        fit.loss_history[-1],
    )
    update_progress_artifact(progress, 100.0)
    return fit
