"""Report plots: a run without holdout rows draws its plots without matplotlib warnings."""

from __future__ import annotations

import warnings

import pandas as pd

from tasks.outputs.plots import plot_history, plot_predicted_vs_actual, plot_residuals


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
