"""Reference implementations for the tests: the whole-file path as it stood before the one
block pipeline (read a file whole, validate every row with pandera, split, sum, evaluate and
predict from a DataFrame). Slow and memory-hungry, and independent of the block pipeline's
screen, byte ranges, spills and duplicate-key partitions: the oracle the pipeline must equal."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from schemas.sales import ID_COLUMN, allowed_columns, required_columns, sales_schema
from tasks.common.errors import InputFileError, PipelineError
from tasks.ingest.csvfile import open_csv, sha256_file
from tasks.ingest.numbers import parse_numbers
from tasks.ingest.profile import PROFILE_SAMPLE_ROWS, QUANTILES
from tasks.ingest.split import split_holdout
from tasks.ingest.stats import moments_of
from tasks.model.evaluate import SPLITS, metrics_frame

QUARANTINE_COLUMNS = ["source_file", "source_line", "column", "reason", "detail", "raw"]
READ_BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class RawFile:
    """One CSV read as text.

    rows: one column of text per CSV column plus `source_line` (1-based line in the file).
    parse_errors: rows the CSV parser could not split into the header's fields, with
    `source_line`, `reason`, `detail` and `raw` (the line as written).
    """

    path: Path
    sha256: str
    size_bytes: int
    header: tuple[str, ...]
    rows: pd.DataFrame
    parse_errors: pd.DataFrame

    @property
    def data_rows(self) -> int:
        return len(self.rows) + len(self.parse_errors)


def read_sales_csv(path: Path, required: list[str], allowed: set[str]) -> RawFile:
    """Read one CSV as text, checking it at file level first. See RawFile for what comes back."""
    header = open_csv(path, required, allowed).header
    parse_errors: list[tuple[int, str, int, int]] = []
    try:
        table = pacsv.read_csv(path, **_csv_options(header, parse_errors.append, READ_BLOCK_BYTES))
    except pa.ArrowInvalid as exc:
        raise _explain_arrow_error(path, header, exc) from None
    taken = _TakenLines()
    taken.add(parse_errors, 2)
    lines = taken.next_free(2, table.num_rows)
    _reject_multiline_batch(path, table, lines, parse_errors)
    rows = table.to_pandas()
    rows["source_line"] = lines
    errors = parse_error_frame(parse_errors)
    if len(rows) + len(errors) == 0:
        raise InputFileError(f"{path}: no data rows (header only)")
    return RawFile(path, sha256_file(path), path.stat().st_size, header, rows, errors)


def _csv_options(
    header: tuple[str, ...], on_error: Callable[[tuple[int, str, int, int]], None], block: int
) -> dict[str, Any]:
    """pyarrow CSV options: every column as text, blank lines kept (so that they are counted
    and lines do not shift), rows with the wrong field count handed to `on_error` as
    (line, text, fields found, fields expected). Single-threaded: pyarrow reports row numbers
    only then."""

    def on_invalid_row(row: pacsv.InvalidRow) -> str:
        on_error((row.number, row.text, row.actual_columns, row.expected_columns))
        return "skip"

    return {
        "read_options": pacsv.ReadOptions(use_threads=False, block_size=block),
        "parse_options": pacsv.ParseOptions(
            ignore_empty_lines=False, invalid_row_handler=on_invalid_row
        ),
        "convert_options": pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string())),
    }


def parse_error_frame(parse_errors: list[tuple[int, str, int, int]]) -> pd.DataFrame:
    """Rows the parser rejected -> source_line, reason, detail, raw."""
    return pd.DataFrame(
        {
            "source_line": pd.Series([e[0] for e in parse_errors], dtype="int64"),
            "reason": "wrong field count",
            "detail": [f"expected {e[3]} fields, found {e[2]}" for e in parse_errors],
            "raw": pd.Series([e[1] for e in parse_errors], dtype="str"),
        }
    )


class _TakenLines:
    """Lines taken by rows the parser rejected (a rejected row can span several lines)."""

    def __init__(self) -> None:
        self.lines = np.zeros(0, dtype=np.int64)
        self.known: set[int] = set()

    def add(self, errors: list[tuple], first: int) -> None:
        new = [
            line
            for number, text, *_ in errors
            if number not in self.known
            for line in range(number, number + text.count("\n") + 1)
        ]
        self.known.update(number for number, *_ in errors)
        lines = np.concatenate([self.lines[self.lines >= first], np.asarray(new, np.int64)])
        self.lines = np.unique(lines)

    def next_free(self, first: int, n: int) -> np.ndarray:
        """The first `n` lines from `first` on that no rejected row takes."""
        ahead = self.lines[self.lines >= first]
        candidates = np.arange(first, first + n + len(ahead), dtype=np.int64)
        if len(ahead):
            candidates = candidates[~np.isin(candidates, ahead)]
        return candidates[:n]


def _reject_multiline_batch(
    path: Path, table: pa.Table | None, lines: np.ndarray, errors: list[tuple]
) -> None:
    starts = [number for number, text, *_ in errors if _opens_a_quote(text)]
    for column in [] if table is None else table.columns:
        for chunk in column.chunks:
            if not _has_line_break(chunk):
                continue
            hit = pc.match_substring_regex(column, "[\r\n]").to_numpy(zero_copy_only=False)
            starts.append(int(lines[np.flatnonzero(hit)[0]]))
            break
    if starts:
        raise _unterminated_quote(path, min(starts))


def _opens_a_quote(text: str) -> bool:
    """A rejected row that runs over a line end, or has a field opening a quote it never
    closes (seen when a block boundary cuts the quoted value short)."""
    if "\n" in text or "\r" in text:
        return True
    return text.count('"') % 2 == 1 and re.search(r'(^|,)"', text) is not None


def _has_line_break(chunk: pa.Array) -> bool:
    """Whether any value of a text array holds CR or LF (a scan of its bytes)."""
    if len(chunk) == 0:
        return False
    width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(chunk.buffers()[1], dtype=width)
    first, last = offsets[chunk.offset], offsets[chunk.offset + len(chunk)]
    data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[first:last]
    return bool(np.any(data <= 13) and (np.any(data == 10) or np.any(data == 13)))


def _unterminated_quote(path: Path, line: int) -> InputFileError:
    return InputFileError(
        f"{path}: line {line}: unterminated quote (a quoted value runs past the end "
        "of its line); fix the quoting"
    )


def _explain_arrow_error(
    path: Path, header: tuple[str, ...], exc: pa.ArrowInvalid
) -> PipelineError:
    message = str(exc)
    if "UTF8" in message or "UTF-8" in message:
        with path.open("rb") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as err:
                    field = line[: err.start].count(b",")
                    column = header[field] if field < len(header) else f"field {field + 1}"
                    return InputFileError(
                        f"{path}: line {number}, column '{column}': bytes that are not valid "
                        "UTF-8 (latin-1?); save the file as UTF-8"
                    )
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return InputFileError(f"{path}: could not parse as CSV: {first}")


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


def least_squares(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form optimum of the MSE: X [N, d], y [N, k] -> (W [k, d], b [k]), float64."""
    A = np.column_stack([X.astype(np.float64), np.ones(len(X))])
    solution, *_ = np.linalg.lstsq(A, y.astype(np.float64), rcond=None)
    return solution[:-1].T, solution[-1]


