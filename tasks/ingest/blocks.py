"""The blocks of a byte range read in order (the range's sha256 and line count from the same
read), one block parsed as text, and lines read back by number (refused if their block's bytes
changed since it was parsed).

Every column is read as text, so that one odd value cannot change a whole column's type; numbers
are parsed under our control (tasks/ingest/numbers.py). A value may not run over a line end (such a
file is refused: "unterminated quote"), so every physical line is one row and a block's rows
are numbered by counting newlines. Line numbers here are local to a byte range (its first line
is 0); tasks/ingest/scan.py adds the range's offset.
"""

from __future__ import annotations

import csv
import hashlib
import re
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from tasks.common import store
from tasks.common.errors import InputFileError
from tasks.common.store import Location
from tasks.ingest.csvfile import ByteRange, CsvFile, changed_message

# One request to an object store reads this much (a block is cut from it), with this many
# requests under way at once: few, large reads for a bucket (each request costs tens of ms). A
# local file is read a block at a time: its reads cost no latency, and each read in flight is
# resident memory (three 64 MB reads were a fifth of a 10M-row run's peak).
READ_BYTES = 64 << 20
READ_AHEAD = 2


class LineRejection(Exception):  # noqa: N818 (an outcome, turned into InputFileError)
    """The file is refused at a line of a byte range: `message` holds `{line}` for the line
    number, which only the range's offset makes absolute."""

    def __init__(self, local_line: int, message: str) -> None:
        super().__init__(message)
        self.local_line, self.message = local_line, message


@dataclass(frozen=True)
class Block:
    """Whole lines of a range: their bytes, the file offset of the first, the range-local
    number of the first line, how many lines there are, and whether all bytes are ASCII."""

    data: memoryview
    offset: int
    first_line: int
    lines: int
    ascii: bool


def read_blocks(
    path: Location, span: ByteRange, block_bytes: int, digest: hashlib._Hash
) -> Iterator[Block]:
    """The range's bytes in blocks of about `block_bytes`, each ending after a newline (a line
    longer than a block makes a longer block), in order; `digest` is updated with every byte.
    Each block is a buffer of its own, filled by one ranged read (of a file or an object)."""
    offset, line, carry = span.start, 0, b""
    for data, last in _read_ahead(path, span.start, span.end, block_bytes):
        digest.update(data)
        buf = bytearray(carry)
        buf += data
        cut = len(buf) if last else buf.rfind(b"\n") + 1
        if cut == 0:  # no line end yet: a line longer than the block
            carry = bytes(buf)
            continue
        carry = bytes(buf[cut:])
        lines = buf.count(b"\n", 0, cut) + (buf[cut - 1] != 0x0A)
        _refuse_bare_cr(path, buf, cut, line)
        yield Block(memoryview(buf)[:cut], offset, line, lines, buf.isascii())
        offset, line = offset + cut, line + lines


def _read_ahead(
    path: Location, start: int, end: int, size: int
) -> Iterator[tuple[memoryview, bool]]:
    """Bytes [start, end) in pieces of `size`, each with whether it is the last. The store is
    asked for READ_BYTES at a time, READ_AHEAD requests under way on threads while the caller
    works: a bucket's latency stays off pass 1's critical path, and a large object is read in
    few requests (a local file: `size` at a time). A file cut short since the plan ends the
    range where it ends (the digest tells), with (b"", True) if it ends between reads."""
    unit = max(size, READ_BYTES) if store.is_remote(path) else size
    spans = deque((a, min(end, a + unit)) for a in range(start, end, unit))
    with ThreadPoolExecutor(READ_AHEAD) as ahead:
        pending: deque = deque()

        def ask() -> None:
            if spans:
                a, b = spans.popleft()
                pending.append((b - a, ahead.submit(store.read_range, path, a, b)))

        for _ in range(READ_AHEAD):
            ask()
        while pending:
            asked, future = pending.popleft()
            data = future.result()
            final = (not spans and not pending) or len(data) < asked
            if final:
                for _, other in pending:
                    other.cancel()
                pending.clear()
            else:
                ask()
            if not data:
                yield data, True
                return
            pieces = range(0, len(data), size)
            for at in pieces:
                yield data[at : at + size], final and at == pieces[-1]


def _refuse_bare_cr(path: Location, buf: bytearray, end: int, first_line: int) -> None:
    if buf.find(b"\r", 0, end) < 0 or buf.count(b"\r", 0, end) == buf.count(b"\r\n", 0, end):
        return
    at = re.search(rb"\r(?!\n)", buf[:end]).start()
    raise LineRejection(
        first_line + buf.count(b"\n", 0, at),
        f"{path}: line {{line}}: a carriage return without a line feed ends a line; save the "
        "file with LF or CRLF line ends",
    )


@dataclass(frozen=True)
class TextBlock:
    """A block parsed: `rows` (one text column per CSV column), `lines` (the range-local line
    of each row) and the rows the parser could not split into the header's fields, as
    (local line, text, fields found, fields expected)."""

    rows: pa.Table
    lines: np.ndarray
    parse_errors: list[tuple[int, str, int, int]]

    @property
    def size(self) -> int:
        return self.rows.num_rows + len(self.parse_errors)


