"""Training: the true per-row MSE, autograd = analytic gradients, convergence to least squares."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from tasks.common.errors import TrainingError
from tasks.ingest.stats import least_squares_of_moments, moments_of
from tasks.model.descent import fit_linear_regression
from tasks.model.inference import degeneracy
from tasks.model.objective import direct_objective, mse_loss, predict, standardize
from tasks.model.tensors import to_tensors
from tests.reference import least_squares

NOTEBOOK_X = [
    [70.0, 0.1, 0.043],
    [90.0, 0.8, 0.064],
    [80.0, 0.13, 0.058],
    [100.0, 0.4, 0.037],
    [60.0, 0.9, 0.7],
]
NOTEBOOK_Y = [5.0, 8.0, 12.0, 2.0, 1.0]
NOTEBOOK_W = [[0.7765, -0.1135, 0.7029]]
NOTEBOOK_B = [0.4655]
NOTEBOOK_OPTIMUM_MSE = 9.6427


def notebook(dtype=torch.float32):
    X = torch.tensor(NOTEBOOK_X, dtype=dtype)
    y = torch.tensor(NOTEBOOK_Y, dtype=dtype).reshape(-1, 1)
    return X, y


def mse_np(X, y, W, b) -> float:
    return float(((np.asarray(X, float) @ W.T + b - np.asarray(y, float)) ** 2).mean())


def correlated_data(n: int, k: int, seed: int = 0):
    """Features with correlation ~0.9 on very different scales, k linear targets with noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n)
    X = np.column_stack(
        [
            50 + 15 * base + rng.normal(0, 3, n),
            0.5 + 0.2 * base + rng.normal(0, 0.05, n),
            0.1 * (0.5 + 0.2 * base) + rng.normal(0, 0.01, n),
        ]
    )
    W = rng.normal(size=(k, 3)) * [0.1, 3.0, 20.0]
    y = X @ W.T + rng.normal(size=k) + rng.normal(0, 0.5, (n, k))
    return X, y


def test_notebook_loss_is_the_true_per_row_mse():
    X, y = notebook()
    W = torch.tensor(NOTEBOOK_W, requires_grad=True)
    b = torch.tensor(NOTEBOOK_B, requires_grad=True)
    loss = mse_loss(predict(X, W, b), y)
    assert loss.item() == pytest.approx(3375.03, abs=0.01)
    # The notebook's broadcast ([N,1] - [N] -> [N,N]) gives a different number.
    broadcast = ((predict(X, W, b) - y.reshape(-1)) ** 2).mean().item()
    assert broadcast == pytest.approx(3389.9, abs=0.1)
    assert abs(loss.item() - broadcast) > 10


def test_autograd_gradients_equal_the_analytic_ones():
    X, y = notebook(torch.float64)
    W = torch.tensor(NOTEBOOK_W, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(NOTEBOOK_B, dtype=torch.float64, requires_grad=True)
    mse_loss(predict(X, W, b), y).backward()
    residual = (X @ W.T + b - y).detach()
    n = X.shape[0]
    torch.testing.assert_close(W.grad, 2 / n * residual.T @ X)
    torch.testing.assert_close(b.grad, 2 / n * residual.sum(dim=0))


def test_shape_mismatch_is_refused_not_broadcast():
    X, y = notebook()
    preds = predict(X, torch.zeros(1, 3), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\(5, 1\) and targets \(5,\) differ in shape"):
        mse_loss(preds, y.reshape(-1))


# float32 training certifies what float32 can hold: coefficients to ~1e-7, not 1e-12
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_notebook_rows_reach_the_least_squares_optimum(dtype, tol):
    X, y = notebook(dtype)
    fit = fit_linear_regression(X, y, max_epochs=20_000, tol=tol, seed=0)
    W_opt, b_opt = least_squares(np.array(NOTEBOOK_X), np.array(NOTEBOOK_Y).reshape(-1, 1))
    optimum = mse_np(NOTEBOOK_X, np.reshape(NOTEBOOK_Y, (-1, 1)), W_opt, b_opt)
    assert optimum == pytest.approx(NOTEBOOK_OPTIMUM_MSE, abs=1e-4)
    trained = mse_np(NOTEBOOK_X, np.reshape(NOTEBOOK_Y, (-1, 1)), fit.W, fit.b)
    assert (trained - optimum) / optimum < 1e-6
    assert fit.converged


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_descent_matches_lstsq_on_correlated_features(k, dtype):
    X_np, y_np = correlated_data(400, k)
    assert np.corrcoef(X_np.T)[0, 1] > 0.8
    import pandas as pd

    cols = ["x0", "x1", "x2"]
    targets = [f"y{j}" for j in range(k)]
    frame = pd.DataFrame(np.column_stack([X_np, y_np]), columns=cols + targets)
    X, y = to_tensors(frame, tuple(cols), tuple(targets), dtype)
    fit = fit_linear_regression(X, y, max_epochs=50_000, tol=1e-12, seed=1)
    W_opt, b_opt = least_squares(X_np, y_np)
    assert fit.W.shape == (k, 3)
    assert fit.b.shape == (k,)
    for j in range(k):
        optimum = mse_np(X_np, y_np[:, [j]], W_opt[[j]], b_opt[[j]])
        trained = mse_np(X_np, y_np[:, [j]], fit.W[[j]], fit.b[[j]])
        assert (trained - optimum) / optimum < 1e-6, (j, trained, optimum)


def test_same_seed_gives_identical_weights_and_another_seed_starts_elsewhere():
    X, y = notebook()
    a = fit_linear_regression(X, y, max_epochs=50, tol=1e-12, seed=3)
    b = fit_linear_regression(X, y, max_epochs=50, tol=1e-12, seed=3)
    c = fit_linear_regression(X, y, max_epochs=50, tol=1e-12, seed=4)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.b, b.b)
    assert a.loss_history == b.loss_history
    assert a.loss_history[0] != c.loss_history[0]


def test_raw_scale_weights_reproduce_the_standardized_model():
    X, y = notebook(torch.float64)
    fit = fit_linear_regression(X, y, max_epochs=30, tol=1e-12, seed=0)
    standardized = standardize(X, fit.scaler).numpy() @ fit.W_std.T + fit.b_std
    raw = X.numpy() @ fit.W.T + fit.b
    np.testing.assert_allclose(raw, standardized, rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2])
