"""The objective gradient descent minimizes and what its gradient proves: the exact MSE of a
linear model on standardized features and centred targets, as a function of preconditioned
weights (W = Z P^T, P from the statistics' QR factor, so the Hessian in Z is the identity up to
rounding), computed from the rows (direct) or from the factor (moments); and the certificate,
the bounds the gradient puts on the distance to the least-squares optimum.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tasks.ingest.stats import (
    COLLINEAR_SINGULAR_VALUE,
    EXACT_FIT_SHARE,
    Moments,
    Scaler,
    features_svd,
    moments_of,
    scaler_of_moments,
)
from tasks.model.tensors import check_shapes

# An MSE below EXACT_FIT_SHARE of the targets' variance is an exact fit as far as float64 can
# tell: the certificate's relative gap is taken against at least that, since no MSE is a small
# share of a zero optimum.
# The coefficient certificate is relative to the target's largest standardized coefficient,
# and to at least this share of the target's standard deviation (features that explain nothing
# of a target have no size of their own to be relative to).
COEFFICIENT_FLOOR = 1e-3


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
