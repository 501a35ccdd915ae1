"""Evaluation: deterministic split, metrics that agree with the predictions, weights table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from tasks.ingest.split import hash_text, split_holdout
from tasks.ingest.stats import least_squares_of_moments, moments_of
from tasks.model.descent import fit_linear_regression
from tasks.model.evaluate import (
    INTERCEPT,
    estimate_warnings,
    fit_warnings,
    metrics_from_sums,
    weights_frame,
    zero_sums,
)
from tasks.model.inference import Inference, infer, meat_of_rows
from tests.reference import least_squares


def frame(n=500, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "country": [f"C{i}" for i in range(n)],
            "x": rng.uniform(1, 10, n),
            "y": rng.uniform(1, 10, n),
            "source_file": "f.csv",
            "source_line": np.arange(2, n + 2),
        }
    )


def test_split_is_deterministic_and_follows_the_country_not_its_position_or_file():
    df = frame(2000)
    mask = split_holdout(df["country"], 0.2, seed=1)
    assert 0.16 < mask.mean() < 0.24
    np.testing.assert_array_equal(mask, split_holdout(df["country"], 0.2, seed=1))
    shuffled = df.sample(frac=1.0, random_state=3)
    np.testing.assert_array_equal(
        split_holdout(shuffled["country"], 0.2, seed=1), mask[shuffled.index.to_numpy()]
    )
    # pandas text, Arrow text and a slice of it hash alike (the streaming path hashes Arrow)
    arrow = pa.array(df["country"].tolist(), pa.string())
    np.testing.assert_array_equal(split_holdout(arrow, 0.2, seed=1), mask)
    np.testing.assert_array_equal(split_holdout(arrow.slice(7, 50), 0.2, seed=1), mask[7:57])
    assert (split_holdout(df["country"], 0.2, seed=2) != mask).any()
    assert not split_holdout(df["country"], 0.0, seed=1).any()


def test_text_hash_separates_near_identical_ids():
    ids = ["", "a", "b", "ab", "ba", "a" * 1000, "a" * 999 + "b", "é", "e\u0301", "C1", "C01"]
    hashes = hash_text(pa.array(ids, pa.string()), seed=0)
    assert len(set(hashes.tolist())) == len(ids)
    assert hash_text(pa.array([None], pa.string()), seed=0)[0] == hashes[0]
    assert (hash_text(pa.array(ids, pa.string()), seed=1) != hashes).all()


def inference_of(X, y, features, targets) -> Inference:
    """The inference of the least-squares fit of y [N, k] on X [N, d], from the rows."""
    m = moments_of(X, y)
    W, b = least_squares_of_moments(m)
    residuals = y - (X @ W.T + b)
    meat = meat_of_rows(X, residuals, m.mean_x)
    return infer(m, (residuals**2).sum(axis=0), meat, features, targets, 0.95)


def sums_of(df, is_holdout, fit, W_opt, b_opt, train_mean):
    """Per-split sums as pass 2 adds them up, computed here from the frame."""
    sums = zero_sums(1)
    for split, mask in (("train", ~is_holdout), ("holdout", is_holdout)):
        x, y = df.loc[mask, ["x"]].to_numpy(), df.loc[mask, ["y"]].to_numpy()
        sums[split]["rows"] = int(mask.sum())
        sums[split]["sse"] = ((y - (x @ fit.W.T + fit.b)) ** 2).sum(axis=0)
        sums[split]["sse_baseline"] = ((y - train_mean) ** 2).sum(axis=0)
        sums[split]["sse_optimum"] = ((y - (x @ W_opt.T + b_opt)) ** 2).sum(axis=0)
    return sums


def test_metrics_from_sums_are_mse_r2_and_the_gap_to_the_optimum():
    df = frame()
    df["y"] = 3 * df["x"] + 1 + np.random.default_rng(1).normal(0, 0.5, len(df))
    is_holdout = split_holdout(df["country"], 0.25, seed=0)
    train = df[~is_holdout]
    X = torch.tensor(train[["x"]].to_numpy())
    y = torch.tensor(train[["y"]].to_numpy())
    fit = fit_linear_regression(X, y, max_epochs=5000, tol=1e-12, seed=0)
    W_opt, b_opt = least_squares(train[["x"]].to_numpy(), train[["y"]].to_numpy())
    sums = sums_of(df, is_holdout, fit, W_opt, b_opt, train["y"].mean())
    inference = inference_of(train[["x"]].to_numpy(), train[["y"]].to_numpy(), ("x",), ("y",))
    metrics = metrics_from_sums(sums, fit, ("y",), inference)

    assert metrics["split"].tolist() == ["train", "holdout"]
    for split, row in metrics.set_index("split").iterrows():
        part = df[is_holdout] if split == "holdout" else train
        residual = part["y"] - (part["x"] * fit.W[0, 0] + fit.b[0])
        assert row["rows"] == len(part)
        assert row["mse"] == pytest.approx((residual**2).mean(), rel=1e-12)
        baseline = ((part["y"] - train["y"].mean()) ** 2).mean()
        assert row["baseline_mse"] == pytest.approx(baseline, rel=1e-12)
        assert row["r2"] == pytest.approx(1 - row["mse"] / baseline)
    train_row = metrics.set_index("split").loc["train"]
    assert abs(train_row["relative_gap"]) < 1e-9
    assert train_row["optimum_mse"] == pytest.approx(
        ((train["x"] * W_opt[0, 0] + b_opt[0] - train["y"]) ** 2).mean(), rel=1e-12
    )
    assert bool(train_row["converged"]) == fit.converged
    assert train_row["dof"] == len(train) - 2
    assert train_row["residual_std_error"] == pytest.approx(
        np.sqrt(train_row["optimum_mse"] * len(train) / (len(train) - 2)), rel=1e-12
    )
    holdout_row = metrics.set_index("split").loc["holdout"]
    assert holdout_row[["residual_std_error", "adj_r2", "f_stat", "f_p_value", "dof"]].isna().all()


def test_empty_holdout_split_is_left_out():
    df = frame(20)
    fit = fit_linear_regression(
        torch.tensor(df[["x"]].to_numpy()),
        torch.tensor(df[["y"]].to_numpy()),
        max_epochs=100,
        tol=1e-9,
        seed=0,
    )
    W_opt, b_opt = least_squares(df[["x"]].to_numpy(), df[["y"]].to_numpy())
    sums = sums_of(df, np.zeros(20, bool), fit, W_opt, b_opt, df["y"].mean())
    inference = inference_of(df[["x"]].to_numpy(), df[["y"]].to_numpy(), ("x",), ("y",))
    assert metrics_from_sums(sums, fit, ("y",), inference)["split"].tolist() == ["train"]


def test_too_few_training_rows_for_the_parameters_are_named():
    (warning,) = fit_warnings(train_rows=4, n_features=3)
    assert warning.startswith("only 4 training rows for 4 parameters per target")
    assert fit_warnings(train_rows=39, n_features=3)
    assert fit_warnings(train_rows=40, n_features=3) == []


def test_weights_table_has_a_row_per_target_and_term():
    df = frame(50)
    X = torch.tensor(df[["x", "y"]].to_numpy())
    y = torch.tensor(np.column_stack([df["x"] + df["y"], df["x"] - df["y"]]))
    fit = fit_linear_regression(X, y, max_epochs=3000, tol=1e-12, seed=0)
    noisy = y.numpy() + np.random.default_rng(2).normal(0, 0.1, y.shape)
    inference = inference_of(X.numpy(), noisy, ("x", "y"), ("s", "d"))
    weights = weights_frame(fit, inference, ("x", "y"), ("s", "d"))
    assert weights[["target", "feature"]].values.tolist() == [
        ["s", "x"],
        ["s", "y"],
        ["s", INTERCEPT],
        ["d", "x"],
        ["d", "y"],
        ["d", INTERCEPT],
    ]
    w = weights.set_index(["target", "feature"])["weight"]
    assert w[("s", "x")] == pytest.approx(1.0, abs=1e-6)
    assert w[("d", "y")] == pytest.approx(-1.0, abs=1e-6)
    assert weights["scaler_mean"].isna().tolist() == [False, False, True] * 2


def test_without_an_id_column_a_row_keeps_its_split_when_the_file_is_edited_elsewhere(tmp_path):
    from tests.conftest import sales_rows
    from tests.pipeline import config, kept_rows, scan_paths

    header = "avg_income_k,price_k,tax_k,units_sold_k"
    rows = [line.split(",", 1)[1] for line in sales_rows(300, seed=4)]
    first = tmp_path / "first.csv"
    first.write_text("\n".join([header, *rows]) + "\n")
    edited = [*reversed(rows[10:]), "55.5,1.1,0.2,12.0", *rows[:5]]  # reordered, cut, added
    second = tmp_path / "second.csv"
    second.write_text("\n".join([header, *edited]) + "\n")
    run = config("tiny blocks", id_column=None)
    by_values = []
    for i, path in enumerate((first, second)):
        kept = kept_rows(scan_paths([path], run, tmp_path / f"s{i}"))
        assert "country" not in kept.columns
        by_values.append(kept.set_index(list(run.values))["holdout"])
    common = by_values[0].index.intersection(by_values[1].index)
    assert len(common) == 295
    assert (by_values[0][common] == by_values[1][common]).all()
    assert 0.1 < by_values[0].mean() < 0.3  # a real split, not every row on one side


def test_a_weight_far_from_the_least_squares_estimate_in_standard_errors_is_named():
    weights = pd.DataFrame(
        {
            "target": ["y", "y"],
            "feature": ["x", INTERCEPT],
            "weight": [1.0, 2.0],
            "ls_weight": [1.0 + 0.05, 2.0 + 0.2],
            "std_error": [1.0, 1.0],
        }
    )
    (warning,) = estimate_warnings(weights)
    assert warning.startswith("y (intercept): gradient descent stopped 0.2 standard errors")
    assert estimate_warnings(weights.assign(std_error=np.nan)) == []  # no inference: no check