def test_the_preconditioned_hessian_is_the_identity_and_the_default_step_its_inverse(k):
    X, y = correlated_data(300, k, seed=5)
    objective = direct_objective(torch.from_numpy(X), torch.from_numpy(y))
    flat = torch.zeros(k * 3 + k, dtype=torch.float64)

    def loss(theta):
        return objective.exact(theta[: 3 * k].reshape(k, 3), theta[3 * k :])

    hessian = torch.autograd.functional.hessian(loss, flat).numpy()
    # features correlated 0.9 on scales 1e2 apart: without the preconditioner the Hessian's
    # eigenvalues would spread over orders of magnitude; with it they are all 2/k
    np.testing.assert_allclose(np.linalg.eigvalsh(hessian), 2 / k, rtol=1e-9)
    assert pytest.approx(2 / k, rel=1e-9) == objective.preconditioner.L
    assert objective.preconditioner.mu == pytest.approx(2 / k, rel=1e-9)
    fit = fit_linear_regression(torch.from_numpy(X), torch.from_numpy(y), max_epochs=20,
                                tol=1e-9, seed=0)  # fmt: skip
    assert fit.lr == pytest.approx(k / 2)
    assert fit.converged, fit.stop_reason
    assert fit.epochs <= 3


def test_divergence_fails_loudly():
    X, y = notebook()
    with pytest.raises(TrainingError, match=r"diverged at epoch \d+.*lower --lr"):
        fit_linear_regression(X, y, lr=50.0, max_epochs=10_000, tol=1e-12, seed=0)


def test_max_epochs_bounds_training_and_reports_not_converged():
    X, y = notebook()
    fit = fit_linear_regression(X, y, lr=1e-4, max_epochs=7, tol=1e-12, seed=0)
    assert fit.epochs == 7
    assert len(fit.loss_history) == 8
    assert not fit.converged
    assert fit.loss_history[-1] < fit.loss_history[0]


def nearly_collinear(n: int = 5000, rho: float = 0.9988, seed: int = 0):
    """Two features correlated `rho` on the sales scales and a noisy linear target."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 2))
    income = 50 + 15 * z[:, 0]
    price = 1 + 0.3 * (rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1])
    X = np.column_stack([income, price])
    y = 9 + 0.1 * income - 3 * price + rng.normal(0, 0.5, n)
    return X, y[:, None]


def true_relative_gap(X: np.ndarray, y: np.ndarray, W: np.ndarray, b: np.ndarray) -> float:
    """(MSE - optimum) / optimum in float64, the optimum from numpy's lstsq."""
    W_opt, b_opt = least_squares(X, y)
    optimum = mse_np(X, y, W_opt, b_opt)
    return (mse_np(X, y, W, b) - optimum) / optimum


