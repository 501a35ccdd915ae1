"""The statistics path and the direct (row-wise autograd) path agree: same loss, same
gradients, same trained weights; partial statistics add up."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.ingest.stats import (
    least_squares_of_moments,
    moments_mse,
    moments_of,
    scaler_of_moments,
    sum_moments,
)
from tasks.model.descent import descend, fit_from_moments, fit_linear_regression
from tasks.model.objective import direct_objective, moments_objective
from tests.reference import least_squares
from tests.strd import load, lres, worst_lre


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
    assert pytest.approx(direct.preconditioner.L, rel=1e-9) == stats.preconditioner.L
    assert stats.preconditioner.mu == pytest.approx(direct.preconditioner.mu, rel=1e-6)
    np.testing.assert_allclose(stats.preconditioner.P, direct.preconditioner.P, rtol=1e-9)
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
    # a tol no float64 certificate reaches: both descend to their rounding floor and stall
    direct = descend(direct_objective(X, y), None, 300, 1e-30, seed=4)
    stats = descend(moments_objective(moments_of(X, y)), None, 300, 1e-30, seed=4)
    assert "loss flat" in direct.stop_reason
    assert "loss flat" in stats.stop_reason
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
    for name in ("mean_x", "mean_y", "sxx", "sxy", "syy"):
        np.testing.assert_allclose(getattr(parts, name), getattr(whole, name), rtol=1e-12)


def test_statistics_must_be_float64_to_be_right():
    # Float32 accumulation loses digits on large sums: the reason the statistics are float64.
    rng = np.random.default_rng(0)
    x = rng.normal(40, 10, 2_000_000).astype(np.float32)
    x64 = x.astype(np.float64)
    exact = ((x64 - x64.mean()) ** 2).sum()
    deviations = x - np.float32(x64.mean())
    naive = np.cumsum(deviations * deviations, dtype=np.float32)[-1]
    assert abs(naive - exact) / exact > 1e-5
    assert moments_of(x[:, None], x[:, None]).sxx[0, 0] == pytest.approx(exact, rel=1e-12)


def offset_rows(n: int = 3000, seed: int = 0):
    """Columns whose offset dwarfs their spread: epoch milliseconds over one hour, a year, and
    targets around 1e6 with a spread of 0.01."""
    rng = np.random.default_rng(seed)
    t = 1.7e12 + np.sort(rng.integers(0, 3_600_000, n)).astype(np.float64)
    year = rng.integers(2000, 2025, n).astype(np.float64)
    x = rng.normal(size=n)
    y = 1e6 + 2e-9 * (t - 1.7e12) + 0.003 * x + rng.normal(0, 0.01, n)
    return np.column_stack([t, year, x]), y[:, None]


def cut(n: int, how: str, rng) -> list[slice]:
    bounds = {
        "whole": [0, n],
        "rows one by one at the start": [0, 1, 2, 3, 17, n],
        "random": [0, *np.sort(rng.choice(np.arange(1, n), 40, replace=False)), n],
    }[how]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize("how", ["whole", "rows one by one at the start", "random"])
@pytest.mark.parametrize("order", ["forward", "backward", "shuffled"])
def test_statistics_of_offset_columns_merge_the_same_however_the_rows_are_cut(how, order):
    X, y = offset_rows()
    rng = np.random.default_rng(1)
    parts = [moments_of(X[s], y[s]) for s in cut(len(X), how, rng)]
    if order == "backward":
        parts = parts[::-1]
    elif order == "shuffled":
        parts = [parts[i] for i in rng.permutation(len(parts))]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged + part
    # what the statistics are for, against numpy on the rows (centred first: raw, the design
    # of a timestamp and an intercept is too ill-conditioned for any solver)
    scaler = scaler_of_moments(merged)
    np.testing.assert_allclose(scaler.mean, X.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(scaler.std, X.std(axis=0), rtol=1e-12)
    Xc, yc = X - X.mean(axis=0), y - y.mean(axis=0)
    W_ref = np.linalg.lstsq(Xc, yc, rcond=None)[0].T
    W, b = least_squares_of_moments(merged)
    np.testing.assert_allclose(W, W_ref, rtol=1e-7)
    mse = ((yc - Xc @ W_ref.T) ** 2).mean(axis=0)
    assert 5e-5 < mse[0] < 2e-4  # the noise
    b_ref = y.mean(axis=0) - W_ref @ X.mean(axis=0)
    np.testing.assert_allclose(moments_mse(merged, W_ref, b_ref), mse, rtol=1e-7)
    np.testing.assert_allclose(b, b_ref, rtol=1e-12)
    whole = moments_of(X, y)
    for name in ("mean_x", "mean_y", "sxx", "sxy", "syy"):
        np.testing.assert_allclose(
            getattr(merged, name), getattr(whole, name), rtol=1e-12, err_msg=name
        )


def test_the_factor_of_parts_is_the_factor_of_the_whole():
    X, y = data(n=1000)
    whole = moments_of(X, y)
    rng = np.random.default_rng(3)
    parts = [moments_of(X[s], y[s]) for s in cut(len(X), "random", rng)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged + part
    # R is unique up to the signs of its rows, and both keep the diagonal >= 0
    np.testing.assert_allclose(merged.r, whole.r, rtol=1e-10, atol=1e-9 * np.abs(whole.r).max())
    assert np.allclose(np.tril(merged.r, -1), 0.0)
    assert (np.diag(merged.r) >= 0).all()


@pytest.mark.parametrize("name", ["Longley", "Wampler3"])
def test_least_squares_from_blocks_of_a_few_rows_keep_nists_digits(name):
    # Longley (cond ~1e2 scaled) and a quintic (cond ~1e3 scaled, 1e14 raw): sums of products
    # square those; the factor merged from blocks of one to five rows does not
    dataset = load(name)
    frame = pd.read_csv(dataset.path, float_precision="round_trip")
    X = frame[list(dataset.features)].to_numpy(np.float64)
    y = frame[[dataset.target]].to_numpy(np.float64)
    rng = np.random.default_rng(0)
    bounds = np.cumsum([0, *rng.integers(1, 6, len(X))])
    parts = [moments_of(X[a:b], y[a:b]) for a, b in itertools.pairwise(bounds) if a < len(X)]
    W, b = least_squares_of_moments(sum_moments(parts))
    estimates = dict(zip(dataset.terms, [*W[0], b[0]], strict=True))
    assert worst_lre(estimates, dataset.estimate) >= 9.5, lres(estimates, dataset.estimate)
