"""Validate: every bad row lands in quarantine with its column and reason; good rows go on."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from schemas.outputs import QuarantineTable
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS, allowed_columns, required_columns
from tasks.errors import DataQualityError, PipelineError
from tasks.ingest import read_sales_csv
from tasks.validate import check_columns, check_quality, parse_numbers, validate_files
from tests.conftest import HEADER

F, T = DEFAULT_FEATURES, DEFAULT_TARGETS
GOOD = ["A,70,0.1,0.043,5", "B,90,0.8,0.064,8", "C,80,0.13,0.058,12"]


def validate(write_csv, lines: list[str], features=F, targets=T):
    path = write_csv("\n".join([HEADER, *lines]) + "\n")
    raw = read_sales_csv(
        path, required_columns(features, targets), allowed_columns(features, targets)
    )
    return validate_files([raw], features, targets)


def test_parse_numbers_accepts_plain_decimals_only():
    text = pd.Series(
        [
            "70.5",
            " 3 ",
            "-1e3",
            ".5",
            "1,234.50",
            "0x10",
            "$5",
            "12abc",
            "1_000",
            "",
            "NA",
            "inf",
            "-Infinity",
        ]
    )
    values, problem = parse_numbers(text)
    assert values[:4].tolist() == [70.5, 3.0, -1000.0, 0.5]
    assert problem.notna().tolist() == [False] * 4 + [True] * 5 + [False] * 4
    assert math.isnan(values[9])
    assert math.isnan(values[10])
    assert values[11] == math.inf
    assert values[12] == -math.inf


def test_good_rows_pass_typed_with_their_lines(write_csv):
    data = validate(write_csv, GOOD)
    assert data.accepted["country"].tolist() == ["A", "B", "C"]
    assert data.accepted["price_k"].tolist() == [0.1, 0.8, 0.13]
    assert data.accepted["source_line"].tolist() == [2, 3, 4]
    assert data.quarantine.empty
    assert (data.rows_in, data.rows_quarantined) == (3, 0)
    QuarantineTable.validate(data.quarantine)  # an empty quarantine still has the table's types


@pytest.mark.parametrize(
    ("bad_line", "column", "reason"),
    [
        pytest.param('D,"70.5","0.2","0.01","4"', None, None, id="11-quoted-numbers-ok"),
        pytest.param('D,"1,234.50",0.2,0.01,4', "avg_income_k", "not a number", id="12-thousands"),
        pytest.param("D,70,nan,0.01,4", "price_k", "missing value", id="13-nan"),
        pytest.param("D,70,NaN,0.01,4", "price_k", "missing value", id="13-NaN"),
        pytest.param("D,70,0.2,,4", "tax_k", "missing value", id="14-empty"),
        pytest.param("D,70,0.2,NA,4", "tax_k", "missing value", id="14-NA"),
        pytest.param("D,70,0.2,null,4", "tax_k", "missing value", id="14-null"),
        pytest.param("D,70,0.2,N/A,4", "tax_k", "missing value", id="14-N/A"),
        pytest.param("D,inf,0.2,0.01,4", "avg_income_k", "not finite", id="15-inf"),
        pytest.param("D,1e400,0.2,0.01,4", "avg_income_k", "not finite", id="15-1e400"),
        pytest.param("D,70,-0.2,0.01,4", "price_k", "out of range", id="16-negative-price"),
        pytest.param("D,-70,0.2,0.01,4", "avg_income_k", "out of range", id="16-negative-income"),
        pytest.param("D,70,0.2,0.01,-4", "units_sold_k", "out of range", id="16-negative-units"),
        pytest.param("D,-inf,0.2,0.01,4", "avg_income_k", "out of range", id="16-minus-inf"),
        pytest.param("D,-inf,0.2,0.01,4", "avg_income_k", "not finite", id="16-minus-inf-also"),
        pytest.param("D,1e30,0.2,0.01,4", "avg_income_k", "out of range", id="30-absurd-income"),
        pytest.param("D,70,0.2,0.01,1e30", "units_sold_k", "out of range", id="30-absurd-units"),
        pytest.param("D\x00,70,0.2,0.01,4", "country", "invalid text", id="27-nul-in-text"),
        pytest.param("D,70,0.2\x00,0.01,4", "price_k", "not a number", id="27-nul-in-number"),
        pytest.param("D\x07,70,0.2,0.01,4", "country", "invalid text", id="24-control-char"),
        pytest.param("D,70,0,0.01,4", "price_k", "out of range", id="16-zero-price"),
        pytest.param("D,70,0.2,0x10,4", "tax_k", "not a number", id="17-hex"),
        pytest.param("D,70,$5,0.01,4", "price_k", "not a number", id="17-dollar"),
        pytest.param("D,70,0.2,0.01,12abc", "units_sold_k", "not a number", id="17-suffix"),
        pytest.param("A,70,0.2,0.01,4", "country", "duplicate key", id="18-duplicate-key"),
        pytest.param(",70,0.2,0.01,4", "country", "missing value", id="empty-country"),
    ],
)
def test_bad_values_are_quarantined_with_reason(write_csv, bad_line, column, reason):
    data = validate(write_csv, [*GOOD, bad_line])
    assert len(data.accepted) + data.rows_quarantined == data.rows_in == 4
    if reason is None:
        assert data.quarantine.empty
        assert len(data.accepted) == 4
        return
    assert data.accepted["country"].tolist() == ["A", "B", "C"]
    assert set(data.quarantine["source_line"]) == {5}
    assert (column, reason) in set(
        zip(data.quarantine["column"], data.quarantine["reason"], strict=True)
    )
    record = data.quarantine.iloc[0]
    assert record["raw"] == bad_line
    assert record["source_file"].endswith("sales.csv")


def test_row_with_several_problems_has_one_record_per_cell(write_csv):
    data = validate(write_csv, [*GOOD, "D,abc,-1,,4"])
    assert data.rows_quarantined == 1
    assert sorted(zip(data.quarantine["column"], data.quarantine["reason"], strict=True)) == [
        ("avg_income_k", "not a number"),
        ("price_k", "out of range"),
        ("tax_k", "missing value"),
    ]
    assert set(data.quarantine["source_line"]) == {5}


def test_ragged_and_blank_rows_are_counted_in_quarantine(write_csv):
    data = validate(write_csv, [GOOD[0], "B,1,2", "", GOOD[2]])
    assert data.accepted["source_line"].tolist() == [2, 5]
    assert data.quarantine[["source_line", "reason"]].values.tolist() == [
        [3, "wrong field count"],
        [4, "blank line"],
    ]
    assert data.rows_in == 4


def test_padding_of_the_country_is_stripped(write_csv):
    data = validate(write_csv, ["  A ,70,0.1,0.043,5"])
    assert data.accepted["country"].tolist() == ["A"]


def test_custom_columns_use_the_generic_numeric_rule(write_csv):
    path = write_csv("country,gdp,units_sold_k\nA,-5,1\nB,inf,2\nC,3,3\n")
    features = ("gdp",)
    raw = read_sales_csv(path, required_columns(features, T), allowed_columns(features, T))
    data = validate_files([raw], features, T)
    # No range on an unknown column: -5 is fine, inf is not.
    assert data.accepted["country"].tolist() == ["A", "C"]
    assert data.quarantine["reason"].tolist() == ["not finite"]


def test_every_row_bad_fails_the_run(write_csv):  # catalogue 28
    data = validate(write_csv, ["A,x,1,1,1", "B,1,-1,1,1"])
    assert len(data.quarantine) == 2
    with pytest.raises(DataQualityError, match="no valid rows: all 2 data rows"):
        check_quality(data, max_bad_fraction=1.0)


def test_bad_share_above_threshold_fails_with_share_and_threshold(write_csv):  # catalogue 29
    data = validate(write_csv, [*GOOD, "D,x,1,1,1"])
    check_quality(data, max_bad_fraction=0.25)  # 1 of 4 is exactly the limit
    with pytest.raises(DataQualityError, match=r"1 of 4 rows \(25.0%\).*max_bad_fraction=0.2"):
        check_quality(data, max_bad_fraction=0.2)


@pytest.mark.parametrize(
    ("features", "targets", "message"),
    [
        (("price_k", "price_k"), ("units_sold_k",), "parameter features"),
        (("price_k",), ("price_k",), "cannot be both"),
        (("country",), ("units_sold_k",), "row key"),
    ],
)
def test_bad_column_parameters_are_refused(features, targets, message):
    with pytest.raises(PipelineError, match=message):
        check_columns(features, targets)
