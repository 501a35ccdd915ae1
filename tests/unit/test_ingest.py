"""Ingest: file-level rejects (one message naming the file) and exact line numbers."""

from __future__ import annotations

import gzip

import pytest

from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS, allowed_columns, required_columns
from tasks.errors import InputFileError
from tasks.ingest import read_sales_csv, resolve_inputs
from tests.conftest import HEADER

REQUIRED = required_columns(DEFAULT_FEATURES, DEFAULT_TARGETS)
ALLOWED = allowed_columns(DEFAULT_FEATURES, DEFAULT_TARGETS)
GOOD = "A,70,0.1,0.043,5\nB,90,0.8,0.064,8\n"


def read(path):
    return read_sales_csv(path, REQUIRED, ALLOWED)


def test_reads_every_column_as_text_with_line_numbers(write_csv):
    raw = read(write_csv(f"{HEADER}\n{GOOD}"))
    assert raw.rows["country"].tolist() == ["A", "B"]
    assert raw.rows["price_k"].tolist() == ["0.1", "0.8"]
    assert raw.rows["source_line"].tolist() == [2, 3]
    assert raw.data_rows == 2
    assert len(raw.sha256) == 64


# --- resolving the data path (catalogue 1, 31) ---


def test_missing_path_is_rejected_naming_it(tmp_path):  # catalogue 1
    with pytest.raises(InputFileError, match=r"nope\.csv: file not found"):
        resolve_inputs(tmp_path / "nope.csv", [tmp_path])


def test_folder_yields_its_csv_files_sorted(write_csv, tmp_path):
    write_csv(f"{HEADER}\n{GOOD}", "b.csv")
    write_csv(f"{HEADER}\n{GOOD}", "a.csv")
    write_csv("ignored", ".hidden.csv")
    write_csv("ignored", "notes.txt")
    assert [p.name for p in resolve_inputs(tmp_path, [tmp_path])] == ["a.csv", "b.csv"]


def test_glob_yields_matching_files(write_csv, tmp_path):
    write_csv(f"{HEADER}\n{GOOD}", "jan.csv")
    write_csv(f"{HEADER}\n{GOOD}", "feb.csv")
    assert [p.name for p in resolve_inputs(f"{tmp_path}/j*.csv", [tmp_path])] == ["jan.csv"]


def test_empty_folder_is_rejected(tmp_path):  # catalogue 31
    with pytest.raises(InputFileError, match=r"no input files: folder .* holds no"):
        resolve_inputs(tmp_path, [tmp_path])


def test_glob_matching_nothing_is_rejected(tmp_path):  # catalogue 31
    with pytest.raises(InputFileError, match="no input files match"):
        resolve_inputs(f"{tmp_path}/*.csv", [tmp_path])


# --- file-level rejects ---


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(b"", r"empty file \(0 bytes\)", id="2-empty"),
        pytest.param(f"{HEADER}\n".encode(), r"no data rows \(header only\)", id="3-header-only"),
        pytest.param(
            HEADER.replace(",", ";").encode() + b"\nA;1;2;3;4\n",
            r"header does not match the expected columns .*delimited by ';'",
            id="5-semicolon",
        ),
        pytest.param(
            HEADER.replace(",", "\t").encode() + b"\nA\t1\t2\t3\t4\n",
            r"header does not match the expected columns .*delimited by '\\t'",
            id="5-tab",
        ),
        pytest.param(
            f"{HEADER}\nA,70,0.1,0.043,5\nCura\xe7ao,70,0.1,0.043,5\n".encode("latin-1"),
            r"line 3, column 'country': bytes that are not valid UTF-8",
            id="6-latin1",
        ),
        pytest.param(f"{HEADER}\n{GOOD}".encode("utf-16"), "UTF-16 encoded", id="7-utf16"),
        pytest.param(gzip.compress(f"{HEADER}\n{GOOD}".encode()), "gzip-compressed", id="8-gzip"),
        pytest.param(
            b"country,avg_income_k,price_k,price_k,units_sold_k\nA,1,2,3,4\n",
            r"duplicate column name\(s\) in header: 'price_k'",
            id="19-duplicate-header",
        ),
        pytest.param(
            b"country,avg_income_k,price_k,units_sold_k\nA,1,2,4\n",
            r"missing required column\(s\) 'tax_k'",
            id="20-missing-column",
        ),
        pytest.param(
            f"{HEADER},region\nA,70,0.1,0.043,5,EU\n".encode(),
            r"unexpected column\(s\) 'region'",
            id="21-extra-column",
        ),
        pytest.param(
            b"country,avg_income_k,Price_K ,tax_k,units_sold_k\nA,1,2,3,4\n",
            r"missing required column\(s\) 'price_k' \(found 'Price_K ' for 'price_k'",
            id="22-header-case",
        ),
    ],
)
def test_file_level_problems_reject_the_file_naming_it(write_csv, content, message):
    path = write_csv(content, "in.csv")
    with pytest.raises(InputFileError, match=message) as err:
        read(path)
    assert str(err.value).startswith(str(path))
    assert "\n" not in str(err.value)


# --- accepted variants ---


def test_bom_crlf_and_no_final_newline_are_accepted(write_csv):  # catalogue 9, 10
    text = f"{HEADER}\n{GOOD}".rstrip("\n").replace("\n", "\r\n")
    raw = read(write_csv(b"\xef\xbb\xbf" + text.encode()))
    assert raw.rows["country"].tolist() == ["A", "B"]
    assert raw.rows["units_sold_k"].tolist() == ["5", "8"]


def test_columns_in_another_order_are_accepted(write_csv):  # catalogue 23
    raw = read(write_csv("units_sold_k,tax_k,price_k,avg_income_k,country\n5,0.043,0.1,70,A\n"))
    assert raw.rows.loc[0, "avg_income_k"] == "70"
    assert raw.rows.loc[0, "units_sold_k"] == "5"


def test_unused_contract_column_is_allowed(write_csv):
    raw = read_sales_csv(
        write_csv(f"{HEADER}\n{GOOD}"),
        required_columns(("avg_income_k",), DEFAULT_TARGETS),
        allowed_columns(("avg_income_k",), DEFAULT_TARGETS),
    )
    assert len(raw.rows) == 2


def test_ragged_rows_are_kept_with_exact_lines(write_csv):  # catalogue 4
    raw = read(write_csv(f"{HEADER}\nA,1,2,3,4\nB,1,2\n\nC,1,2,3,4,5\nD,1,2,3,4\n"))
    assert raw.parse_errors["source_line"].tolist() == [3, 5]
    assert raw.parse_errors["raw"].tolist() == ["B,1,2", "C,1,2,3,4,5"]
    assert raw.parse_errors["detail"].tolist() == [
        "expected 5 fields, found 3",
        "expected 5 fields, found 6",
    ]
    # The blank line (4) is a row of its own, so D keeps its true line number.
    assert raw.rows["source_line"].tolist() == [2, 4, 6]
    assert raw.data_rows == 5