def test_a_float32_stall_on_nearly_collinear_features_is_not_called_convergence():
    X, y = (a.astype(np.float32) for a in nearly_collinear())
    assert np.corrcoef(X.T)[0, 1] == pytest.approx(0.9988, abs=2e-4)
    tol = 1e-9  # the defaults
    fit = fit_linear_regression(
        torch.from_numpy(X), torch.from_numpy(y), max_epochs=20_000, tol=tol, seed=0
    )
    gap = true_relative_gap(X, y, fit.W, fit.b)
    if fit.converged:
        assert gap <= tol, fit.stop_reason
    else:
        # the bounds it reached are stated, and they are true bounds
        found = re.search(r"relative MSE gap <= ([0-9.e+-]+), coefficients within ([0-9.e+-]+)",
                          fit.stop_reason)  # fmt: skip
        gap_bound, coefficient_bound = (float(found.group(i)) for i in (1, 2))
        assert max(gap_bound, coefficient_bound) > tol
        assert gap <= gap_bound * 1.1
        W_opt, _ = least_squares(X.astype(np.float64), y.astype(np.float64))
        error = np.abs(fit.W_std - W_opt * fit.scaler.std).max() / np.abs(fit.W_std).max()
        assert error <= coefficient_bound * 1.1


@pytest.mark.parametrize(("dtype", "tol"), [(np.float32, 1e-5), (np.float64, 1e-9)])
def test_converged_means_the_certificate_holds_in_float64(dtype, tol):
    X, y = (a.astype(dtype) for a in correlated_data(300, 1, seed=2))
    fit = fit_linear_regression(
        torch.from_numpy(X), torch.from_numpy(y), max_epochs=50_000, tol=tol, seed=0
    )
    assert fit.converged, fit.stop_reason
    # numpy's lstsq is the reference to rounding: the trained model may beat it by that much
    assert -1e-12 <= true_relative_gap(X, y, fit.W, fit.b) <= tol
    W_opt, _ = least_squares(X.astype(np.float64), y.astype(np.float64))
    error = np.abs(fit.W_std - W_opt * fit.scaler.std).max() / np.abs(fit.W_std).max()
    assert error <= tol


@pytest.mark.parametrize("case", ["constant feature", "collinear features", "exact fit"])
def test_degenerate_data_still_converge_in_float64(case):
    # The certificate is taken on the directions the features span and against at least an
    # exact fit's MSE: degenerate data must not stop the run's model from being promoted.
    X, y = correlated_data(200, 1, seed=3)
    if case == "constant feature":
        X[:, 1] = 7.25
    elif case == "collinear features":
        X[:, 2] = 2.0 * X[:, 0] - 0.5 * X[:, 1] + 3.0
    else:
        y = X @ [[0.1], [3.0], [20.0]] + 4.0
    fit = fit_linear_regression(
        torch.from_numpy(X), torch.from_numpy(y), max_epochs=50_000, tol=1e-9, seed=0
    )
    assert fit.converged, fit.stop_reason
    assert np.isfinite(fit.W).all()


def test_a_step_just_above_two_over_l_fails_as_diverged_not_flat():
    # preconditioned, L = 2/k: lr 1.05 grows the loss slowly, long before anything overflows
    X, y = correlated_data(300, 1, seed=6)
    with pytest.raises(TrainingError, match=r"diverged at epoch \d+: the loss rose"):
        fit_linear_regression(torch.from_numpy(X), torch.from_numpy(y), lr=1.05,
                              max_epochs=10_000, tol=1e-9, seed=0)  # fmt: skip


def test_a_constant_target_beside_a_real_one_converges():
    X, y = correlated_data(300, 1, seed=7)
    y = np.column_stack([y[:, 0], np.full(len(y), 5.0)])
    fit = fit_linear_regression(
        torch.from_numpy(X + 1e3), torch.from_numpy(y), max_epochs=20_000, tol=1e-9, seed=0
    )
    assert fit.converged, fit.stop_reason
    np.testing.assert_allclose(fit.W[1], 0.0, atol=1e-12)
    assert fit.b[1] == pytest.approx(5.0, rel=1e-14)


def test_nearly_dependent_features_get_one_answer_from_every_solve():
    # total = a + c stored in float64, a with a large offset: dependent to ~1e-12 of the scale.
    # The least-squares estimate and gradient descent take the same directions as spanned.
    rng = np.random.default_rng(8)
    a = 1e5 + rng.normal(size=400)
    c = rng.normal(size=400)
    X = np.column_stack([a, c, a + c])
    y = (0.5 * a + 2 * c + rng.normal(0, 0.1, 400))[:, None]
    m = moments_of(X, y)
    assert degeneracy(m, ("a", "c", "total")).startswith("collinear")
    fit = fit_linear_regression(torch.from_numpy(X), torch.from_numpy(y), max_epochs=20_000,
                                tol=1e-9, seed=0)  # fmt: skip
    W, b = least_squares_of_moments(m)
    np.testing.assert_allclose(fit.W, W, rtol=1e-6, atol=1e-9)
    fitted = X @ W.T + b
    np.testing.assert_allclose(X @ fit.W.T + fit.b, fitted, rtol=1e-9)
