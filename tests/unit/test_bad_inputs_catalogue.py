"""../shared/BAD_INPUTS.md as a checklist: every malformed-file case and its exact outcome.

The cases are read from the catalogue itself (the team's copy in ../shared, or tests/BAD_INPUTS.md
in a clone without it, which a test keeps equal to the shared one): every numbered row must have
a case here, and each case's outcome must be one the catalogue allows.

Each case goes through the steps of a run (resolve the path, read, validate, check the bad
share) and ends in one of four outcomes: the file is rejected with one line naming it (and the
line and column where known); rows land in quarantine with the right reason; the file is
accepted whole; or the run fails for its data. For every file, data rows = accepted rows +
quarantined lines.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from tasks.common.errors import DataQualityError, PipelineError
from tasks.common.paths import resolve_inputs
from tasks.ingest.validate import check_quality
from tests.conftest import HEADER, REPO
from tests.pipeline import LAYOUTS, F, T, config, quarantine, scan_paths
from tests.reference import normalised, whole_file

SHARED_CATALOGUE = REPO.parent / "shared" / "BAD_INPUTS.md"
REPO_CATALOGUE = REPO / "tests" / "BAD_INPUTS.md"

GOOD = ["A,70,0.1,0.043,5", "B,90,0.8,0.064,8", "C,80,0.13,0.058,12", "D,100,0.4,0.037,2"]


def _zipped(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("in.csv", content)
    return buffer.getvalue()


def csv(*lines: str, header: str = HEADER) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


def bad(*lines: str) -> bytes:
    """The four good rows (lines 2-5) followed by `lines` (from line 6)."""
    return csv(*GOOD, *lines)


@dataclass(frozen=True)
class Case:
    content: bytes | None  # None: nothing is written
    outcome: str  # reject | quarantine | accept | fail
    message: str = ""  # regex for the one-line error (reject, fail)
    quarantined: dict[int, set] = field(default_factory=dict)  # line -> {(column, reason)}
    accepted: int = 4
    data: str = "{dir}/in.csv"  # the data parameter
    max_bad_fraction: float = 1.0


CASES: dict[str, Case] = {
    "01 path does not exist": Case(None, "reject", r"in\.csv: file not found"),
    "02 zero bytes": Case(b"", "reject", r"in\.csv: empty file \(0 bytes\)"),
    "03 header only": Case(csv(), "reject", r"in\.csv: no data rows \(header only\)"),
    "04 too few fields": Case(
        bad("E,1,2"), "quarantine", quarantined={6: {(None, "wrong field count")}}
    ),
    "04 too many fields": Case(
        bad("E,1,2,3,4,5"), "quarantine", quarantined={6: {(None, "wrong field count")}}
    ),
    "05 semicolon delimiter": Case(
        csv("A;70;0.1;0.043;5", header=HEADER.replace(",", ";")),
        "reject",
        r"in\.csv: header does not match the expected columns .* delimited by ';'",
    ),
    "05 pipe delimiter": Case(
        csv("A|70|0.1|0.043|5", header=HEADER.replace(",", "|")),
        "reject",
        r"in\.csv: header does not match the expected columns .* delimited by '\|'",
    ),
    "05 tab delimiter": Case(
        csv("A\t70\t0.1\t0.043\t5", header=HEADER.replace(",", "\t")),
        "reject",
        r"in\.csv: header does not match the expected columns .* delimited by '\\t'",
    ),
    "06 latin-1 bytes": Case(
        bad() + "Cura\xe7ao,70,0.1,0.043,5\n".encode("latin-1"),
        "reject",
        r"in\.csv: line 6, column 'country': bytes that are not valid UTF-8",
    ),
    "07 UTF-16": Case(bad().decode().encode("utf-16"), "reject", r"in\.csv: file is UTF-16"),
    "08 gzip named .csv": Case(gzip.compress(bad()), "reject", r"in\.csv: file is gzip-compressed"),
    "08 zip archive named .csv": Case(
        _zipped(bad()), "reject", r"in\.csv: file is a zip archive; extract the CSV first"
    ),
    "08 bzip2 named .csv": Case(
        bz2.compress(bad()), "reject", r"in\.csv: file is bzip2-compressed"
    ),
    "08 xz named .csv": Case(lzma.compress(bad()), "reject", r"in\.csv: file is xz-compressed"),
    "08 zstd named .csv": Case(
        b"\x28\xb5\x2f\xfd" + bad(), "reject", r"in\.csv: file is zstd-compressed"
    ),
    "09 UTF-8 BOM": Case(b"\xef\xbb\xbf" + bad(), "accept"),
    "10 CRLF, no final newline": Case(bad().replace(b"\n", b"\r\n").rstrip(b"\r\n"), "accept"),
    "11 quoted numbers": Case(bad('E,"70.5","0.2","0.01","4"'), "accept", accepted=5),
    "12 thousands separator": Case(
        bad('E,"1,234.50",0.2,0.01,4'),
        "quarantine",
        quarantined={6: {("avg_income_k", "not a number")}},
    ),
    "13 nan, NaN": Case(
        bad("E,70,nan,0.01,4", "F,70,0.2,NaN,4"),
        "quarantine",
        quarantined={6: {("price_k", "missing value")}, 7: {("tax_k", "missing value")}},
    ),
    "14 empty, NA, null, N/A": Case(
        bad("E,,0.2,0.01,4", "F,70,NA,0.01,4", "G,70,0.2,null,4", "H,70,0.2,0.01,N/A"),
        "quarantine",
        quarantined={
            6: {("avg_income_k", "missing value")},
            7: {("price_k", "missing value")},
            8: {("tax_k", "missing value")},
            9: {("units_sold_k", "missing value")},
        },
    ),
    "14 #N/A, none": Case(
        bad("E,#N/A,0.2,0.01,4", "F,70,none,0.01,4", "G,70,0.2,None,4"),
        "quarantine",
        quarantined={
            6: {("avg_income_k", "missing value")},
            7: {("price_k", "missing value")},
            8: {("tax_k", "missing value")},
        },
    ),
    "15 inf, 1e400": Case(
        bad("E,inf,0.2,0.01,4", "F,70,0.2,0.01,1e400"),
        "quarantine",
        quarantined={
            6: {("avg_income_k", "not finite"), ("avg_income_k", "out of range")},
            7: {("units_sold_k", "not finite"), ("units_sold_k", "out of range")},
        },
    ),
    "16 negative values, -inf": Case(
        bad("E,-70,0.2,0.01,4", "F,70,-0.2,0.01,4", "G,70,0.2,0.01,-4", "H,70,0.2,-inf,4"),
        "quarantine",
        quarantined={
            6: {("avg_income_k", "out of range")},
            7: {("price_k", "out of range")},
            8: {("units_sold_k", "out of range")},
            9: {("tax_k", "out of range"), ("tax_k", "not finite")},
        },
    ),
    "17 0x10, $5, 12abc": Case(
        bad("E,0x10,0.2,0.01,4", "F,70,$5,0.01,4", "G,70,0.2,0.01,12abc"),
        "quarantine",
        quarantined={
            6: {("avg_income_k", "not a number")},
            7: {("price_k", "not a number")},
            8: {("units_sold_k", "not a number")},
        },
    ),
    # Policy: within one file the first row of a country is kept, later ones are quarantined.
    "18 duplicate key": Case(
        bad("B,91,0.8,0.064,9"), "quarantine", quarantined={6: {("country", "duplicate key")}}
    ),
    "19 duplicate header names": Case(
        csv("A,70,0.1,0.1,5", header="country,avg_income_k,price_k,price_k,units_sold_k"),
        "reject",
        r"in\.csv: duplicate column name\(s\) in header: 'price_k'",
    ),
    "20 missing required column": Case(
        csv("A,70,0.1,5", header="country,avg_income_k,price_k,units_sold_k"),
        "reject",
        r"in\.csv: missing required column\(s\) 'tax_k'",
    ),
    # Policy: a column outside the contract rejects the file (contract columns a run does not
    # use are allowed and ignored).
    "21 unexpected extra column": Case(
        csv("A,70,0.1,0.043,5,EU", header=HEADER + ",region"),
        "reject",
        r"in\.csv: unexpected column\(s\) 'region'",
    ),
    # Policy: names are not normalised; the message points at the near miss.
    "22 header case or whitespace": Case(
        csv("A,70,0.1,0.043,5", header=HEADER.replace("price_k", "Price_K ")),
        "reject",
        r"in\.csv: missing required column\(s\) 'price_k' \(found 'Price_K ' for 'price_k'",
    ),
    "23 columns in another order": Case(
        csv("5,0.043,0.1,70,A", header="units_sold_k,tax_k,price_k,avg_income_k,country"),
        "accept",
        accepted=1,
    ),
    # Policy: padding around the id is stripped; control characters quarantine the row.
    "24 id padding": Case(bad("  E  ,70,0.2,0.01,4"), "accept", accepted=5),
    "24 id control character": Case(
        bad("E\x07,70,0.2,0.01,4"), "quarantine", quarantined={6: {("country", "invalid text")}}
    ),
    # Policy: a blank line is a row of its own, quarantined as such (lines never shift).
    "25 blank line in the middle": Case(
        csv(*GOOD[:2], "", *GOOD[2:]), "quarantine", quarantined={4: {(None, "blank line")}}
    ),
    # Policy: a quoted value running past its line swallows the rest: reject, naming the line.
    "26 unterminated quote": Case(
        bad('E,"70,0.2,0.01,4', "F,70,0.2,0.01,4"),
        "reject",
        r"in\.csv: line 6: unterminated quote",
    ),
    "27 NUL bytes": Case(
        bad("E\x00,70,0.2,0.01,4", "F,70,0.2\x00,0.01,4"),
        "quarantine",
        quarantined={6: {("country", "invalid text")}, 7: {("price_k", "not a number")}},
    ),
    "28 every row bad": Case(
        csv("A,x,0.1,0.1,1", "B,70,-1,0.1,1"),
        "fail",
        r"no valid rows: all 2 data rows of .*in\.csv were quarantined",
        quarantined={2: {("avg_income_k", "not a number")}, 3: {("price_k", "out of range")}},
        accepted=0,
    ),
    "29 bad share above threshold": Case(
        bad("E,x,0.2,0.01,4"),
        "fail",
        r"1 of 5 rows \(20\.0%\) of .*in\.csv were quarantined, above max_bad_fraction=0\.1",
        quarantined={6: {("avg_income_k", "not a number")}},
        max_bad_fraction=0.1,
    ),
    # Policy: contract columns have upper bounds, so absurd values never reach training.
    "30 absurdly large values": Case(
        bad("E,1e30,0.2,0.01,4"), "quarantine", quarantined={6: {("avg_income_k", "out of range")}}
    ),
    "31 folder with no CSV": Case(
        None, "reject", r"no input files: folder .* holds no", data="{dir}"
    ),
    "31 glob matching nothing": Case(
        None, "reject", r"no input files match '.*/\*\.csv'", data="{dir}/*.csv"
    ),
    "32 symlink outside the data root": Case(
        None,
        "reject",
        r"parameter data: '.*in\.csv' is outside the allowed folders",
    ),
}


def run_steps(data, roots, layout, staging, max_bad_fraction=None):
    """The steps of a run up to the data check: resolve the path, pass 1, the bad share."""
    scan = scan_paths(resolve_inputs(data, roots), config(layout), staging)
    if max_bad_fraction is not None:
        check_quality(list(scan.files), max_bad_fraction)
    return scan


def quarantine_map(records: pd.DataFrame) -> dict[int, set]:
    found: dict[int, set] = {}
    for line, column, reason in records[["source_line", "column", "reason"]].itertuples(
        index=False
    ):
        found.setdefault(int(line), set()).add((None if column != column else column, reason))
    return found


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_catalogue_case(case: Case, layout: str, tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if case.content is not None:
        (data_dir / "in.csv").write_bytes(case.content)
    if case is CASES["32 symlink outside the data root"]:
        outside = tmp_path / "secret.csv"
        outside.write_bytes(bad())
        (data_dir / "in.csv").symlink_to(outside)
    data = case.data.format(dir=data_dir)
    roots = [data_dir.resolve()]
    staging = tmp_path / "staging"

    if case.outcome == "reject":
        with pytest.raises(PipelineError, match=case.message) as err:
            run_steps(data, roots, layout, staging, case.max_bad_fraction)
        assert "\n" not in str(err.value)
        assert not isinstance(err.value, DataQualityError)
        return
    if case.outcome == "fail":
        with pytest.raises(DataQualityError, match=case.message):
            run_steps(data, roots, layout, staging / "a", case.max_bad_fraction)
        scan = run_steps(data, roots, layout, staging / "b")
    else:
        scan = run_steps(data, roots, layout, staging / "b", case.max_bad_fraction)

    assert scan.accepted == case.accepted
    records = quarantine(scan)
    assert quarantine_map(records) == case.quarantined
    for report in scan.files:
        assert report.rows == report.accepted + report.quarantined
    lines = case.content.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
    assert sum(f.rows for f in scan.files) == len(lines) - 1  # every line after the header
    if case.outcome == "quarantine":
        assert all(r == "" or r.encode() in lines for r in records["raw"])
    # the same records, messages and lines as the whole-file reference
    whole = whole_file(data_dir / "in.csv", F, T)
    pd.testing.assert_frame_equal(normalised(records), normalised(whole.quarantine))
    assert scan.accepted == len(whole.accepted)


def catalogue_rows() -> dict[int, tuple[str, str]]:
    """The numbered rows of the catalogue's table of malformed files: number -> (case,
    expected)."""
    path = SHARED_CATALOGUE if SHARED_CATALOGUE.exists() else REPO_CATALOGUE
    rows = re.findall(r"^\| (\d+) \| (.+?) \| (.+?) \|$", path.read_text(), flags=re.MULTILINE)
    return {int(number): (case, expected) for number, case, expected in rows}


# The words of the catalogue's "expected" column that allow each outcome.
OUTCOME_WORDS = {
    "reject": ("reject",),
    "quarantine": ("quarantine",),
    "accept": ("accepted", "normalise"),
    "fail": ("run fails",),
}


def test_every_catalogue_row_has_a_case_and_no_case_is_made_up():
    rows = catalogue_rows()
    assert len(rows) >= 32
    assert {int(name.split()[0]) for name in CASES} == set(rows)


@pytest.mark.parametrize("name", list(CASES))
def test_case_outcome_is_one_the_catalogue_allows(name):
    _, expected = catalogue_rows()[int(name.split()[0])]
    assert any(word in expected for word in OUTCOME_WORDS[CASES[name].outcome])


def test_the_repo_copy_of_the_catalogue_is_the_shared_one():
    if not SHARED_CATALOGUE.exists():
        pytest.skip("../shared is not beside this clone; the repo copy is what is checked")
    assert REPO_CATALOGUE.read_text() == SHARED_CATALOGUE.read_text()
