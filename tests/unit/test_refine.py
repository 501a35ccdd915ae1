"""The polish of the last digits: extended-precision Newton steps over the rows take least
squares past float64's limit on large-residual, ill-conditioned data, and leave what the factor
already solves alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.ingest.stats import least_squares_of_moments, moments_of
from tasks.model.descent import fit_linear_regression
from tasks.model.refine import refine
from tests.strd import load, lres, worst_lre


def rows(name: str):
    dataset = load(name)
    frame = pd.read_csv(dataset.path, float_precision="round_trip")
    X = frame[list(dataset.features)].to_numpy(np.float64)
    return dataset, X, frame[[dataset.target]].to_numpy(np.float64)


def digits(dataset, W, b) -> float:
    return worst_lre(dict(zip(dataset.terms, [*W[0], b[0]], strict=True)), dataset.estimate)


@pytest.mark.parametrize("name", ["Wampler4", "Wampler5"])
def test_newton_steps_in_extended_precision_pass_the_factors_float64_limit(name):
    dataset, X, y = rows(name)
    m = moments_of(X, y)
    W, b = least_squares_of_moments(m)
    assert digits(dataset, W, b) < 8  # float64's limit here, whatever the factorization
    W2, b2 = refine(X, y, m, W, b)
    estimates = dict(zip(dataset.terms, [*W2[0], b2[0]], strict=True))
    assert worst_lre(estimates, dataset.estimate) >= 9, lres(estimates, dataset.estimate)


def test_the_polished_model_is_certified_and_says_so():
    dataset, X, y = rows("Wampler5")
    fit = fit_linear_regression(
        torch.from_numpy(X), torch.from_numpy(y), max_epochs=20_000, tol=1e-9, seed=0
    )
    assert fit.converged, fit.stop_reason
    assert "polished" in fit.stop_reason
    assert fit.coefficient_error <= 1e-9
    assert digits(dataset, fit.W, fit.b) >= 9
    assert digits(dataset, *fit.optimum) >= 9
    # the raw and standardized weights stay one model
    np.testing.assert_allclose(fit.W_std, fit.W * fit.scaler.std, rtol=1e-15)


def test_collinear_features_are_left_to_the_minimum_norm_solve():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 9, (50, 2)).astype(np.float64)
    X = np.column_stack([X, 2 * X[:, 0] - X[:, 1]])
    y = X[:, :1] + rng.normal(size=(50, 1))
    m = moments_of(X, y)
    assert refine(X, y, m, *least_squares_of_moments(m)) is None


def test_features_too_ill_conditioned_for_the_steps_to_converge_keep_the_factors_solve():
    # Filip (degree 10, cond ~1e9 scaled): a step would shrink the error by eps * cond^2 ~ 1e2,
    # that is grow it
    _, X, y = rows("Filip")
    m = moments_of(X, y)
    assert refine(X, y, m, *least_squares_of_moments(m)) is None
