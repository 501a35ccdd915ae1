"""Validate: every bad row lands in quarantine with its column and reason; good rows go on."""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pandas as pd
import pytest

import tasks.ingest.validate
from schemas.outputs import QuarantineTable
from tasks.common.errors import PipelineError
from tasks.ingest.numbers import parse_numbers
from tasks.ingest.validate import check_columns
from tests.conftest import HEADER
from tests.pipeline import F, T, config, kept_rows, quarantine, scan_paths

GOOD = ["A,70,0.1,0.043,5", "B,90,0.8,0.064,8", "C,80,0.13,0.058,12"]


@dataclass
class Checked:
    accepted: pd.DataFrame
    quarantine: pd.DataFrame
    rows_in: int
    rows_quarantined: int


def validate(write_csv, lines: list[str], features=F, targets=T):
    path = write_csv("\n".join([HEADER, *lines]) + "\n")
    staging = path.parent / "staging"
    scan = scan_paths([path], config(features=features, targets=targets), staging)
    accepted = kept_rows(scan).rename(columns={"line": "source_line"})
    files = scan.files
    return Checked(
        accepted, quarantine(scan), sum(f.rows for f in files), sum(f.quarantined for f in files)
    )


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


def test_custom_columns_use_the_generic_numeric_rule(write_csv):
    path = write_csv("country,gdp,units_sold_k\nA,-5,1\nB,inf,2\nC,3,3\n")
    scan = scan_paths([path], config(features=("gdp",)), path.parent / "staging")
    data = Checked(kept_rows(scan), quarantine(scan), 3, 1)
    # No range on an unknown column: -5 is fine, inf is not.
    assert data.accepted["country"].tolist() == ["A", "C"]
    assert data.quarantine["reason"].tolist() == ["not finite"]


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


def bad_prices_and_blank_taxes(write_csv, name, first, rows=300):
    """Every price negative and distinct (from -`first`), every third tax blank."""
    lines = [f"C{i},50,{-(first + i) / 1000},{'' if i % 3 == 0 else 0.05},7" for i in range(rows)]
    return write_csv("\n".join([HEADER, *lines]) + "\n", name)


def assert_all_quarantined(scan, rows):
    """Every row quarantined: each price 'out of range', each blank tax a 'missing value'."""
    records = quarantine(scan)
    assert [(f.rows, f.accepted, f.quarantined) for f in scan.files] == [(rows, 0, rows)]
    price, tax = (records[records["column"] == name] for name in ("price_k", "tax_k"))
    assert len(price) == rows
    assert set(price["reason"]) == {"out of range"}
    assert len(tax) == len(range(0, rows, 3))
    assert set(tax["reason"]) == {"missing value"}
    assert set(tax["detail"]) == {"tax_k is empty"}
    return records


# pandera's verdicts on values are kept between checks; a limit this small makes the cache drop
# what one check found while another still needs it (the blank tax every file has).
TINY_VERDICT_CACHE = 5


def test_many_distinct_bad_values_are_quarantined_whatever_the_verdict_cache_held(
    write_csv, monkeypatch
):
    monkeypatch.setattr(tasks.ingest.validate, "_VERDICTS_KEPT", TINY_VERDICT_CACHE)
    paths = [bad_prices_and_blank_taxes(write_csv, f"f{i}.csv", 1000 * i + 1) for i in range(3)]
    for i, path in enumerate(paths):  # one after another, as one run reads its files
        assert_all_quarantined(scan_paths([path], config(), path.parent / f"stage-{i}"), 300)


def test_files_checked_on_several_threads_at_once_get_what_one_thread_gets(write_csv, monkeypatch):
    monkeypatch.setattr(tasks.ingest.validate, "_VERDICTS_KEPT", TINY_VERDICT_CACHE)
    paths = [bad_prices_and_blank_taxes(write_csv, f"f{i}.csv", 100 * i + 1) for i in range(8)]

    def records(job):
        i, path = job
        scan = scan_paths([path], config(), path.parent / f"stage-{i}-{threading.get_ident()}")
        return assert_all_quarantined(scan, 300)

    alone = [records(job) for job in enumerate(paths)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(records, enumerate(paths)))
    for got, want in zip(together, alone, strict=True):
        pd.testing.assert_frame_equal(got, want)
