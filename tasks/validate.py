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
from tasks.ingest import RawFile, TextBatch

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
    (the schema rejects them as not finite). Vectorized with pyarrow compute: the common case
    (a plain number) costs one regex and one cast; only the rest is trimmed and looked up."""
    arrow = pa.array(text, type=pa.string(), from_pandas=True)
    plain = pc.fill_null(pc.match_substring_regex(arrow, f"^{NUMBER_PATTERN}$"), False)
    values = pc.cast(pc.if_else(plain, arrow, pa.scalar(None, pa.string())), pa.float64())
    values = values.to_numpy(zero_copy_only=False).copy()
    problem = np.full(len(arrow), None, dtype=object)
    rest = np.flatnonzero(~plain.to_numpy(zero_copy_only=False))
    if len(rest):
        odd = arrow.take(pa.array(rest))
        stripped = pc.utf8_trim_whitespace(odd)
        lowered = pc.utf8_lower(stripped)
        numeric = pc.fill_null(pc.match_substring_regex(stripped, f"^{NUMBER_PATTERN}$"), False)
        infinite = pc.fill_null(pc.is_in(lowered, value_set=_INFINITE), False)
        missing = pc.fill_null(pc.is_in(lowered, value_set=_MISSING), True)
        parsed = pc.cast(pc.if_else(numeric, stripped, pa.scalar(None, pa.string())), pa.float64())
        signed_inf = pc.if_else(pc.starts_with(lowered, "-"), -np.inf, np.inf)
        parsed = pc.if_else(infinite, signed_inf, parsed)
        values[rest] = parsed.to_numpy(zero_copy_only=False)
        ok = pc.or_(pc.or_(numeric, infinite), missing).to_numpy(zero_copy_only=False)
        problem[rest[~ok]] = np.asarray(odd.to_pylist(), dtype=object)[~ok]
    index = text.index
    return (
        pd.Series(values, index=index, dtype="float64"),
        pd.Series(problem, index=index, dtype=object),
    )


@dataclass(frozen=True)
class CheckedRows:
    """One block of text rows checked: `typed` (id and parsed numbers, every row), `keep`
    (rows with no problem) and the quarantine records of the others."""

    typed: pd.DataFrame
    keep: np.ndarray
    quarantine: pd.DataFrame


def check_rows(
    raw: RawFile, features: tuple[str, ...], targets: tuple[str, ...], *, unique_ids: bool
) -> CheckedRows:
    """Parse and check text rows (see validate_file)."""
    source = str(raw.path)
    rows = raw.rows.reset_index(drop=True)
    text_columns = list(raw.header)
    blank = np.asarray((rows[text_columns] == "").all(axis=1).to_numpy(), dtype=bool)

    typed = pd.DataFrame(index=rows.index)
    ids = rows[ID_COLUMN].astype("str").str.strip()  # Arrow-backed text: vectorized checks
    typed[ID_COLUMN] = ids.where(ids != "")
    problems, unparsed = [], {}
    for name in (*features, *targets):
        typed[name], bad_text = parse_numbers(rows[name])
        unparsed[name] = bad_text.notna().to_numpy()
        bad_values = bad_text.to_numpy()
        for pos in np.flatnonzero(unparsed[name]):
            value = bad_values[pos]
            problems.append((pos, name, "not a number", f"{name}={value!r} is not a number"))

    cells = pd.DataFrame(problems, columns=["pos", "column", "reason", "detail"])
    failures = _schema_failures(typed, rows, features, targets, source, unique_ids, unparsed)
    cells = pd.concat([cells, failures], ignore_index=True)
    # A cell that did not parse also shows up as null: keep the parse reason only. Other
    # reasons for one cell all stay (-inf is both not finite and out of range).
    shadowed = np.zeros(len(cells), dtype=bool)
    missing = (cells["reason"] == "missing value").to_numpy()
    positions = cells["pos"].to_numpy(dtype="int64")
    for column, mask in unparsed.items():
        here = missing & (cells["column"] == column).to_numpy()
        shadowed[here] = mask[positions[here]]
    cells = cells[~shadowed]
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
            "raw": as_csv_lines(rows.iloc[bad_pos][text_columns]),
        }
    )
    parse_errors = raw.parse_errors.assign(source_file=source, column=None)
    quarantine = pd.concat([quarantine, parse_errors[QUARANTINE_COLUMNS]], ignore_index=True)
    quarantine = quarantine.sort_values("source_line", kind="stable").reset_index(drop=True)
    keep = np.ones(len(rows), dtype=bool)
    keep[bad_pos] = False
    typed["source_line"] = rows["source_line"].to_numpy()
    return CheckedRows(typed, keep, quarantine.astype({"source_line": "int64"}))


def validate_file(
    raw: RawFile, features: tuple[str, ...], targets: tuple[str, ...]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One file's text rows -> (accepted typed rows, quarantine records)."""
    checked = check_rows(raw, features, targets, unique_ids=True)
    accepted = checked.typed[checked.keep].reset_index(drop=True)
    accepted.insert(len(accepted.columns) - 1, "source_file", str(raw.path))
    return accepted, checked.quarantine