def parse_block(file: CsvFile, block: Block) -> TextBlock:
    """Parse a block as text. Raises LineRejection for a value running over a line end or
    bytes that are not UTF-8."""
    errors: list[tuple[int, str, int, int]] = []
    try:
        table = _read(file, block, None)
    except pa.ArrowInvalid as exc:
        if "columns, got" not in str(exc):
            raise _explain(file, block, exc) from None
        try:
            table = _read(file, block, errors)
        except pa.ArrowInvalid as again:
            raise _explain(file, block, again) from None
    lines = block.first_line + np.arange(block.lines, dtype=np.int64)
    if errors:
        taken = np.array([block.first_line + e[0] - 1 for e in errors], dtype=np.int64)
        lines = lines[~np.isin(lines, taken)]
    errors = [(block.first_line + n - 1, text, found, want) for n, text, found, want in errors]
    lines = lines[: table.num_rows]
    _refuse_multiline(file, table, lines, errors)
    return TextBlock(table, lines, errors)


def _read(file: CsvFile, block: Block, errors: list | None) -> pa.Table:
    handler = None
    if errors is not None:

        def handler(row: pacsv.InvalidRow) -> str:
            errors.append((row.number, row.text, row.actual_columns, row.expected_columns))
            return "skip"

    return pacsv.read_csv(
        pa.BufferReader(block.data),
        read_options=pacsv.ReadOptions(
            use_threads=False, column_names=list(file.header), block_size=len(block.data) + 1
        ),
        parse_options=pacsv.ParseOptions(ignore_empty_lines=False, invalid_row_handler=handler),
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(file.header, pa.string()),
            check_utf8=not block.ascii,
        ),
    )


def _refuse_multiline(
    file: CsvFile, table: pa.Table, lines: np.ndarray, errors: list[tuple]
) -> None:
    """A value holding a line end, or a rejected row opening a quote it never closes: the quote
    would swallow the lines after it, so the file is refused at the first such line."""
    starts = [line for line, text, *_ in errors if _opens_a_quote(text)]
    for column in table.columns:
        for chunk in column.chunks:
            if _has_line_break(chunk):
                hit = pc.match_substring_regex(column, "[\r\n]").to_numpy(zero_copy_only=False)
                starts.append(int(lines[np.flatnonzero(hit)[0]]))
                break
    if starts:
        raise LineRejection(
            min(starts),
            f"{file.path}: line {{line}}: unterminated quote (a quoted value runs past the end "
            "of its line); fix the quoting",
        )


def _opens_a_quote(text: str) -> bool:
    if "\n" in text or "\r" in text:
        return True
    return text.count('"') % 2 == 1 and re.search(r'(^|,)"', text) is not None


def _has_line_break(chunk: pa.Array) -> bool:
    """Whether any value of a text array holds CR or LF (a scan of its bytes)."""
    if len(chunk) == 0:
        return False
    offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32)
    first, last = offsets[chunk.offset], offsets[chunk.offset + len(chunk)]
    data = np.frombuffer(chunk.buffers()[2], dtype=np.uint8)[first:last]
    return bool(np.any(data <= 13) and (np.any(data == 10) or np.any(data == 13)))


def _explain(file: CsvFile, block: Block, exc: pa.ArrowInvalid) -> Exception:
    message = str(exc)
    if "UTF8" in message or "UTF-8" in message:
        for number, line in enumerate(bytes(block.data).split(b"\n")):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                field = line[: err.start].count(b",")
                column = file.header[field] if field < len(file.header) else f"field {field + 1}"
                return LineRejection(
                    block.first_line + number,
                    f"{file.path}: line {{line}}, column '{column}': bytes that are not valid "
                    "UTF-8 (latin-1?); save the file as UTF-8",
                )
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return InputFileError(f"{file.path}: could not parse as CSV: {first}")


def read_lines(
    path: Location, offset: int, data_bytes: int, crc: int, wanted: list[int]
) -> dict[int, str]:
    """Lines of a block read back from the file (the block at `offset`, `data_bytes` long, the
    crc32 of its bytes when it was parsed; its first line numbered 0): {line index: text
    without its line end}. Raises InputFileError if the block's bytes are no longer those."""
    data = bytes(store.read_range(path, offset, offset + data_bytes))
    if zlib.crc32(data) != crc:
        raise InputFileError(changed_message(path, f"bytes {offset}-{offset + data_bytes}"))
    found = data.split(b"\n")
    return {i: found[i].removesuffix(b"\r").decode("utf-8") for i in wanted}


class LineReader:
    """Lines of a file read back by their absolute number (for repeated ids: their text)."""

    def __init__(
        self, file: CsvFile, ranges: list[np.ndarray], offsets: list[int], id_column: str
    ) -> None:
        """`ranges`: per byte range, its blocks as (file offset, local first line, bytes,
        crc32 of the bytes); `id_column` the column `ids` reads."""
        self.file = file
        blocks = [
            np.column_stack([r[:, 0], r[:, 1] + off, r[:, 2], r[:, 3]])
            for r, off in zip(ranges, offsets, strict=True)
            if len(r)
        ]
        self.blocks = np.concatenate(blocks) if blocks else np.zeros((0, 4), np.int64)
        self.id_column = id_column
        self.id_field = file.header.index(id_column)

    def text(self, lines: np.ndarray) -> dict[int, str]:
        found: dict[int, str] = {}
        which = np.searchsorted(self.blocks[:, 1], lines, side="right") - 1
        for b in np.unique(which):
            offset, first, size, crc = map(int, self.blocks[b])
            wanted = lines[which == b]
            got = read_lines(self.file.path, offset, size, crc, list(wanted - first))
            found |= {int(first + i): text for i, text in got.items()}
        return found

    def fields(self, lines: np.ndarray) -> dict[int, list[str]]:
        return {line: next(csv.reader([text])) for line, text in self.text(lines).items()}

    def ids(self, lines: np.ndarray) -> dict[int, str]:
        return {line: row[self.id_field].strip() for line, row in self.fields(lines).items()}
