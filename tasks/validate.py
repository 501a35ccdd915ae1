"""Validate: text rows -> typed rows that pass the pandera schema, plus a quarantine record for
every row that does not, with the column and the reason.

Numbers are parsed here, under our control (no locale, no thousands separators, no hex), and
the pandera schema (schemas/sales.py) decides the rest: not null, finite, in range, unique key.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NONE

from schemas.sales import ID_COLUMN, sales_schema
from tasks.errors import DataQualityError, InputFileError, PipelineError
from tasks.ingest import RawFile

NUMBER_PATTERN = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
MISSING_TOKENS = frozenset({"", "na", "n/a", "#n/a", "null", "none", "nan", "-nan", "+nan"})
INFINITE_TOKENS = frozenset({"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})
_MISSING = pa.array(sorted(MISSING_TOKENS))
_INFINITE = pa.array(sorted(INFINITE_TOKENS))
QUARANTINE_COLUMNS = ["source_file", "source_line", "column", "reason", "detail", "raw"]

# pandera check name (prefix) -> quarantine reason
_REASONS = {
    "not_nullable": "missing value",
    "not finite": "not finite",
    "greater_than": "out of range",
    "less_than": "out of range",
    "in_range": "out of range",
    "multiple_fields_uniqueness": "duplicate key",
    "field_uniqueness": "duplicate key",
    "str_matches": "invalid text",
}


@dataclass(frozen=True)
class FileReport:
    """Row accounting for one input file: rows = accepted + quarantined."""

    path: str
    sha256: str
    size_bytes: int
    rows: int
    accepted: int
    quarantined: int


@dataclass(frozen=True)
class ValidatedData:
    """Accepted rows (typed, with source_file/source_line), quarantine records, accounting."""

    accepted: pd.DataFrame
    quarantine: pd.DataFrame
    files: list[FileReport]

    @property
    def rows_in(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def rows_quarantined(self) -> int:
        return sum(f.quarantined for f in self.files)


def parse_numbers(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Text -> (float64 values, problem). Values are NaN where the text is missing or not a
    number; `problem` is the text that failed to parse, NA elsewhere. inf/-inf parse as such
    (the schema rejects them as not finite). Vectorized with pyarrow compute."""
    arrow = pa.array(text, type=pa.string())
    stripped = pc.utf8_trim_whitespace(arrow)
    lowered = pc.utf8_lower(stripped)
    numeric = pc.match_substring_regex(stripped, f"^{NUMBER_PATTERN}$")
    infinite = pc.is_in(lowered, value_set=_INFINITE)
    missing = pc.is_in(lowered, value_set=_MISSING)
    values = pc.cast(pc.if_else(numeric, stripped, pa.scalar(None, pa.string())), pa.float64())
    signed_inf = pc.if_else(pc.starts_with(lowered, "-"), -np.inf, np.inf)
    values = pc.if_else(infinite, signed_inf, values)
    parsed = pc.or_(pc.or_(numeric, infinite), missing)
    problem = pc.if_else(parsed, pa.scalar(None, pa.string()), arrow)
    index = text.index
    return (
        pd.Series(values.to_numpy(zero_copy_only=False), index=index, dtype="float64"),
        pd.Series(problem.to_pandas(), index=index, dtype="str"),
    )


