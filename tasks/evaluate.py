"""Evaluate: per-target metrics from the sums pass 2 adds up over the rows, the weights table,
and warnings about the fit itself."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

SPLITS = ("train", "holdout")
INTERCEPT = "(intercept)"
# Fewer training rows than this per fitted parameter (features + intercept, per target) and the
# model can fit the noise: the run says so (manifest, report, summary).
MIN_ROWS_PER_PARAMETER = 10


def relative_gap(mse: np.ndarray, optimum: np.ndarray) -> np.ndarray:
    """(mse - optimum) / optimum, with a floor on the denominator for exact fits."""
    return (mse - optimum) / np.maximum(optimum, 1e-300)


def zero_sums(k: int) -> dict[str, dict[str, Any]]:
    """Per-split sums for k targets before any row: rows, and the squared errors of the model
    (sse), of the training mean (sse_baseline) and of the least-squares optimum (sse_optimum)."""
    return {
        split: {
            "rows": 0,
            "sse": np.zeros(k),
            "sse_baseline": np.zeros(k),
            "sse_optimum": np.zeros(k),
        }
        for split in SPLITS
    }


def add_sums(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per-split sums of two sets of rows added."""
    return {split: {key: a[split][key] + b[split][key] for key in a[split]} for split in a}


def metrics_from_sums(
    sums: dict[str, dict[str, Any]], fit: Any, targets: tuple[str, ...]
) -> pd.DataFrame:
    """The metrics table (see metrics_frame) from per-split sums (see zero_sums)."""
    per_split = {}
    for split in SPLITS:
        part = sums[split]
        rows = max(part["rows"], 1)
        per_split[split] = (
            part["rows"],
            part["sse"] / rows,
            part["sse_baseline"] / rows,
            part["sse_optimum"] / rows,
        )
    return metrics_frame(per_split, fit, targets)


def metrics_frame(
    per_split: dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    fit: Any,
    targets: tuple[str, ...],
) -> pd.DataFrame:
    """(rows, mse, baseline_mse, optimum_mse) per split -> per target and split: mse,
    baseline_mse (predicting the training mean), r2 (1 - mse / baseline_mse), rows,
    optimum_mse (the least-squares model fitted on the training split), relative_gap to it,
    and how training went. A split with no rows is left out."""
    records = []
    for split, (rows, mse, baseline, optimum) in per_split.items():
        if not rows:
            continue
        gap = relative_gap(mse, optimum)
        for j, target in enumerate(targets):
            records.append(
                {
                    "target": target,
                    "split": split,
                    "mse": mse[j],
                    "baseline_mse": baseline[j],
                    "r2": 1.0 - mse[j] / baseline[j] if baseline[j] > 0 else np.nan,
                    "rows": rows,
                    "optimum_mse": optimum[j],
                    "relative_gap": gap[j],
                    "epochs": fit.epochs,
                    "step_size": fit.lr,
                    "converged": fit.converged,
                }
            )
    return pd.DataFrame.from_records(records)


def weights_frame(fit: Any, features: tuple[str, ...], targets: tuple[str, ...]) -> pd.DataFrame:
    """One row per target and term: raw-scale weight, standardized weight, scaler mean/std
    (null for the intercept)."""
    records = []
    for j, target in enumerate(targets):
        for i, feature in enumerate(features):
            records.append(
                (
                    target,
                    feature,
                    fit.W[j, i],
                    fit.W_std[j, i],
                    fit.scaler.mean[i],
                    fit.scaler.std[i],
                )
            )
        records.append((target, INTERCEPT, fit.b[j], fit.b_std[j], np.nan, np.nan))
    return pd.DataFrame.from_records(
        records,
        columns=["target", "feature", "weight", "standardized_weight", "scaler_mean", "scaler_std"],
    )


def fit_warnings(train_rows: int, n_features: int) -> list[str]:
    """Warnings about the fit itself: too few training rows for the parameters."""
    parameters = n_features + 1
    if train_rows >= MIN_ROWS_PER_PARAMETER * parameters:
        return []
    return [
        f"only {train_rows} training rows for {parameters} parameters per target (fewer than "
        f"{MIN_ROWS_PER_PARAMETER} per parameter): the model can fit noise and its holdout "
        "metrics are unreliable; train on more rows"
    ]
