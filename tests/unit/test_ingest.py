"""Ingest: file-level rejects (one message naming the file) and exact line numbers."""

from __future__ import annotations

import hashlib

from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS, allowed_columns, required_columns
from tasks.ingest import read_sales_csv
from tasks.paths import resolve_inputs
from tests.conftest import HEADER

REQUIRED = required_columns(DEFAULT_FEATURES, DEFAULT_TARGETS)
ALLOWED = allowed_columns(DEFAULT_FEATURES, DEFAULT_TARGETS)
GOOD = "A,70,0.1,0.043,5\nB,90,0.8,0.064,8\n"


def read(path):
    return read_sales_csv(path, REQUIRED, ALLOWED)


def test_reads_every_column_as_text_with_line_numbers(write_csv):
    path = write_csv(f"{HEADER}\n{GOOD}")
    raw = read(path)
    assert raw.rows["country"].tolist() == ["A", "B"]
    assert raw.rows["price_k"].tolist() == ["0.1", "0.8"]
    assert raw.rows["source_line"].tolist() == [2, 3]
    assert raw.data_rows == 2
    assert raw.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# The file-level rejects are in test_bad_inputs_catalogue.py.


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
