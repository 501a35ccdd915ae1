"""Contracts of the Parquet outputs. Every table is validated against these before it is written.

Each table is a Hive-partitioned dataset under the output root, `<table>/run_id=<id>/`, so
`run_id` comes from the path and is not stored in the files.
"""

from __future__ import annotations

import pandera.pandas as pa
import pyarrow
from pandera.typing.pandas import Series

from schemas.sales import ID_COLUMN, SalesRecord

SCHEMA_VERSION = "1"
TABLES = ("predictions", "weights", "metrics", "quarantine", "profile")


class WeightsTable(pa.DataFrameModel):
    """One row per target and term of the linear model."""

    target: Series[str] = pa.Field(description="Target column the row belongs to.")
    feature: Series[str] = pa.Field(description="Feature column, or '(intercept)' for the bias.")
    weight: Series[float] = pa.Field(
        description="Weight on the raw (unstandardized) scale: prediction = sum(weight * x) + "
        "intercept weight."
    )
    standardized_weight: Series[float] = pa.Field(
        description="Weight on standardized features ((x - scaler_mean) / scaler_std)."
    )
    scaler_mean: Series[float] = pa.Field(
        nullable=True, description="Training-split mean of the feature; null for the intercept."
    )
    scaler_std: Series[float] = pa.Field(
        nullable=True,
        gt=0,
        description="Training-split std (ddof=0) of the feature; null for the intercept.",
    )

    @pa.dataframe_check(name="finite_weights", error="weights must be finite")
    @classmethod
    def finite_weights(cls, df):
        return df[["weight", "standardized_weight"]].abs().lt(float("inf")).all(axis=1)

    class Config:
        strict = True
        unique = ["target", "feature"]  # noqa: RUF012


class MetricsTable(pa.DataFrameModel):
    """One row per target and split."""

    target: Series[str] = pa.Field(description="Target column.")
    split: Series[str] = pa.Field(isin=["train", "holdout"], description="train or holdout.")
    mse: Series[float] = pa.Field(ge=0, description="Mean squared error of the model, units^2.")
    baseline_mse: Series[float] = pa.Field(
        ge=0, description="MSE of predicting the training-split mean of the target."
    )
    r2: Series[float] = pa.Field(
        nullable=True, description="1 - mse / baseline_mse (null when the baseline is exact)."
    )
    rows: Series[int] = pa.Field(gt=0, description="Rows in the split.")
    optimum_mse: Series[float] = pa.Field(
        ge=0, description="MSE of the closed-form least-squares model fitted on the train split."
    )
    relative_gap: Series[float] = pa.Field(
        description="(mse - optimum_mse) / optimum_mse: ~0 on train when training converged."
    )
    epochs: Series[int] = pa.Field(ge=0, description="Gradient-descent epochs run.")
    step_size: Series[float] = pa.Field(gt=0, description="Step size on standardized features.")
    converged: Series[bool] = pa.Field(description="Whether training met its stopping test.")

    class Config:
        strict = True
        unique = ["target", "split"]  # noqa: RUF012


class QuarantineTable(pa.DataFrameModel):
    """One row per problem found in an input row (a row with two bad cells has two records)."""

    source_file: Series[str] = pa.Field(description="Input file as given to the run.")
    source_line: Series[int] = pa.Field(ge=1, description="1-based line in the file (header = 1).")
    column: Series[str] = pa.Field(
        nullable=True, description="Offending column; null for whole-row problems."
    )
    reason: Series[str] = pa.Field(
        isin=[
            "missing value",
            "not a number",
            "not finite",
            "out of range",
            "duplicate key",
            "invalid text",
            "wrong field count",
            "blank line",
        ],
        description="Reason category.",
    )
    detail: Series[str] = pa.Field(description="Human-readable detail with the offending value.")
    raw: Series[str] = pa.Field(description="The input row as text.")

    class Config:
        strict = True


# The quarantine table's Arrow types, for files written in chunks (the streaming path).
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


def predictions_schema(features: tuple[str, ...], targets: tuple[str, ...]) -> pa.DataFrameSchema:
    """Schema of the predictions table for the run's feature and target columns."""
    inputs = SalesRecord.to_schema().columns
    columns = {ID_COLUMN: pa.Column(str, description=inputs[ID_COLUMN].description)}
    for name in (*features, *targets):
        known = inputs.get(name)
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


class ProfileTable(pa.DataFrameModel):
    """One row per numeric column of the run's accepted data."""

    column: Series[str] = pa.Field(unique=True, description="Input column.")
    count: Series[int] = pa.Field(ge=0, description="Non-null values.")
    mean: Series[float] = pa.Field(nullable=True, description="Mean, in the column's units.")
    std: Series[float] = pa.Field(nullable=True, description="Standard deviation (ddof=1).")
    min: Series[float] = pa.Field(nullable=True, description="Smallest value.")
    p05: Series[float] = pa.Field(nullable=True, description="5th percentile.")
    p25: Series[float] = pa.Field(nullable=True, description="25th percentile.")
    p50: Series[float] = pa.Field(nullable=True, description="Median.")
    p75: Series[float] = pa.Field(nullable=True, description="75th percentile.")
    p95: Series[float] = pa.Field(nullable=True, description="95th percentile.")
    max: Series[float] = pa.Field(nullable=True, description="Largest value.")

    class Config:
        strict = True


def scores_schema(features: tuple[str, ...], targets: tuple[str, ...]) -> pa.DataFrameSchema:
    """Schema of the scores table: the scored rows and the model's predictions."""
    inputs = SalesRecord.to_schema().columns
    columns = {ID_COLUMN: pa.Column(str, description=inputs[ID_COLUMN].description)}
    for name in features:
        known = inputs.get(name)
        columns[name] = pa.Column(float, description=known.description if known else name)
    for target in targets:
        columns[f"predicted_{target}"] = pa.Column(
            float, pa.Check(lambda s: s.abs() < float("inf")), description=f"Predicted {target}."
        )
    columns["model_run_id"] = pa.Column(str, description="Training run whose weights scored.")
    columns["source_file"] = pa.Column(str, description="Input file the row came from.")
    columns["source_line"] = pa.Column(int, pa.Check.ge(1), description="Line in that file.")
    return pa.DataFrameSchema(columns, strict=True, name="scores")