# Row checks whose pandera semantics the pre-screen reproduces exactly (value -> passes).
_FAST_CHECKS = {
    "greater_than": lambda v, st: v > st["min_value"],
    "greater_than_or_equal_to": lambda v, st: v >= st["min_value"],
    "less_than": lambda v, st: v < st["max_value"],
    "less_than_or_equal_to": lambda v, st: v <= st["max_value"],
    "is_finite": lambda v, st: np.isfinite(v),
}


def prescreen(
    schema: pandera.DataFrameSchema,
    columns: dict[str, np.ndarray | pa.Array | pd.Series],
    unparsed: dict[str, np.ndarray],
) -> np.ndarray:
    """Rows that certainly pass every column check of `schema` (not null, range, finite, text
    pattern), computed vectorized from the checks' own statistics; `columns` holds float64
    arrays and, for text columns, text. A check of a kind not listed in _FAST_CHECKS (or a
    pattern RE2 cannot take) makes every row a suspect, so pandera still decides; the screen
    only spares pandera the rows that cannot fail. A cell that did not parse (`unparsed`)
    counts as passing: pandera would only report it as null, which the parser's own record
    shadows."""
    n = len(next(iter(columns.values())))
    ok = np.ones(n, dtype=bool)
    for name, column in schema.columns.items():
        values = columns[name]
        if isinstance(values, np.ndarray):
            cell = ~np.isnan(values)
            with np.errstate(invalid="ignore"):
                for check in column.checks:
                    test = _FAST_CHECKS.get(check.name)
                    if test is None:
                        return np.zeros(n, dtype=bool)
                    cell &= test(values, check.statistics)
            ok &= cell | unparsed.get(name, False)
            continue
        text = pa.array(values, type=pa.string(), from_pandas=True)
        ok &= pc.is_valid(text).to_numpy(zero_copy_only=False)
        for check in column.checks:
            if check.name != "str_matches":
                return np.zeros(n, dtype=bool)
            try:
                hit = pc.match_substring_regex(text, check.statistics["pattern"])
            except pa.ArrowInvalid:
                return np.zeros(n, dtype=bool)
            ok &= pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
    return ok


@dataclass(frozen=True)
class ScreenedBatch:
    """A streamed block screened: trimmed ids (null when empty), float64 values and `clean`,
    the rows that certainly pass every check (their values are final)."""

    ids: pa.Array
    values: np.ndarray
    clean: np.ndarray


