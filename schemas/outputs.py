"""Contracts of the Parquet outputs. Every table is validated against these before it is written.

Each table is a Hive-partitioned dataset under the output root, `<table>/run_id=<id>/`, so
`run_id` comes from the path and is not stored in the files. (pandera's object API, as in
schemas/sales.py.)
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
import pyarrow

from schemas.sales import ID_COLUMN, SALES_COLUMNS, id_column_spec

SCHEMA_VERSION = "3"
# A training run's tables; a scoring run writes scores and score_quarantine; every run's commit
# is its row of `runs`.
TABLES = ("predictions", "weights", "metrics", "quarantine", "profile")
RUNS = "runs"
# The big tables retention prunes (the others are a few rows a run).
PRUNED_TABLES = ("predictions", "quarantine", "scores", "score_quarantine")


def _finite_weights(frame: pd.DataFrame) -> pd.Series:
    return frame[["weight", "standardized_weight"]].abs().lt(float("inf")).all(axis=1)


def _inference(description: str, bounds: tuple[float, float] | None = None) -> pa.Column:
    checks = [pa.Check.in_range(*bounds)] if bounds else []
    return pa.Column(float, checks, nullable=True, description=description)


# One row per target and term of the linear model.
WeightsTable = pa.DataFrameSchema(
    {
        "target": pa.Column(str, description="Target column the row belongs to."),
        "feature": pa.Column(str, description="Feature column, or '(intercept)' for the bias."),
        "weight": pa.Column(
            float,
            description="Weight on the raw (unstandardized) scale: prediction = sum(weight * x) "
            "+ intercept weight.",
        ),
        "standardized_weight": pa.Column(
            float, description="Weight on standardized features ((x - scaler_mean) / scaler_std)."
        ),
        "scaler_mean": pa.Column(
            float,
            nullable=True,
            description="Training-split mean of the feature; null for the intercept.",
        ),
        "scaler_std": pa.Column(
            float,
            pa.Check.gt(0),
            nullable=True,
            description="Training-split std (ddof=0) of the feature; null for the intercept.",
        ),
        "ls_weight": pa.Column(
            float,
            description="Closed-form least-squares estimate on the train split (float64 "
            "sufficient statistics): the estimate the inference columns describe; `weight` "
            "matches it to within the run's relative_gap.",
        ),
        "std_error": _inference("Classical standard error of ls_weight (homoskedastic errors)."),
        "t_stat": _inference("ls_weight / std_error."),
        "p_value": _inference(
            "Two-sided p-value of t_stat, Student t with dof degrees of freedom.", (0.0, 1.0)
        ),
        "ci_low": _inference("Lower end of the confidence interval of ls_weight."),
        "ci_high": _inference("Upper end of the confidence interval of ls_weight."),
        "robust_std_error": _inference(
            "Heteroskedasticity-robust (HC1) standard error of ls_weight."
        ),
        "confidence": pa.Column(
            float, pa.Check.in_range(0.0, 1.0, False, False), description="Confidence level."
        ),
        "dof": pa.Column(int, description="Residual degrees of freedom n - p - 1 (train split)."),
        "residual_variance": pa.Column(
            float, nullable=True, description="Residual variance sse / dof of the target's fit."
        ),
        "covariance": pa.Column(
            object,
            nullable=True,
            description="This term's row of the classical coefficient covariance, in the "
            "target's term order (features, then the intercept); null when undefined.",
        ),
        "note": pa.Column(
            str, nullable=True, description="Why the inference columns are null, if they are."
        ),
    },
    checks=pa.Check(_finite_weights, name="finite_weights", error="weights must be finite"),
    strict=True,
    unique=["target", "feature"],
    name="weights",
)

# One row per target and split.
MetricsTable = pa.DataFrameSchema(
    {
        "target": pa.Column(str, description="Target column."),
        "split": pa.Column(str, pa.Check.isin(["train", "holdout"]), description="Split."),
        "mse": pa.Column(float, pa.Check.ge(0), description="Mean squared error, units^2."),
        "baseline_mse": pa.Column(
            float, pa.Check.ge(0), description="MSE of predicting the training-split mean."
        ),
        "r2": pa.Column(
            float, nullable=True, description="1 - mse / baseline_mse (null when exact)."
        ),
        "rows": pa.Column(int, pa.Check.gt(0), description="Rows in the split."),
        "optimum_mse": pa.Column(
            float,
            pa.Check.ge(0),
            description="MSE of the closed-form least-squares model fitted on the train split.",
        ),
        "relative_gap": pa.Column(
            float, description="(mse - optimum_mse) / optimum_mse: ~0 on train when converged."
        ),
        "epochs": pa.Column(int, pa.Check.ge(0), description="Gradient-descent epochs run."),
        "step_size": pa.Column(
            float, pa.Check.gt(0), description="Step size on standardized features."
        ),
        "converged": pa.Column(bool, description="Whether training met its stopping test."),
        "residual_std_error": _inference(
            "sqrt(sse / dof) of the least-squares fit (train split only)."
        ),
        "adj_r2": _inference("Adjusted R^2 of the least-squares fit (train split only)."),
        "f_stat": _inference("F statistic of all features against none (train split only)."),
        "f_p_value": _inference("p-value of f_stat (train split only).", (0.0, 1.0)),
        "dof": pa.Column(
            "Int64", nullable=True, description="Residual degrees of freedom (train split only)."
        ),
        "note": pa.Column(
            str, nullable=True, description="Why a fit statistic is null, if one is."
        ),
    },
    strict=True,
    unique=["target", "split"],
    name="metrics",
)

# Arrow types of the small tables' columns that can be null in every row of a run (pandas
# alone would write those as Arrow's null type, which readers cannot union across runs).
NULLABLE_ARROW = {
    "note": pyarrow.string(),
    "covariance": pyarrow.list_(pyarrow.float64()),
    "dof": pyarrow.int64(),
}

QUARANTINE_REASONS = [
    "missing value",
    "not a number",
    "not finite",
    "out of range",
    "duplicate key",
    "invalid text",
    "wrong field count",
    "blank line",
]

# One row per problem found in an input row (a row with two bad cells has two records).
QuarantineTable = pa.DataFrameSchema(
    {
        "source_file": pa.Column(str, description="Input file as given to the run."),
        "source_line": pa.Column(
            int, pa.Check.ge(1), description="1-based line in the file (header = 1)."
        ),
        "column": pa.Column(
            str, nullable=True, description="Offending column; null for whole-row problems."
        ),
        "reason": pa.Column(str, pa.Check.isin(QUARANTINE_REASONS), description="Reason."),
        "detail": pa.Column(str, description="Human-readable detail with the offending value."),
        "raw": pa.Column(str, description="The input row as text."),
    },
    strict=True,
    name="quarantine",
)

# The quarantine table's Arrow types, for files written in chunks.
QUARANTINE_ARROW = pyarrow.schema(
    [
        ("source_file", pyarrow.string()),
        ("source_line", pyarrow.int64()),
        ("column", pyarrow.string()),
        ("reason", pyarrow.string()),
        ("detail", pyarrow.string()),
        ("raw", pyarrow.string()),
    ]
)


def _stat(description: str) -> pa.Column:
    return pa.Column(float, nullable=True, description=description)


# One row per numeric column of the run's accepted data.
ProfileTable = pa.DataFrameSchema(
    {
        "column": pa.Column(str, unique=True, description="Input column."),
        "count": pa.Column(int, pa.Check.ge(0), description="Non-null values."),
        "mean": _stat("Mean, in the column's units."),
        "std": _stat("Standard deviation (ddof=1)."),
        "min": _stat("Smallest value."),
        "p05": _stat("5th percentile."),
        "p25": _stat("25th percentile."),
        "p50": _stat("Median."),
        "p75": _stat("75th percentile."),
        "p95": _stat("95th percentile."),
        "max": _stat("Largest value."),
    },
    strict=True,
    name="profile",
)


def _id_columns(id_column: str | None) -> dict[str, pa.Column]:
    if id_column is None:
        return {}
    return {id_column: pa.Column(str, description=id_column_spec(id_column).description)}


def predictions_schema(
    features: tuple[str, ...], targets: tuple[str, ...], id_column: str | None = ID_COLUMN
) -> pa.DataFrameSchema:
    """Schema of the predictions table for the run's id, feature and target columns."""
    columns = _id_columns(id_column)
    for name in (*features, *targets):
        known = SALES_COLUMNS.get(name)
        columns[name] = pa.Column(float, description=known.description if known else name)
    for target in targets:
        columns[f"predicted_{target}"] = pa.Column(
            float, description=f"Model prediction of {target}."
        )
        columns[f"residual_{target}"] = pa.Column(
            float, description=f"{target} - predicted_{target}."
        )
    columns["split"] = pa.Column(str, pa.Check.isin(["train", "holdout"]), description="Split.")
    columns["source_file"] = pa.Column(str, description="Input file the row came from.")
    columns["source_line"] = pa.Column(int, pa.Check.ge(1), description="Line in that file.")
    return pa.DataFrameSchema(columns, strict=True, name="predictions")


