"""Inference of the least-squares fit against statsmodels OLS: every number of the weights and
metrics tables and the scores' prediction intervals, on random data with several targets, on a
file streamed in tiny blocks and byte ranges, and the degenerate cases, whose numbers are null
with a note while the point estimates go on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from tasks.ingest.stats import least_squares_of_moments, moments_of
from tasks.model.descent import fit_from_moments
from tasks.model.evaluate import (
    INTERCEPT,
    fit_inference,
    metrics_frame,
    weights_frame,
    with_fit_statistics,
)
from tasks.model.inference import infer, meat_of_rows
from tasks.outputs.predict import Scoring, interval_of, predict_parts
from tasks.outputs.promote import model_from_weights
from tests.pipeline import config, kept_rows, scan_paths

RTOL = 1e-6
INFERENCE = ["std_error", "t_stat", "p_value", "ci_low", "ci_high", "robust_std_error"]


def heteroskedastic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """X [n, 3] on different scales and two targets whose noise grows with the first feature
    (so the HC1 errors differ from the classical ones)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [2.0, 5.0, 0.3] + [10.0, 40.0, 1.0]
    noise = rng.normal(size=(n, 2)) * (0.2 + np.abs(X[:, :1] - 10.0))
    y = X @ np.array([[1.5, -0.2, 0.0], [0.0, 0.7, -3.0]]).T + [4.0, -1.0] + noise
    return X, y


def fitted(
    X: np.ndarray, y: np.ndarray, features, targets, confidence: float = 0.95, epochs=20_000
):
    """(weights table, metrics table) from the rows, as a run computes them from its sums."""
    m = moments_of(X, y)
    fit = fit_from_moments(m, max_epochs=epochs, tol=1e-12, seed=0)
    W, b = least_squares_of_moments(m)
    residuals = y - (X @ W.T + b)
    meat = meat_of_rows(X, residuals, X.mean(axis=0))
    sse = (residuals**2).sum(axis=0)
    inference = infer(m, sse, meat, features, targets, confidence)
    mse = sse / m.n
    metrics = metrics_frame({"train": (m.n, mse, mse, mse)}, fit, targets)
    return weights_frame(fit, inference, features, targets), with_fit_statistics(metrics, inference)


def assert_matches_statsmodels(weights, X, y, targets, confidence=0.95, metrics=None):
    design = sm.add_constant(X, prepend=False)  # the intercept last, as the table orders terms
    for j, target in enumerate(targets):
        ols = sm.OLS(y[:, j], design).fit()
        robust = sm.OLS(y[:, j], design).fit(cov_type="HC1")
        rows = weights[weights["target"] == target]
        interval = ols.conf_int(1 - confidence)
        expected = {
            "ls_weight": ols.params,
            "std_error": ols.bse,
            "t_stat": ols.tvalues,
            "p_value": ols.pvalues,
            "ci_low": interval[:, 0],
            "ci_high": interval[:, 1],
            "robust_std_error": robust.bse,
        }
        for name, values in expected.items():
            np.testing.assert_allclose(rows[name], values, rtol=RTOL, err_msg=name)
        # gradient descent's weight: the same optimum, far within a standard error
        assert (np.abs(rows["weight"] - ols.params) < 1e-3 * ols.bse).all()
        np.testing.assert_allclose(rows["residual_variance"], ols.scale, rtol=RTOL)
        covariance = np.stack(rows["covariance"].to_numpy())
        np.testing.assert_allclose(covariance, ols.cov_params(), rtol=RTOL, atol=1e-14)
        assert (rows["dof"] == ols.df_resid).all()
        assert rows["note"].isna().all()
        if metrics is not None:
            row = metrics[(metrics["target"] == target) & (metrics["split"] == "train")].iloc[0]
            assert row["residual_std_error"] == pytest.approx(np.sqrt(ols.scale), rel=RTOL)
            assert row["adj_r2"] == pytest.approx(ols.rsquared_adj, rel=RTOL)
            assert row["f_stat"] == pytest.approx(ols.fvalue, rel=RTOL)
            assert row["f_p_value"] == pytest.approx(ols.f_pvalue, rel=RTOL, abs=1e-300)
            assert row["dof"] == ols.df_resid


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_every_number_agrees_with_statsmodels_for_several_targets(seed, confidence):
    X, y = heteroskedastic(150, seed)
    weights, metrics = fitted(X, y, ("a", "b", "c"), ("y1", "y2"), confidence)
    assert weights["feature"].tolist() == ["a", "b", "c", INTERCEPT] * 2
    assert_matches_statsmodels(weights, X, y, ("y1", "y2"), confidence, metrics)
    # HC1 differs from the classical error here: the check above is not one number twice
    assert not np.allclose(weights["robust_std_error"], weights["std_error"], rtol=0.05)


