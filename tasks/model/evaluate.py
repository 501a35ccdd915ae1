"""Evaluate: per-target metrics from the sums pass 2 adds up over the rows, the weights table,
and warnings about the fit itself."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from schemas.params import RunConfig
from tasks.ingest.stats import Moments
from tasks.model.inference import Inference, infer

SPLITS = ("train", "holdout")
INTERCEPT = "(intercept)"
# Fewer training rows than this per fitted parameter (features + intercept, per target) and the
# model can fit the noise: the run says so (manifest, report, summary).
MIN_ROWS_PER_PARAMETER = 10


def relative_gap(mse: np.ndarray, optimum: np.ndarray) -> np.ndarray:
    """(mse - optimum) / optimum, with a floor on the denominator for exact fits."""
    return (mse - optimum) / np.maximum(optimum, 1e-300)


def zero_sums(k: int, d: int = 0) -> dict[str, dict[str, Any]]:
    """Per-split sums for k targets and d features before any row: rows, the squared errors of
    the model (sse), of the training mean (sse_baseline) and of the least-squares optimum
    (sse_optimum), and the HC meat of the optimum's residuals (see inference.meat_of_rows)."""
    return {
        split: {
            "rows": 0,
            "sse": np.zeros(k),
            "sse_baseline": np.zeros(k),
            "sse_optimum": np.zeros(k),
            "meat": np.zeros((k, d + 1, d + 1)),
        }
        for split in SPLITS
    }