def scores_schema(
    features: tuple[str, ...], targets: tuple[str, ...], id_column: str | None = ID_COLUMN
) -> pa.DataFrameSchema:
    """Schema of the scores table: the scored rows and the model's predictions."""
    columns = _id_columns(id_column)
    for name in features:
        known = SALES_COLUMNS.get(name)
        columns[name] = pa.Column(float, description=known.description if known else name)
    for target in targets:
        columns[f"predicted_{target}"] = pa.Column(
            float, pa.Check(lambda s: s.abs() < float("inf")), description=f"Predicted {target}."
        )
        for end, side in (("low", "Lower"), ("high", "Upper")):
            columns[f"predicted_{target}_{end}"] = pa.Column(
                float,
                nullable=True,
                description=f"{side} end of the prediction interval of a new observation of "
                f"{target} at the model's confidence level (null when the model has none).",
            )
    columns["model_run_id"] = pa.Column(str, description="Training run whose weights scored.")
    columns["source_file"] = pa.Column(str, description="Input file the row came from.")
    columns["source_line"] = pa.Column(int, pa.Check.ge(1), description="Line in that file.")
    return pa.DataFrameSchema(columns, strict=True, name="scores")


def descriptions_of(schema: pa.DataFrameSchema) -> dict[str, str]:
    """Column -> description of a pandera schema: the comments of the Delta table's columns."""
    return {name: column.description or "" for name, column in schema.columns.items()}