def test_a_file_streamed_in_tiny_blocks_and_ranges_gives_the_same_inference(tmp_path):
    X, y = heteroskedastic(240, 5)
    frame = pd.DataFrame(X, columns=["a", "b", "c"]).assign(y1=y[:, 0], y2=y[:, 1])
    frame.insert(0, "country", [f"C{i}" for i in range(len(frame))])
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False, float_format="%.17g")
    run = config("tiny ranges", features=("a", "b", "c"), targets=("y1", "y2"))
    scan = scan_paths([path], run, tmp_path / "stage")
    assert len(scan.parts[0].spills) > 10  # really streamed in pieces
    fit = fit_from_moments(scan.train, max_epochs=20_000, tol=1e-12, seed=0)
    emitted = predict_parts(scan.parts, Scoring.of(fit, scan), run, tmp_path / "p", "r1")
    weights = weights_frame(
        fit, fit_inference(scan.train, emitted.sums, run), run.features, run.targets
    )

    train = kept_rows(scan).query("not holdout")
    assert len(train) == scan.train.n
    X_train, y_train = train[["a", "b", "c"]].to_numpy(), train[["y1", "y2"]].to_numpy()
    assert_matches_statsmodels(weights, X_train, y_train, run.targets)


def test_prediction_intervals_agree_with_statsmodels_for_new_rows():
    X, y = heteroskedastic(120, 7)
    weights, _ = fitted(X, y, ("a", "b", "c"), ("y1", "y2"), 0.9)
    model = model_from_weights(weights)
    new = heteroskedastic(9, 8)[0]
    low, high = interval_of(new, model.uncertainty, 2)
    for j in range(2):
        ols = sm.OLS(y[:, j], sm.add_constant(X, prepend=False)).fit()
        frame = ols.get_prediction(sm.add_constant(new, prepend=False)).summary_frame(0.1)
        np.testing.assert_allclose(low[:, j], frame["obs_ci_lower"], rtol=RTOL)
        np.testing.assert_allclose(high[:, j], frame["obs_ci_upper"], rtol=RTOL)


def test_a_model_without_covariance_scores_without_intervals():
    X, y = heteroskedastic(50, 1)
    weights, _ = fitted(X, y, ("a", "b", "c"), ("y1", "y2"))
    old = model_from_weights(weights[["target", "feature", "weight"]])  # schema 1 weights
    assert old.uncertainty is None
    low, high = interval_of(X, old.uncertainty, 2)
    assert np.isnan(low).all()
    assert np.isnan(high).all()


