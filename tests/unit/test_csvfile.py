"""CSV files in blocks and byte ranges: every row's exact line, the file's sha256 from the same
read, rows longer than a block, line ends. (File-level rejects: test_bad_inputs_catalogue.py.)"""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest

from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS, allowed_columns, required_columns
from tasks.common.errors import InputFileError
from tasks.common.paths import resolve_inputs
from tasks.ingest.blocks import LineRejection, parse_block, read_blocks
from tasks.ingest.csvfile import hash_file, open_csv, split_ranges
from tasks.ingest.range_scan import scan_range
from tasks.ingest.scan import open_input
from tests.conftest import HEADER
from tests.pipeline import config, kept_rows, quarantine, scan_paths

REQUIRED = required_columns(DEFAULT_FEATURES, DEFAULT_TARGETS)
ALLOWED = allowed_columns(DEFAULT_FEATURES, DEFAULT_TARGETS)
GOOD = "A,70,0.1,0.043,5\nB,90,0.8,0.064,8\n"


def blocks(path, block_bytes, span=None):
    file = open_csv(path, REQUIRED, ALLOWED)
    digest = hashlib.sha256()
    span = span or split_ranges(file, 0)[0]
    return file, list(read_blocks(path, span, block_bytes, digest)), digest


@pytest.mark.parametrize("block_bytes", [1, 16, 64, 1 << 20])
def test_blocks_hold_whole_lines_and_number_them(write_csv, block_bytes):
    lines = [f"C{i},{i}.5,0.{i},0.0{i},{i}" for i in range(30)]
    path = write_csv("\n".join([HEADER, *lines]))  # no final newline
    file, found, digest = blocks(path, block_bytes)
    assert digest.hexdigest()  # the header is read by the range scan, not here
    text = b"".join(bytes(block.data) for block in found)
    assert text == path.read_bytes()[file.data_start :]
    assert all(bytes(b.data).endswith(b"\n") for b in found[:-1])
    assert [b.first_line for b in found] == list(np.cumsum([0] + [b.lines for b in found[:-1]]))
    assert sum(b.lines for b in found) == 30
    rows = [row for block in found for row in parse_block(file, block).lines]
    assert rows == list(range(30))


def test_ranges_cut_at_line_starts_and_cover_the_data(write_csv):
    path = write_csv("\n".join([HEADER, *[f"C{i},1,1,1,{i}" for i in range(100)]]) + "\n")
    file = open_csv(path, REQUIRED, ALLOWED)
    spans = split_ranges(file, 100)
    assert len(spans) > 5
    assert spans[0].start == file.data_start
    assert spans[-1].end == file.size
    data = path.read_bytes()
    for a, b in itertools.pairwise(spans):
        assert a.end == b.start
        assert data[a.end - 1 : a.end] == b"\n"


def test_a_scanned_file_has_its_sha256_and_lines(write_csv, tmp_path):
    path = write_csv(f"{HEADER}\n{GOOD}")
    for run in (config(), config("tiny ranges")):
        scan = scan_paths([path], run, tmp_path / str(run.split_bytes))
        assert scan.files[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert kept_rows(scan)["line"].tolist() == [2, 3]
        assert kept_rows(scan)["country"].tolist() == ["A", "B"]


def test_ragged_rows_are_kept_with_exact_lines(write_csv, tmp_path):  # catalogue 4
    path = write_csv(f"{HEADER}\nA,1,2,3,4\nB,1,2\n\nC,1,2,3,4,5\nD,1,2,3,4\n")
    scan = scan_paths([path], config("tiny blocks"), tmp_path / "s")
    records = quarantine(scan)
    ragged = records[records["reason"] == "wrong field count"]
    assert ragged["source_line"].tolist() == [3, 5]
    assert ragged["raw"].tolist() == ["B,1,2", "C,1,2,3,4,5"]
    assert ragged["detail"].tolist() == ["expected 5 fields, found 3", "expected 5 fields, found 6"]
    # The blank line (4) is a row of its own, so D keeps its true line number.
    assert kept_rows(scan)["line"].tolist() == [2, 6]
    assert scan.files[0].rows == 5


def test_a_line_ended_by_a_bare_carriage_return_is_refused_at_its_line(write_csv, tmp_path):
    path = write_csv(f"{HEADER}\r\nA,1,2,3,4\r\nB,1,2,3,4\rC,1,2,3,4\r\n")
    file = open_csv(path, REQUIRED, ALLOWED)
    with pytest.raises(LineRejection) as found:
        list(read_blocks(path, split_ranges(file, 0)[0], 1 << 20, hashlib.sha256()))
    assert found.value.local_line == 1
    for layout in ("one block", "tiny ranges"):
        with pytest.raises(InputFileError, match=r"sales\.csv: line 3: a carriage return"):
            scan_paths([path], config(layout), tmp_path / layout)


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


def test_unused_contract_column_is_allowed(write_csv, tmp_path):
    path = write_csv(f"{HEADER}\n{GOOD}")
    scan = scan_paths([path], config(features=("avg_income_k",)), tmp_path / "s")
    assert scan.accepted == 2


def test_the_hash_pass_hashes_the_file_and_each_planned_range_in_one_read(write_csv):
    path = write_csv("\n".join([HEADER, *[f"C{i},1,1,1,{i}" for i in range(100)]]) + "\n")
    spans = split_ranges(open_csv(path, REQUIRED, ALLOWED), 300)
    data = path.read_bytes()
    hashed = hash_file(path, spans)
    assert hashed.sha256 == hashlib.sha256(data).hexdigest()
    starts = [0] + [span.start for span in spans[1:]]  # the first range with the header
    assert list(hashed.ranges) == [
        hashlib.sha256(data[a : s.end]).hexdigest() for a, s in zip(starts, spans, strict=True)
    ]
    # rewritten with one more row first: no planned cut is at a line end any more, and the
    # last range runs to the (new) end of the file
    path.write_bytes(data.replace(b"\n", b"\nX,1,1,1,1\n", 1))
    again = hash_file(path, spans)
    assert again.ranges[:-1] == ("",) * (len(spans) - 1)
    assert again.ranges[-1] == hashlib.sha256(path.read_bytes()[spans[-1].start :]).hexdigest()


def test_a_range_of_a_file_cut_short_since_it_was_planned_ends_where_the_file_ends(write_csv):
    path = write_csv("\n".join([HEADER, *[f"C{i},1,1,1,{i}" for i in range(100)]]) + "\n")
    file = open_csv(path, REQUIRED, ALLOWED)
    span = split_ranges(file, 0)[0]
    path.write_bytes(path.read_bytes()[: file.size // 2])
    found = list(read_blocks(path, span, 64, hashlib.sha256()))
    assert b"".join(bytes(b.data) for b in found) == path.read_bytes()[file.data_start :]


def test_a_header_changed_since_the_file_was_opened_refuses_the_file(write_csv, tmp_path):
    path = write_csv(f"{HEADER}\n{GOOD}")
    run = config()
    file = open_input(path, run)
    # the same length, two columns swapped: read with the old names, prices would be incomes
    path.write_text(HEADER.replace("avg_income_k,price_k", "price_k,avg_income_k") + "\n" + GOOD)
    with pytest.raises(InputFileError, match=r"sales\.csv: changed while it was read \(line 1"):
        scan_range(file, split_ranges(file, 0)[0], run, tmp_path / "staging", "r")
