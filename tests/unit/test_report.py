"""Report plots and tables: a run without holdout rows draws its plots without matplotlib
warnings; coefficients are shown per feature standard deviation beside the raw scale."""

from __future__ import annotations

import warnings

import pandas as pd

from tasks.model.evaluate import INTERCEPT
from tasks.outputs.plots import (
    plot_coefficients,
    plot_history,
    plot_predicted_vs_actual,
    plot_residuals,
)
from tasks.outputs.report import coefficient_markdown


def test_plots_of_a_run_without_holdout_rows_raise_no_warnings():
    train_only = pd.DataFrame(
        {"split": ["train"] * 3, "y": [1.0, 2.0, 3.0], "predicted_y": [1.1, 1.9, 3.2]}
    ).assign(residual_y=lambda f: f["y"] - f["predicted_y"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_residuals(train_only, ("y",))
        plot_predicted_vs_actual(train_only, ("y",))
        figure = plot_history(pd.DataFrame(columns=["run_id", "target", "mse"]))
    assert figure.axes[0].get_legend() is None


def coefficient(feature, estimate, sd, target="y"):
    return {
        "target": target, "feature": feature, "weight": estimate, "ls_weight": estimate,
        "std_error": 0.1, "ci_low": estimate - 0.2, "ci_high": estimate + 0.2, "p_value": 0.01,
        "robust_std_error": 0.1, "confidence": 0.95, "note": None, "scaler_std": sd,
    }  # fmt: skip


def test_coefficients_per_feature_sd_compare_features_of_different_units():
    # income in thousands (sd 20) beside a price (sd 0.1): raw 0.15 and -10, per SD 3 and -1
    coefficients = [
        coefficient("income", 0.15, 20.0),
        coefficient("price", -10.0, 0.1),
        coefficient(INTERCEPT, 8.0, None),
    ]
    table = "\n".join(coefficient_markdown(coefficients))
    assert "| estimate | per feature SD |" in table
    assert "| y | income | 0.15 | 3 |" in table
    assert "| y | price | -10 | -1 |" in table
    assert f"| y | {INTERCEPT} | 8 |  |" in table
    figure = plot_coefficients(pd.DataFrame.from_records(coefficients))
    raw, per_sd = figure.axes
    assert raw.get_title() == "y: 95% intervals"
    assert per_sd.get_title() == "y: per feature SD"
    (points,) = [line for line in per_sd.get_lines() if line.get_marker() == "o"]
    assert sorted(points.get_xdata()) == [-1.0, 3.0]