def degenerate(case: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = heteroskedastic(40, 3)
    if case == "constant":
        X[:, 1] = 7.25
    elif case == "collinear":
        X[:, 2] = 2.0 * X[:, 0] - 0.5 * X[:, 1] + 3.0
    elif case == "few rows":
        X, y = X[:4], y[:4]  # p + 1 = 4 parameters, no degree of freedom left
    elif case == "exact":
        y[:, 1] = X @ [1.0, 2.0, 3.0] + 4.0
    return X, y


@pytest.mark.parametrize(
    ("case", "targets", "note"),
    [
        ("constant", ("y1", "y2"), "constant on the training rows: b"),
        ("collinear", ("y1", "y2"), "collinear on the training rows: a, b, c"),
        ("few rows", ("y1", "y2"), "only 4 training rows for 4 parameters"),
        ("exact", ("y2",), "zero residual variance: the features fit y2 exactly"),
    ],
)
def test_degenerate_data_is_named_and_its_inference_left_null(case, targets, note):
    X, y = degenerate(case)
    weights, metrics = fitted(X, y, ("a", "b", "c"), ("y1", "y2"))
    assert np.isfinite(weights["weight"]).all()  # training and the estimates go on
    for target in ("y1", "y2"):
        rows = weights[weights["target"] == target]
        if target in targets:
            assert rows["note"].str.startswith(note).all(), rows["note"].tolist()
            assert rows[INFERENCE].isna().all().all()
            assert rows["covariance"].isna().all()
        else:  # the other target of the exact case keeps its inference
            assert rows["note"].isna().all()
            assert rows[INFERENCE].notna().all().all()
    train = metrics[metrics["split"] == "train"].set_index("target")
    assert train.loc[list(targets), ["f_stat", "f_p_value"]].isna().all().all()
    assert train.loc[list(targets), "note"].str.startswith(note).all()


# NIST StRD, Longley (https://www.itl.nist.gov/div898/strd/lls/data/Longley.shtml): certified
# estimates and standard errors, the features in order, then the intercept.
LONGLEY_ESTIMATE = [
    15.0618722713733, -0.358191792925910e-01, -2.02022980381683, -1.03322686717359,
    -0.511041056535807e-01, 1829.15146461355, -3482258.63459582,
]  # fmt: skip
LONGLEY_STD_ERROR = [
    84.9149257747669, 0.334910077722432e-01, 0.488399681651699, 0.214274163161675,
    0.226073200069370, 455.478499142212, 890420.383607373,
]  # fmt: skip


def test_longley_estimates_and_standard_errors_agree_with_the_certified_values():
    # Longley's features are nearly collinear and far from zero (GNP ~ 4e5, YEAR ~ 1950):
    # normal equations of the raw columns lose every digit here, centred ones keep about 8.
    data = sm.datasets.longley.load_pandas()
    features = tuple(data.exog.columns)
    X, y = data.exog.to_numpy(np.float64), data.endog.to_numpy(np.float64)[:, None]
    weights, metrics = fitted(X, y, features, ("TOTEMP",), epochs=1)
    assert weights["feature"].tolist() == [*features, INTERCEPT]
    assert weights["note"].isna().all()
    np.testing.assert_allclose(weights["ls_weight"], LONGLEY_ESTIMATE, rtol=1e-7)
    np.testing.assert_allclose(weights["std_error"], LONGLEY_STD_ERROR, rtol=1e-7)
    ols = sm.OLS(y[:, 0], sm.add_constant(X, prepend=False)).fit()
    np.testing.assert_allclose(weights["ls_weight"], ols.params, rtol=1e-7)
    np.testing.assert_allclose(weights["std_error"], ols.bse, rtol=1e-7)
    assert metrics["residual_std_error"].iloc[0] == pytest.approx(304.854073561965, rel=1e-7)


def test_nearly_collinear_features_keep_their_inference():
    # correlation 0.999: ill-conditioned (the standard errors are large) but not collinear
    rng = np.random.default_rng(2)
    n = 200
    z = rng.normal(size=(n, 2))
    X = np.column_stack([z[:, 0], 0.999 * z[:, 0] + np.sqrt(1 - 0.999**2) * z[:, 1]])
    X = X * [3.0, 0.5] + [20.0, 4.0]
    assert np.corrcoef(X.T)[0, 1] > 0.998
    y = X @ [[0.5], [-2.0]] + 1.0 + rng.normal(0, 0.2, (n, 1))
    weights, _ = fitted(X, y, ("a", "b"), ("y",), epochs=1)
    assert weights["note"].isna().all(), weights["note"].tolist()
    ols = sm.OLS(y[:, 0], sm.add_constant(X, prepend=False)).fit()
    np.testing.assert_allclose(weights["ls_weight"], ols.params, rtol=RTOL)
    np.testing.assert_allclose(weights["std_error"], ols.bse, rtol=RTOL)
    np.testing.assert_allclose(weights["p_value"], ols.pvalues, rtol=RTOL)


@pytest.mark.parametrize("offset", [0.0, 1e9])
def test_a_feature_is_constant_by_its_spread_against_its_size(offset):
    X, y = heteroskedastic(60, 4)
    X[:, 0] = offset + 1e-3 * X[:, 0]  # varies by 1e-12 of 1e9: still a spread
    X[:, 1] = offset + 7.25  # the same value on every row
    weights, _ = fitted(X, y, ("a", "b", "c"), ("y1", "y2"), epochs=1)
    assert (weights["note"] == "constant on the training rows: b (no variation to estimate "
            "from)").all()  # fmt: skip