def add_sums(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per-split sums of two sets of rows added."""
    return {split: {key: a[split][key] + b[split][key] for key in a[split]} for split in a}


def metrics_from_sums(
    sums: dict[str, dict[str, Any]], fit: Any, targets: tuple[str, ...], inference: Inference
) -> pd.DataFrame:
    """The metrics table (see metrics_frame and with_fit_statistics) from per-split sums (see
    zero_sums)."""
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
    return with_fit_statistics(metrics_frame(per_split, fit, targets), inference)


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


def with_fit_statistics(metrics: pd.DataFrame, inference: Inference) -> pd.DataFrame:
    """The metrics with the least-squares fit's statistics on the train split (null on the
    holdout rows): residual_std_error, adj_r2, f_stat, f_p_value, dof, and the note saying why
    a number is null."""
    frame = metrics.copy()
    train = (frame["split"] == "train").to_numpy()
    order = {target: i for i, target in enumerate(dict.fromkeys(frame["target"]))}
    index = frame["target"].map(order).to_numpy()
    per_target = {
        "residual_std_error": np.sqrt(inference.residual_variance),
        "adj_r2": inference.adj_r2,
        "f_stat": inference.f_stat,
        "f_p_value": inference.f_p_value,
    }
    for name, values in per_target.items():
        frame[name] = np.where(train, values[index], np.nan)
    frame["dof"] = pd.Series(inference.dof, index=frame.index, dtype="Int64").where(train)
    notes = np.array(inference.notes, dtype=object)[index]
    frame["note"] = pd.Series(np.where(train, notes, None), dtype=object)
    return frame


def weights_frame(
    fit: Any, inference: Inference, features: tuple[str, ...], targets: tuple[str, ...]
) -> pd.DataFrame:
    """One row per target and term (the features, then the intercept): the raw-scale weight
    gradient descent found, the standardized weight, the scaler's mean and std (null for the
    intercept), and the inference of the least-squares fit (see tasks/model/inference.py): its
    estimate, standard error, t statistic, p-value, interval, HC1 standard error, the
    confidence level and degrees of freedom, the residual variance, the term's row of the
    coefficient covariance (in this target's term order), and the note saying why the
    inference is null, if it is."""
    low, high = inference.interval()
    columns = {
        "ls_weight": inference.estimate,
        "std_error": inference.std_error,
        "t_stat": inference.t_stat,
        "p_value": inference.p_value,
        "ci_low": low,
        "ci_high": high,
        "robust_std_error": inference.robust_std_error,
    }
    records = []
    for j, target in enumerate(targets):
        terms = [*features, INTERCEPT]
        weight = [*fit.W[j], fit.b[j]]
        standardized = [*fit.W_std[j], fit.b_std[j]]
        mean = [*fit.scaler.mean, np.nan]
        std = [*fit.scaler.std, np.nan]
        covariance = inference.covariance[j]
        for i, term in enumerate(terms):
            row = covariance[i]
            records.append(
                {
                    "target": target,
                    "feature": term,
                    "weight": weight[i],
                    "standardized_weight": standardized[i],
                    "scaler_mean": mean[i],
                    "scaler_std": std[i],
                    **{name: values[j, i] for name, values in columns.items()},
                    "confidence": inference.confidence,
                    "dof": inference.dof,
                    "residual_variance": inference.residual_variance[j],
                    "covariance": None if np.isnan(row).any() else row.tolist(),
                    "note": inference.notes[j],
                }
            )
    return pd.DataFrame.from_records(records)


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


# Gradient descent's weight this many standard errors or more from the least-squares estimate
# the intervals are centred on: the run says so (the interval would mislead about `weight`).
MAX_SE_FROM_OPTIMUM = 0.1


def estimate_warnings(weights: pd.DataFrame) -> list[str]:
    """Warnings about terms whose gradient-descent weight is far, in standard errors, from the
    least-squares estimate the inference describes."""
    distance = (weights["weight"] - weights["ls_weight"]).abs() / weights["std_error"]
    far = weights.assign(distance=distance)[distance >= MAX_SE_FROM_OPTIMUM]
    return [
        f"{row.target} {row.feature}: gradient descent stopped {row.distance:.2g} standard "
        "errors from the least-squares estimate its interval describes; lower --tol or use "
        "--dtype float64"
        for row in far.itertuples()
    ]


# The weights columns the manifest (and so the summary and the report) carries.
COEFFICIENT_COLUMNS = [
    "target", "feature", "weight", "ls_weight", "std_error", "ci_low", "ci_high", "p_value",
    "robust_std_error", "confidence", "note", "scaler_std",
]  # fmt: skip


def describe_model(
    fit: Any,
    inference: Inference,
    sums: dict[str, dict[str, Any]],
    train_rows: int,
    config: RunConfig,
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """The tables a trained model publishes (weights, metrics) and what its manifest says of it
    (training, metrics, coefficients, warnings), from the fit, its inference and pass 2's sums."""
    weights = weights_frame(fit, inference, config.features, config.targets)
    metrics = metrics_from_sums(sums, fit, config.targets, inference)
    results = {
        "training": {
            "epochs": fit.epochs,
            "step_size": fit.lr,
            "converged": fit.converged,
            "stop_reason": fit.stop_reason,
            "final_train_loss": fit.loss_history[-1],
        },
        "metrics": records_of(metrics),
        "coefficients": records_of(weights[COEFFICIENT_COLUMNS]),
        "warnings": fit_warnings(train_rows, len(config.features)) + estimate_warnings(weights),
    }
    return {"weights": weights, "metrics": metrics}, results


def records_of(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A small table as JSON-ready records (NaN and NA as null)."""
    records = frame.to_dict("records")
    return [{name: _plain(value) for name, value in row.items()} for row in records]


def _plain(value: Any) -> Any:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def fit_inference(
    train: Moments,
    sums: dict[str, dict[str, Any]],
    config: RunConfig,
    optimum: tuple[np.ndarray, np.ndarray] | None = None,
) -> Inference:
    """The inference of the least-squares fit on the training rows: pass 1's statistics and
    pass 2's residual sums (the estimate `optimum` where training polished it)."""
    residuals = sums["train"]
    return infer(
        train,
        residuals["sse_optimum"],
        residuals["meat"],
        config.features,
        config.targets,
        config.confidence,
        optimum,
    )


@task(cache_policy=NONE, task_run_name="describe-model")
def describe_model_task(
    fit: Any, train: Moments, sums: dict[str, dict[str, Any]], config: RunConfig
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """fit_inference, then describe_model."""
    inference = fit_inference(train, sums, config, getattr(fit, "optimum", None))
    return describe_model(fit, inference, sums, train.n, config)