def validate_file(
    raw: RawFile, features: tuple[str, ...], targets: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One file's text rows -> (accepted typed rows, quarantine records)."""
    source = str(raw.path)
    rows = raw.rows.reset_index(drop=True)
    text_columns = list(raw.header)
    blank = (rows[text_columns] == "").all(axis=1).to_numpy()

    typed = pd.DataFrame(index=rows.index)
    typed[ID_COLUMN] = rows[ID_COLUMN].str.strip().replace("", pd.NA)
    problems = []
    for name in (*features, *targets):
        typed[name], bad_text = parse_numbers(rows[name])
        for pos, value in bad_text.dropna().items():
            problems.append((pos, name, "not a number", f"{name}={value!r} is not a number"))

    cells = pd.DataFrame(problems, columns=["pos", "column", "reason", "detail"])
    cells = pd.concat(
        [cells, _schema_failures(typed, rows, features, targets, source)], ignore_index=True
    )
    # A cell that did not parse also shows up as null: keep the parse reason only. Other
    # reasons for one cell all stay (-inf is both not finite and out of range).
    unparsed = set(
        zip(cells["pos"][: len(problems)], cells["column"][: len(problems)], strict=True)
    )
    shadowed = [
        (pos, column) in unparsed and reason == "missing value"
        for pos, column, reason in zip(cells["pos"], cells["column"], cells["reason"], strict=True)
    ]
    cells = cells[~np.array(shadowed, dtype=bool)]
    cells = cells[~blank[cells["pos"].to_numpy(dtype="int64")]]
    blanks = pd.DataFrame(
        {"pos": np.flatnonzero(blank), "column": None, "reason": "blank line", "detail": ""}
    )
    cells = pd.concat([cells, blanks], ignore_index=True).sort_values("pos", kind="stable")

    bad_pos = cells["pos"].to_numpy(dtype="int64")
    quarantine = pd.DataFrame(
        {
            "source_file": source,
            "source_line": rows["source_line"].to_numpy()[bad_pos],
            "column": cells["column"].to_numpy(),
            "reason": cells["reason"].to_numpy(),
            "detail": cells["detail"].to_numpy(),
            "raw": _as_csv_lines(rows.iloc[bad_pos][text_columns]),
        }
    )
    parse_errors = raw.parse_errors.assign(source_file=source, column=None)
    quarantine = pd.concat([quarantine, parse_errors[QUARANTINE_COLUMNS]], ignore_index=True)
    quarantine = quarantine.sort_values("source_line", kind="stable").reset_index(drop=True)

    keep = np.ones(len(rows), dtype=bool)
    keep[bad_pos] = False
    accepted = typed[keep].reset_index(drop=True)
    accepted["source_file"] = source
    accepted["source_line"] = rows["source_line"].to_numpy()[keep]
    return accepted, quarantine.astype({"source_line": "int64"})


def _schema_failures(typed, rows, features, targets, source) -> pd.DataFrame:
    """Lazy pandera validation -> one record (pos, column, reason, detail) per failing cell."""
    schema = sales_schema(features, targets)
    try:
        schema.validate(typed, lazy=True)
    except pandera.errors.SchemaErrors as err:
        cases = err.failure_cases
    else:
        return pd.DataFrame(columns=["pos", "column", "reason", "detail"])
    frame_level = cases[cases["index"].isna()]
    if len(frame_level):
        first = frame_level.iloc[0]
        raise InputFileError(
            f"{source}: schema check {first['check']} failed: {first['failure_case']}"
        )
    checks = cases["check"].astype(str)
    reasons = {
        check: next((r for prefix, r in _REASONS.items() if check.startswith(prefix)), check)
        for check in checks.unique()
    }
    texts = {column: rows[column].to_numpy(dtype=object) for column in cases["column"].unique()}
    records = []
    for check, column, pos in zip(checks, cases["column"], cases["index"].astype(int), strict=True):
        reason, text = reasons[check], str(texts[column][pos])
        if reason == "duplicate key":
            detail = f"{ID_COLUMN} {text.strip()!r} already appears earlier in this file"
        elif not text.strip():
            detail = f"{column} is empty"
        elif reason == "missing value":
            detail = f"{column}={text!r}"
        else:
            detail = f"{column}={text!r} fails {check}"
        records.append((pos, column, reason, detail))
    return pd.DataFrame(records, columns=["pos", "column", "reason", "detail"])


def _as_csv_lines(frame: pd.DataFrame) -> list[str]:
    """Rows of text back to CSV lines (a blank line stays empty)."""
    out = []
    for values in frame.itertuples(index=False):
        if not any(values):
            out.append("")
            continue
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(values)
        out.append(buf.getvalue())
    return out


def check_columns(features: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """Raise PipelineError naming the parameter when column lists repeat or overlap."""
    for name, columns in (("features", features), ("targets", targets)):
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise PipelineError(f"parameter {name}: column(s) {repeated} listed more than once")
    both = sorted(set(features) & set(targets))
    if both:
        raise PipelineError(f"parameters features and targets: {both} cannot be both")
    if ID_COLUMN in (*features, *targets):
        raise PipelineError(f"parameters features and targets: '{ID_COLUMN}' is the row key")


def validate_files(
    raw_files: list[RawFile], features: tuple[str, ...], targets: tuple[str, ...]
) -> ValidatedData:
    """Validate every file; concatenate accepted rows and quarantine records."""
    accepted, quarantine, reports = [], [], []
    for raw in raw_files:
        good, bad = validate_file(raw, features, targets)
        n_bad = bad["source_line"].nunique()
        assert len(good) + n_bad == raw.data_rows, f"row accounting broken for {raw.path}"
        accepted.append(good)
        quarantine.append(bad)
        reports.append(
            FileReport(str(raw.path), raw.sha256, raw.size_bytes, raw.data_rows, len(good), n_bad)
        )
    quarantine = pd.concat(quarantine, ignore_index=True)
    text_columns = [c for c in QUARANTINE_COLUMNS if c != "source_line"]
    quarantine = quarantine.astype({**dict.fromkeys(text_columns, "str"), "source_line": "int64"})
    return ValidatedData(pd.concat(accepted, ignore_index=True), quarantine, reports)


def check_quality(data: ValidatedData, max_bad_fraction: float) -> None:
    """Raise DataQualityError when no rows are left or too many were quarantined."""
    names = ", ".join(f.path for f in data.files)
    if len(data.accepted) == 0:
        raise DataQualityError(
            f"no valid rows: all {data.rows_in} data rows of {names} were quarantined"
        )
    share = data.rows_quarantined / data.rows_in
    if share > max_bad_fraction:
        raise DataQualityError(
            f"{data.rows_quarantined} of {data.rows_in} rows ({share:.1%}) of {names} were "
            f"quarantined, above max_bad_fraction={max_bad_fraction}"
        )


@task(cache_policy=NONE)
def validate_rows(
    raw_files: list[RawFile], features: tuple[str, ...], targets: tuple[str, ...]
) -> ValidatedData:
    """Validate the ingested files against the sales schema."""
    return validate_files(raw_files, features, targets)
