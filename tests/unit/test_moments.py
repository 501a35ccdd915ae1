"""The statistics path and the direct (row-wise autograd) path agree: same loss, same
gradients, same trained weights; partial statistics add up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.ingest.stats import moments_of
from tasks.model.train import (
    descend,
    direct_objective,
    fit_from_moments,
    fit_linear_regression,
    moments_objective,
)
from tests.reference import least_squares


def data(n=500, d=3, k=2, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 1))
    X = 40 + 10 * base + rng.normal(0, 1, (n, d)) * np.array([6.0, 4.0, 3.0])[:d]
    y = X @ rng.normal(size=(d, k)) + rng.normal(size=k) + rng.normal(0, 0.3, (n, k))
    return torch.from_numpy(X), torch.from_numpy(y)


@pytest.mark.parametrize("seed", range(5))
def test_same_loss_and_gradients_at_random_parameters(seed):
    X, y = data(seed=seed)
    direct, stats = direct_objective(X, y), moments_objective(moments_of(X, y))
    np.testing.assert_allclose(stats.scaler.mean, direct.scaler.mean, rtol=1e-12)
    np.testing.assert_allclose(stats.scaler.std, direct.scaler.std, rtol=1e-9)
    assert pytest.approx(direct.L, rel=1e-9) == stats.L
    assert stats.mu == pytest.approx(direct.mu, rel=1e-6)
    rng = np.random.default_rng(seed + 100)
    for _ in range(3):
        W0 = torch.from_numpy(rng.normal(size=direct.shape))
        b0 = torch.from_numpy(rng.normal(size=direct.shape[0]) * 10)
        grads = []
        for objective in (direct, stats):
            W, b = W0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
            loss = objective.loss(W, b)
            loss.backward()
            grads.append((loss.item(), W.grad.clone(), b.grad.clone()))
        (l1, gW1, gb1), (l2, gW2, gb2) = grads
        assert l2 == pytest.approx(l1, rel=1e-10)
        torch.testing.assert_close(gW2, gW1, rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(gb2, gb1, rtol=1e-8, atol=1e-9)


def test_same_trained_weights_within_1e_9_in_float64():
    X, y = data()
    direct = descend(direct_objective(X, y), None, 300, 1e-30, seed=4)
    stats = descend(moments_objective(moments_of(X, y)), None, 300, 1e-30, seed=4)
    assert direct.epochs == 300
    assert stats.epochs == 300
    np.testing.assert_allclose(stats.W, direct.W, rtol=1e-9)
    np.testing.assert_allclose(stats.b, direct.b, rtol=1e-9)


def test_statistics_path_reaches_least_squares():
    X, y = data(k=1)
    fit = fit_from_moments(moments_of(X, y), max_epochs=100_000, tol=1e-13, seed=0)
    W, b = least_squares(X.numpy(), y.numpy())
    X64, y64 = X.numpy(), y.numpy()
    optimum = ((X64 @ W.T + b - y64) ** 2).mean()
    trained = ((X64 @ fit.W.T + fit.b - y64) ** 2).mean()
    assert (trained - optimum) / optimum < 1e-9
    direct = fit_linear_regression(X, y, max_epochs=100_000, tol=1e-13, seed=0)
    assert fit.converged
    assert direct.converged


def test_partial_statistics_add_up_to_the_whole():
    X, y = data(n=1000)
    whole = moments_of(X, y)
    parts = moments_of(X[:300], y[:300]) + moments_of(X[300:750], y[300:750])
    parts = parts + moments_of(X[750:], y[750:])
    assert parts.n == whole.n
    for name in ("sum_x", "sum_y", "xtx", "xty", "yty"):
        np.testing.assert_allclose(getattr(parts, name), getattr(whole, name), rtol=1e-12)


def test_statistics_must_be_float64_to_be_right():
    # Float32 accumulation loses digits on large sums: the reason the statistics are float64.
    rng = np.random.default_rng(0)
    x = rng.normal(40, 10, 2_000_000).astype(np.float32)
    exact = (x.astype(np.float64) ** 2).sum()
    naive = np.cumsum(x * x, dtype=np.float32)[-1]
    assert abs(naive - exact) / exact > 1e-5
    assert moments_of(x[:, None], x[:, None]).xtx[0, 0] == pytest.approx(exact, rel=1e-12)
