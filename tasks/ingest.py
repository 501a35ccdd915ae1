"""Ingest: find the input CSVs and read each one as text, keeping file and line for every row.

Every column is read as text so that one odd value cannot change a whole column's type; numbers
are parsed under our control in tasks/validate.py. File-level problems raise InputFileError with
one sentence naming the file.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NONE

from tasks.errors import InputFileError, PipelineError
from tasks.paths import data_roots, resolve_inputs

UTF8_BOM = b"\xef\xbb\xbf"
_MAGIC = {
    b"\x1f\x8b": "gzip-compressed; decompress it first (gunzip)",
    b"PK\x03\x04": "a zip archive; extract the CSV first",
    b"BZh": "bzip2-compressed; decompress it first",
    b"\xfd7zXZ": "xz-compressed; decompress it first",
    b"\x28\xb5\x2f\xfd": "zstd-compressed; decompress it first",
}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
READ_BLOCK_BYTES = 16 << 20
# Block size of the streaming reader: one block of text (about 250k rows) in memory at a time.
STREAM_BLOCK_BYTES = 8 << 20


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


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def sniff_file(path: Path) -> None:
    """Reject empty, compressed and UTF-16 files from their first bytes."""
    with path.open("rb") as fh:
        head = fh.read(64)
    if not head:
        raise InputFileError(f"{path}: empty file (0 bytes)")
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise InputFileError(f"{path}: file is {what}")
    if head.startswith(_UTF16_BOMS) or (len(head) >= 4 and head[1:4:2] == b"\x00\x00"):
        raise InputFileError(f"{path}: file is UTF-16 encoded; save it as UTF-8")


def read_header(path: Path) -> tuple[str, ...]:
    """The column names on line 1 (a UTF-8 BOM is allowed)."""
    with path.open("rb") as fh:
        line = fh.readline()
    line = line.removeprefix(UTF8_BOM)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: line 1 (header) is not valid UTF-8") from None
    if not text.strip():
        raise InputFileError(f"{path}: line 1 is blank; expected a header row")
    return tuple(next(csv.reader([text.rstrip("\r\n")])))


def check_header(
    path: Path, header: tuple[str, ...], required: list[str], allowed: set[str]
) -> None:
    """Reject a header with duplicate, missing or unexpected columns (order does not matter)."""
    expected = ", ".join(required)
    if len(header) == 1 and any(sep in header[0] for sep in (";", "\t", "|")):
        sep = next(sep for sep in (";", "\t", "|") if sep in header[0])
        raise InputFileError(
            f"{path}: header does not match the expected columns ({expected}); "
            f"the file seems to be delimited by {sep!r}, expected ','"
        )
    seen: set[str] = set()
    duplicates = sorted({name for name in header if name in seen or seen.add(name)})
    if duplicates:
        raise InputFileError(f"{path}: duplicate column name(s) in header: {_names(duplicates)}")
    missing = [name for name in required if name not in header]
    if missing:
        hints = [
            f"'{found}' for '{want}'"
            for want in missing
            for found in header
            if found != want and found.strip().lower() == want.lower()
        ]
        hint = f" (found {', '.join(hints)}: names are case- and space-sensitive)" if hints else ""
        raise InputFileError(
            f"{path}: missing required column(s) {_names(missing)}{hint}; expected {expected}"
        )
    extra = [name for name in header if name not in allowed]
    if extra:
        raise InputFileError(f"{path}: unexpected column(s) {_names(extra)}; expected {expected}")


def read_sales_csv(path: Path, required: list[str], allowed: set[str]) -> RawFile:
    """Read one CSV as text, checking it at file level first. See RawFile for what comes back."""
    sniff_file(path)
    header = read_header(path)
    check_header(path, header, required, allowed)
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


def _opens_a_quote(text: str) -> bool:
    """A rejected row that runs over a line end, or has a field opening a quote it never
    closes (seen when a block boundary cuts the quoted value short)."""
    if "\n" in text or "\r" in text:
        return True
    return text.count('"') % 2 == 1 and re.search(r'(^|,)"', text) is not None


def _unterminated_quote(path: Path, line: int) -> InputFileError:
    return InputFileError(
        f"{path}: line {line}: unterminated quote (a quoted value runs past the end "
        "of its line); fix the quoting"
    )


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


@dataclass(frozen=True)
class TextBatch:
    """A slice of a CSV read as text: `rows` (one text column per CSV column), `lines` (the
    1-based line of each row) and the parser's rejected rows among those lines."""

    rows: pa.Table
    lines: np.ndarray
    parse_errors: pd.DataFrame


