"""Plots of a run for its report: PNG bytes, 800 x 500 pixels. The model's plots are drawn from
a uniform sample of the accepted rows (the one pass 1 keeps for the profile's quantiles) as soon
as the model is trained, so they can be drawn while pass 2 writes the predictions."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from schemas.params import RunConfig
from tasks.ingest.scan import Scan
from tasks.model.evaluate import INTERCEPT

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (8, 5)  # inches
DPI = 100  # so every PNG is 800 x 500 pixels
# Rows of the sample the model's plots show.
REPORT_SAMPLE_ROWS = 20_000
# file name -> title, in report order
PLOTS = {
    "coefficients.png": "Coefficients with their confidence intervals",
    "loss.png": "Loss curve",
    "holdout.png": "Predicted vs actual (holdout)",
    "residuals.png": "Residuals",
    "history.png": "Holdout MSE over runs",
}


def report_sample(scan: Scan, W: np.ndarray, b: np.ndarray, features, targets) -> pd.DataFrame:
    """Up to REPORT_SAMPLE_ROWS accepted rows (the smallest sample keys of the profile's
    sample) with each target, its prediction, residual and split."""
    sample = scan.profile.sample
    if sample.rows is None:
        return pd.DataFrame(columns=["split"])
    take = np.argsort(sample.keys, kind="stable")[:REPORT_SAMPLE_ROWS]
    rows = sample.rows[take]
    d = len(features)
    X, y, holdout = rows[:, :d], rows[:, d : d + len(targets)], rows[:, -1] > 0
    predicted = X @ W.T + b
    frame = pd.DataFrame({"split": np.where(holdout, "holdout", "train")})
    for j, target in enumerate(targets):
        frame[target] = y[:, j]
        frame[f"predicted_{target}"] = predicted[:, j]
        frame[f"residual_{target}"] = y[:, j] - predicted[:, j]
    return frame


def model_plots(
    sample: pd.DataFrame, loss_history: list[float], targets: tuple[str, ...]
) -> dict[str, bytes]:
    """The plots of the trained model: loss curve, predicted vs actual, residuals."""
    return {
        "loss.png": png(plot_loss(loss_history)),
        "holdout.png": png(plot_predicted_vs_actual(sample, targets)),
        "residuals.png": png(plot_residuals(sample, targets)),
    }


def _figure() -> Figure:
    """An empty figure of FIGSIZE; matplotlib (0.3 s to import) is loaded by the first plot,
    not by every command that imports the flows."""
    from matplotlib.figure import Figure

    return Figure(figsize=FIGSIZE)


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def plot_loss(loss_history: list[float]) -> Figure:
    figure = _figure()
    ax = figure.subplots()
    ax.semilogy(np.arange(len(loss_history)), loss_history)
    ax.set(title="Training loss (MSE) per epoch", xlabel="epoch", ylabel="train MSE (log)")
    ax.grid(alpha=0.3)
    return figure


def plot_predicted_vs_actual(predictions: pd.DataFrame, targets: tuple[str, ...]) -> Figure:
    figure = _figure()
    axes = np.atleast_1d(figure.subplots(1, len(targets), squeeze=False)[0])
    holdout = predictions[predictions["split"] == "holdout"]
    for ax, target in zip(axes, targets, strict=True):
        actual, predicted = holdout[target], holdout[f"predicted_{target}"]
        ax.scatter(actual, predicted, s=12, alpha=0.7)
        if len(holdout):
            low, high = min(actual.min(), predicted.min()), max(actual.max(), predicted.max())
            ax.plot([low, high], [low, high], color="grey", linewidth=1)
        ax.set(title=f"Holdout: {target}", xlabel="actual", ylabel="predicted")
    return figure


def plot_residuals(predictions: pd.DataFrame, targets: tuple[str, ...]) -> Figure:
    figure = _figure()
    axes = np.atleast_1d(figure.subplots(1, len(targets), squeeze=False)[0])
    for ax, target in zip(axes, targets, strict=True):
        for split in ("train", "holdout"):
            part = predictions.loc[predictions["split"] == split, f"residual_{target}"]
            if len(part):
                ax.hist(part, bins=30, alpha=0.6, label=split, density=True)
        ax.set(title=f"Residuals: {target}", xlabel="actual - predicted", ylabel="density")
        _legend(ax)
    return figure


def _legend(ax) -> None:
    """A legend when something was drawn (matplotlib warns on an empty one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend()


def plot_coefficients(coefficients: pd.DataFrame) -> Figure:
    """The least-squares estimate of every feature's coefficient with its confidence interval,
    one column of panels per target: on the raw scale (per unit of each feature) and, below,
    per standard deviation of each feature, where features of different units compare (the
    intercept, on another scale, is in the report's table)."""
    terms = coefficients[coefficients["feature"] != INTERCEPT]
    targets = list(dict.fromkeys(terms["target"]))
    scaled = "scaler_std" in terms and terms["scaler_std"].notna().all()
    figure = _figure()
    axes = figure.subplots(2 if scaled else 1, max(len(targets), 1), squeeze=False)
    for column, target in enumerate(targets):
        part = terms[terms["target"] == target].iloc[::-1]
        level = part["confidence"].iloc[0] if len(part) else 0.95
        _interval_panel(axes[0][column], part, 1.0, f"{target}: {level:.0%} intervals",
                        "coefficient (raw scale)")  # fmt: skip
        if scaled:
            sd = part["scaler_std"].to_numpy(float)
            _interval_panel(axes[1][column], part, sd, f"{target}: per feature SD",
                            "change for one SD of the feature")  # fmt: skip
    figure.tight_layout()
    return figure


def _interval_panel(ax: Any, part: pd.DataFrame, scale: Any, title: str, xlabel: str) -> None:
    """Estimates times `scale` with their intervals, one row per feature."""
    rows = np.arange(len(part))
    estimate = part["ls_weight"].to_numpy(float) * scale
    low, high = part["ci_low"].to_numpy(float) * scale, part["ci_high"].to_numpy(float) * scale
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.errorbar(estimate, rows, xerr=[estimate - low, high - estimate], fmt="o", capsize=4)
    if np.isnan(low).any():
        ax.text(0.5, 0.02, "no interval: see the note", transform=ax.transAxes, ha="center")
    ax.set_yticks(rows, part["feature"].tolist())
    ax.set(title=title, xlabel=xlabel)
    ax.grid(alpha=0.3, axis="x")


def plot_history(history: pd.DataFrame) -> Figure:
    figure = _figure()
    ax = figure.subplots()
    for target, part in history.groupby("target", sort=False):
        ax.plot(range(len(part)), part["mse"], marker="o", label=target)
        ax.set_xticks(range(len(part)), [r[:15] for r in part["run_id"]], rotation=45, ha="right")
    ax.set(title="Holdout MSE of the last runs", xlabel="run", ylabel="holdout MSE")
    if history.empty:
        ax.text(0.5, 0.5, "no holdout rows in these runs", ha="center", transform=ax.transAxes)
    _legend(ax)
    figure.tight_layout()
    return figure


@task(cache_policy=NONE, task_run_name="plots")
def draw_model_plots(scan: Scan, fit: Any, config: RunConfig) -> dict[str, bytes]:
    """model_plots of the trained model on the report's sample, as a task (it runs while pass 2
    writes the predictions)."""
    sample = report_sample(scan, fit.W, fit.b, config.features, config.targets)
    return model_plots(sample, fit.loss_history, config.targets)