def screen_batch(
    batch: TextBatch, features: tuple[str, ...], targets: tuple[str, ...]
) -> ScreenedBatch:
    """The fast half of checking a streamed block: parse plain numbers and pre-screen every row
    in Arrow and numpy. The other rows (and the parser's rejected rows) go through check_rows,
    so every record is check_rows' own; repeated ids are left to the caller."""
    names = (*features, *targets)
    rows = batch.rows
    ids = pc.utf8_trim_whitespace(rows[ID_COLUMN].combine_chunks())
    ids = pc.if_else(pc.equal(ids, ""), pa.scalar(None, pa.string()), ids)
    values = np.empty((rows.num_rows, len(names)))
    clean = np.ones(rows.num_rows, dtype=bool)
    for j, name in enumerate(names):
        text = rows[name].combine_chunks()
        plain = pc.fill_null(pc.match_substring_regex(text, f"^{NUMBER_PATTERN}$"), False)
        parsed = pc.cast(pc.if_else(plain, text, pa.scalar(None, pa.string())), pa.float64())
        values[:, j] = parsed.to_numpy(zero_copy_only=False)
        clean &= plain.to_numpy(zero_copy_only=False)
    schema = sales_schema(features, targets)
    columns = {ID_COLUMN: ids, **{name: values[:, j] for j, name in enumerate(names)}}
    clean &= prescreen(schema, columns, {})
    return ScreenedBatch(ids, values, clean)


def _schema_failures(typed, rows, features, targets, source, unique_ids, unparsed):
    """pandera validation -> one record (pos, column, reason, detail) per failing cell. The
    column checks run on the rows the pre-screen could not clear; the unique-id check, when
    asked for, on the id column of every row."""
    schema = sales_schema(features, targets)
    unique = schema.unique
    schema.unique = None
    columns = {ID_COLUMN: typed[ID_COLUMN]}
    columns |= {name: typed[name].to_numpy() for name in (*features, *targets)}
    suspects = typed[~prescreen(schema, columns, unparsed)]
    found = [_failure_cases(schema, suspects)] if len(suspects) else []
    if unique_ids and unique:
        ids = pandera.DataFrameSchema(
            {ID_COLUMN: pandera.Column(str, nullable=True)},
            unique=unique,
            report_duplicates=schema.report_duplicates,
        )
        found.append(_failure_cases(ids, typed[[ID_COLUMN]]))
    found = [cases for cases in found if cases is not None]
    if not found:
        return pd.DataFrame(columns=["pos", "column", "reason", "detail"])
    cases = pd.concat(found, ignore_index=True)
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
    positions = cases["index"].astype("int64").to_numpy()
    texts = np.empty(len(cases), dtype=object)
    for column in cases["column"].unique():
        picked = (cases["column"] == column).to_numpy()
        texts[picked] = rows[column].iloc[positions[picked]].to_numpy(dtype=object)
    records = []
    for check, column, pos, value in zip(checks, cases["column"], positions, texts, strict=True):
        reason, text = reasons[check], str(value)
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


def _failure_cases(schema: pandera.DataFrameSchema, frame: pd.DataFrame) -> pd.DataFrame | None:
    try:
        schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as err:
        return err.failure_cases
    return None


def as_csv_lines(frame: pd.DataFrame) -> list[str]:
    """Rows of text back to CSV lines (a blank line stays empty)."""
    out = []
    columns = [frame[name].to_numpy(dtype=object) for name in frame.columns]
    for values in zip(*columns, strict=True):
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


def check_quality(files: list[FileReport], max_bad_fraction: float) -> None:
    """Raise DataQualityError when no rows are left or too many were quarantined."""
    names = ", ".join(f.path for f in files)
    rows_in = sum(f.rows for f in files)
    quarantined = sum(f.quarantined for f in files)
    if sum(f.accepted for f in files) == 0:
        raise DataQualityError(
            f"no valid rows: all {rows_in} data rows of {names} were quarantined"
        )
    share = quarantined / rows_in
    if share > max_bad_fraction:
        raise DataQualityError(
            f"{quarantined} of {rows_in} rows ({share:.1%}) of {names} were "
            f"quarantined, above max_bad_fraction={max_bad_fraction}"
        )


@task(cache_policy=NONE)
def validate_rows(
    raw_files: list[RawFile], features: tuple[str, ...], targets: tuple[str, ...]
) -> ValidatedData:
    """Validate the ingested files against the sales schema."""
    return validate_files(raw_files, features, targets)