def iter_text_batches(
    path: Path, required: list[str], allowed: set[str], block_bytes: int = STREAM_BLOCK_BYTES
) -> Iterator[TextBatch]:
    """Stream one CSV as text in blocks of about `block_bytes`, with the same file-level checks
    and the same line numbers as read_sales_csv. Memory is bounded by the block size."""
    sniff_file(path)
    header = read_header(path)
    check_header(path, header, required, allowed)
    pending: list[tuple[int, str, int, int]] = []
    taken = _TakenLines()
    next_line, seen = 2, 0
    try:
        try:
            reader = pacsv.open_csv(path, **_csv_options(header, pending.append, block_bytes))
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):  # the header and nothing after it
                raise InputFileError(f"{path}: no data rows (header only)") from None
            raise
        for batch in reader:
            # The parser reports a block's rejected rows before it hands over the block's rows.
            taken.add(pending, next_line)
            lines = taken.next_free(next_line, batch.num_rows)
            end = int(lines[-1]) + 1 if len(lines) else next_line
            errors = [e for e in pending if e[0] < end]
            pending[:] = [e for e in pending if e[0] >= end]
            table = pa.Table.from_batches([batch])
            _reject_multiline_batch(path, table, lines, errors)
            seen += batch.num_rows + len(errors)
            next_line = end
            yield TextBatch(table, lines, parse_error_frame(errors))
    except pa.ArrowInvalid as exc:
        raise _explain_arrow_error(path, header, exc) from None
    if pending:
        _reject_multiline_batch(path, None, np.zeros(0, np.int64), pending)
        seen += len(pending)
        empty = pa.table({name: pa.array([], pa.string()) for name in header})
        yield TextBatch(empty, np.zeros(0, np.int64), parse_error_frame(pending))
    if seen == 0:
        raise InputFileError(f"{path}: no data rows (header only)")


def _has_line_break(chunk: pa.Array) -> bool:
    """Whether any value of a text array holds CR or LF (a scan of its bytes)."""
    if len(chunk) == 0:
        return False
    width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(chunk.buffers()[1], dtype=width)
    first, last = offsets[chunk.offset], offsets[chunk.offset + len(chunk)]
    data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[first:last]
    return bool(np.any(data <= 13) and (np.any(data == 10) or np.any(data == 13)))


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


def _names(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient I/O failures; a rejected file stays rejected."""
    try:
        state.result()
    except PipelineError:
        return False
    except Exception:
        return True
    return False


# Every task that reads input files: transient I/O errors are retried, rejected files are not.
FILE_READ_TASK = {
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": retry_unless_user_error,
    "cache_policy": NONE,
}


@task(**FILE_READ_TASK)
def read_inputs(data: str | list[str], required: list[str], allowed: set[str]) -> list[RawFile]:
    """Resolve the data path (confined to the data roots) and read every CSV it names, logging
    each file and updating a Prefect progress artifact."""
    logger = get_run_logger()
    paths = resolve_inputs(data, data_roots())
    progress = create_progress_artifact(0.0, description=f"Reading {len(paths)} input file(s)")
    raws = []
    for done, path in enumerate(paths, start=1):
        raws.append(read_sales_csv(path, required, allowed))
        logger.info("read %d/%d: %s (%d data rows)", done, len(paths), path, raws[-1].data_rows)
        update_progress_artifact(progress, 100.0 * done / len(paths))
    return raws