_TIME = pyarrow.timestamp("us", tz="UTC")
# One row per run, appended last: the run's commit. Readers that join `runs` see committed runs
# only. (run_id is the table's partition column, as everywhere.)
RUNS_COLUMNS = {
    "kind": (pyarrow.string(), "train or score."),
    "status": (pyarrow.string(), "completed, or failed (a run refused for its data)."),
    "error": (pyarrow.string(), "Why a failed run was refused."),
    "started_at": (_TIME, "When the run started (UTC)."),
    "finished_at": (_TIME, "When the run committed (UTC)."),
    "flow_run_id": (pyarrow.string(), "The Prefect flow run."),
    "schema_version": (pyarrow.string(), "Version of these tables' contracts the run wrote."),
    "data_fingerprint": (pyarrow.string(), "sha256 over the sorted sha256s of the inputs."),
    "rows_in": (pyarrow.int64(), "Data rows read."),
    "rows_accepted": (pyarrow.int64(), "Rows accepted."),
    "rows_quarantined": (pyarrow.int64(), "Rows quarantined."),
    "promoted": (pyarrow.bool_(), "Whether the run became the champion (training runs)."),
    "promotion_reason": (pyarrow.string(), "The gate's reason."),
    "champion_before": (pyarrow.string(), "The champion the run was compared with."),
    "model_run_id": (pyarrow.string(), "The training run whose model scored (scoring runs)."),
    "warnings": (pyarrow.list_(pyarrow.string()), "Warnings of the run."),
    "manifest": (pyarrow.string(), "The run's manifest as JSON text (inputs, parameters, ...)."),
}
RUNS_ARROW = pyarrow.schema([(name, kind) for name, (kind, _) in RUNS_COLUMNS.items()])
