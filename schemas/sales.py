"""The input contract: what a valid sales row is.

This module is the single source of truth for the input columns, their units and their ranges.
Feature and target columns are flow parameters; columns this contract does not know are held to
the generic numeric rule (a finite number, no range).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa

ID_COLUMN = "country"
DEFAULT_FEATURES = ("avg_income_k", "price_k", "tax_k")
DEFAULT_TARGETS = ("units_sold_k",)

# Upper bounds far above any real country, low enough to catch unit mix-ups and absurd values
# (1e30) before they reach training.
MAX_MONEY_K = 10_000.0
MAX_UNITS_K = 10_000_000.0

# Text ids: no control characters. Padding is stripped before validation (see
# tasks/ingest/validate.py).
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"


def _finite(series: pd.Series) -> pd.Series:
    return pd.Series(
        np.isfinite(series.to_numpy(dtype="float64", na_value=np.nan)), index=series.index
    )


IS_FINITE = pa.Check(_finite, name="is_finite", error="not finite", ignore_na=True)


def _column(checks: list[pa.Check], description: str) -> pa.Column:
    return pa.Column(float, [*checks, IS_FINITE], description=description)


# One row of a sales file: a country's economics and the units sold there. (pandera's object
# API: its class API imports dask, modin and pyspark typing on first use, a second of start-up.)
SALES_COLUMNS = {
    ID_COLUMN: pa.Column(
        str,
        pa.Check.str_matches(ID_PATTERN),
        description="Country identifier (text, no control characters).",
    ),
    "avg_income_k": _column(
        [pa.Check.gt(0), pa.Check.le(MAX_MONEY_K)], "Average income in the country, thousands."
    ),
    "price_k": _column([pa.Check.gt(0), pa.Check.le(MAX_MONEY_K)], "Product price, thousands."),
    "tax_k": _column([pa.Check.ge(0), pa.Check.le(MAX_MONEY_K)], "Tax on the product, thousands."),
    "units_sold_k": _column(
        [pa.Check.ge(0), pa.Check.le(MAX_UNITS_K)], "Units sold, thousands (the default target)."
    ),
}


def id_column_spec(name: str) -> pa.Column:
    """The id column of a run: the contract's `country`, or any other text column named by
    parameter, held to the same rule (text, no control characters)."""
    if name == ID_COLUMN:
        return SALES_COLUMNS[ID_COLUMN]
    return pa.Column(
        str,
        pa.Check.str_matches(ID_PATTERN),
        name=name,
        description=f"{name}: row identifier chosen by parameter (text, no control characters).",
    )


def generic_numeric_column(name: str) -> pa.Column:
    """A column the contract does not know: a finite float, no range."""
    return pa.Column(
        float,
        checks=IS_FINITE,
        nullable=False,
        name=name,
        description=f"{name}: numeric column chosen by parameter (finite, no range check).",
    )


def sales_schema(
    features: tuple[str, ...], targets: tuple[str, ...], id_column: str | None = ID_COLUMN
) -> pa.DataFrameSchema:
    """The row schema for a run: the id column (None: the rows have none) plus the chosen
    feature and target columns. Ids are unique within a file."""
    columns = {} if id_column is None else {id_column: id_column_spec(id_column)}
    for name in (*features, *targets):
        columns[name] = SALES_COLUMNS.get(name) or generic_numeric_column(name)
    return pa.DataFrameSchema(
        columns,
        strict=True,
        unique_column_names=True,
        unique=None if id_column is None else [id_column],
        report_duplicates="exclude_first",
        name="sales",
    )


def required_columns(
    features: tuple[str, ...], targets: tuple[str, ...], id_column: str | None = ID_COLUMN
) -> list[str]:
    """Columns a file must have, in contract order."""
    return [*([] if id_column is None else [id_column]), *features, *targets]


def allowed_columns(
    features: tuple[str, ...], targets: tuple[str, ...], id_column: str | None = ID_COLUMN
) -> set[str]:
    """Columns a file may have: the required ones and any other column of the contract.

    Contract columns that a run does not use (e.g. tax_k when training on two features, or
    country when the run has another id column or none) are allowed and ignored; anything else
    is an unexpected column and rejects the file.
    """
    return set(required_columns(features, targets, id_column)) | set(SALES_COLUMNS)
