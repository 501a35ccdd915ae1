"""Evaluate: a deterministic train/holdout split, per-target metrics, and the closed-form
least-squares optimum that certifies gradient descent converged."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from schemas.sales import ID_COLUMN
from tasks.profile import profile_frame, sample_keys
from tasks.split import hash_text
from tasks.train import FitResult

SPLITS = ("train", "holdout")
INTERCEPT = "(intercept)"
# Fewer training rows than this per fitted parameter (features + intercept, per target) and the
# model can fit the noise: the run says so (manifest, report, summary).
MIN_ROWS_PER_PARAMETER = 10


def least_squares(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form optimum of the MSE: X [N, d], y [N, k] -> (W [k, d], b [k]), float64."""
    A = np.column_stack([X.astype(np.float64), np.ones(len(X))])
    solution, *_ = np.linalg.lstsq(A, y.astype(np.float64), rcond=None)
    return solution[:-1].T, solution[-1]


def linear_predict(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """X @ W.T + b in float64."""
    return X.astype(np.float64) @ W.T + b


def mse_per_target(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[N, k] predictions and targets -> MSE per target [k]."""
    return ((pred - y) ** 2).mean(axis=0)


def relative_gap(mse: np.ndarray, optimum: np.ndarray) -> np.ndarray:
    """(mse - optimum) / optimum, with a floor on the denominator for exact fits."""
    return (mse - optimum) / np.maximum(optimum, 1e-300)


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


def evaluate_model(
    X: np.ndarray,
    y: np.ndarray,
    is_holdout: np.ndarray,
    fit: FitResult,
    targets: tuple[str, ...],
) -> pd.DataFrame:
    """Metrics per target and split: mse, baseline_mse (predicting the training mean), r2
    (1 - mse / baseline_mse), rows, optimum_mse (the least-squares model fitted on the training
    split), relative_gap to it, and how training went. A split with no rows is left out."""
    X = X.astype(np.float64)
    y = y.astype(np.float64)
    train = ~is_holdout
    W_opt, b_opt = least_squares(X[train], y[train])
    train_mean = y[train].mean(axis=0)
    per_split = {}
    for split, mask in zip(SPLITS, (train, is_holdout), strict=True):
        if not mask.any():
            continue
        Xs, ys = X[mask], y[mask]
        per_split[split] = (
            int(mask.sum()),
            mse_per_target(linear_predict(Xs, fit.W, fit.b), ys),
            mse_per_target(np.broadcast_to(train_mean, ys.shape), ys),
            mse_per_target(linear_predict(Xs, W_opt, b_opt), ys),
        )
    return metrics_frame(per_split, fit, targets)


def metrics_from_sums(
    sums: dict[str, dict[str, Any]], fit: FitResult, targets: tuple[str, ...]
) -> pd.DataFrame:
    """The metrics table from per-split sums of squared errors (the streaming path's pass 2):
    rows, sse (model), sse_baseline, sse_optimum per split."""
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
    fit: FitResult,
    targets: tuple[str, ...],
) -> pd.DataFrame:
    """(rows, mse, baseline_mse, optimum_mse) per split -> the metrics table; a split with no
    rows is left out."""
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


def predictions_frame(
    accepted: pd.DataFrame,
    is_holdout: np.ndarray,
    fit: FitResult,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    id_column: str,
) -> pd.DataFrame:
    """Every accepted row with predicted_<target>, residual_<target> (actual - predicted),
    split and its source."""
    pred = linear_predict(accepted[list(features)].to_numpy(), fit.W, fit.b)
    out = accepted[[id_column, *features, *targets]].copy()
    for j, target in enumerate(targets):
        out[f"predicted_{target}"] = pred[:, j]
        out[f"residual_{target}"] = accepted[target].to_numpy() - pred[:, j]
    out["split"] = np.where(is_holdout, "holdout", "train")
    out["source_file"] = accepted["source_file"].to_numpy()
    out["source_line"] = accepted["source_line"].to_numpy()
    return out


def weights_frame(
    fit: FitResult, features: tuple[str, ...], targets: tuple[str, ...]
) -> pd.DataFrame:
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


@task(cache_policy=NONE)
def evaluate_run(
    accepted: pd.DataFrame,
    is_holdout: np.ndarray,
    fit: FitResult,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    seed: int,
) -> dict[str, pd.DataFrame]:
    """The run's result tables: predictions, weights, metrics (see evaluate_model) and the
    profile of the accepted data (its quantile sample chosen by id, as the streaming path
    does)."""
    X = accepted[list(features)].to_numpy()
    y = accepted[list(targets)].to_numpy()
    keys = sample_keys(hash_text(accepted[ID_COLUMN], seed))
    return {
        "predictions": predictions_frame(accepted, is_holdout, fit, features, targets, ID_COLUMN),
        "weights": weights_frame(fit, features, targets),
        "metrics": evaluate_model(X, y, is_holdout, fit, targets),
        "profile": profile_frame(accepted, [*features, *targets], keys),
    }