def linear_predict(X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """X @ W.T + b in float64."""
    return X.astype(np.float64) @ W.T + b


def mse_per_target(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[N, k] predictions and targets -> MSE per target [k]."""
    return ((pred - y) ** 2).mean(axis=0)


def evaluate_model(
    X: np.ndarray,
    y: np.ndarray,
    is_holdout: np.ndarray,
    fit: Any,
    targets: tuple[str, ...],
) -> pd.DataFrame:
    """Metrics per target and split: mse, baseline_mse (predicting the training mean), r2
    (1 - mse / baseline_mse), rows, optimum_mse (the least-squares model fitted on the training
    split), relative_gap to it, and how training went. A split with no rows is left out."""
    X = X.astype(np.float64)
    y = y.astype(np.float64)
    train = ~is_holdout
    W_opt, b_opt = least_squares(X[train], y[train])
    train_mean = y[train].mean(axis=0)
    per_split = {}
    for split, mask in zip(SPLITS, (train, is_holdout), strict=True):
        if not mask.any():
            continue
        Xs, ys = X[mask], y[mask]
        per_split[split] = (
            int(mask.sum()),
            mse_per_target(linear_predict(Xs, fit.W, fit.b), ys),
            mse_per_target(np.broadcast_to(train_mean, ys.shape), ys),
            mse_per_target(linear_predict(Xs, W_opt, b_opt), ys),
        )
    return metrics_frame(per_split, fit, targets)


def predictions_frame(
    accepted: pd.DataFrame,
    is_holdout: np.ndarray,
    fit: Any,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    id_column: str,
) -> pd.DataFrame:
    """Every accepted row with predicted_<target>, residual_<target> (actual - predicted),
    split and its source."""
    pred = linear_predict(accepted[list(features)].to_numpy(), fit.W, fit.b)
    out = accepted[[id_column, *features, *targets]].copy()
    for j, target in enumerate(targets):
        out[f"predicted_{target}"] = pred[:, j]
        out[f"residual_{target}"] = accepted[target].to_numpy() - pred[:, j]
    out["split"] = np.where(is_holdout, "holdout", "train")
    out["source_file"] = accepted["source_file"].to_numpy()
    out["source_line"] = accepted["source_line"].to_numpy()
    return out


def profile_frame(frame: pd.DataFrame, columns: list[str], keys: np.ndarray) -> pd.DataFrame:
    """The profile table of `columns` of `frame` computed row by row: count, mean, std
    (ddof=1), min and max over every row, the quantiles over the rows with the
    PROFILE_SAMPLE_ROWS smallest `keys`."""
    values = frame[columns].to_numpy(np.float64)
    sample = values[np.argsort(keys, kind="stable")[:PROFILE_SAMPLE_ROWS]]
    records = []
    for i, column in enumerate(columns):
        quantiles = np.quantile(sample[:, i], QUANTILES)
        records.append(
            {
                "column": column,
                "count": len(values),
                "mean": values[:, i].mean(),
                "std": values[:, i].std(ddof=1),
                "min": values[:, i].min(),
                **{f"p{round(q * 100):02d}": v for q, v in zip(QUANTILES, quantiles, strict=True)},
                "max": values[:, i].max(),
            }
        )
    return pd.DataFrame.from_records(records)


@dataclass(frozen=True)
class Whole:
    """One file the old way: accepted rows (typed, with source_file and source_line), the
    quarantine records, the row counts, and each accepted row's split."""

    accepted: pd.DataFrame
    quarantine: pd.DataFrame
    rows: int
    is_holdout: np.ndarray

    @property
    def quarantined(self) -> int:
        return int(self.quarantine["source_line"].nunique())


def whole_file(
    path: Path, features, targets, holdout_fraction: float = 0.2, seed: int = 0
) -> Whole:
    raw = read_sales_csv(
        path, required_columns(features, targets), allowed_columns(features, targets)
    )
    accepted, quarantine = validate_file(raw, features, targets)
    is_holdout = split_holdout(accepted[ID_COLUMN], holdout_fraction, seed)
    return Whole(accepted, quarantine, raw.data_rows, is_holdout)


def train_moments(whole: Whole, features, targets):
    train = whole.accepted[~whole.is_holdout]
    return moments_of(
        train[list(features)].to_numpy(np.float64), train[list(targets)].to_numpy(np.float64)
    )


def normalised(quarantine: pd.DataFrame) -> pd.DataFrame:
    frame = quarantine[QUARANTINE_COLUMNS].astype(object)
    frame = frame.where(frame.notna(), None)
    return frame.sort_values(
        ["source_line", "column", "reason"], na_position="first", ignore_index=True
    )
