"""CSV files as the pipeline takes them: the file-level checks (what the first bytes and the
header say) and byte ranges cut at line boundaries, the unit of work of pass 1 (one per file,
or several for a cluster). Blocks of a range are read and parsed by tasks/ingest/blocks.py.
A file is a location: a local path or an s3:// URI, read alike through tasks/common/store.py
(by byte ranges)."""

from __future__ import annotations

import csv
import hashlib
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tasks.common import store
from tasks.common.errors import InputFileError
from tasks.common.store import Location

UTF8_BOM = b"\xef\xbb\xbf"
_MAGIC = {
    b"\x1f\x8b": "gzip-compressed; decompress it first (gunzip)",
    b"PK\x03\x04": "a zip archive; extract the CSV first",
    b"BZh": "bzip2-compressed; decompress it first",
    b"\xfd7zXZ": "xz-compressed; decompress it first",
    b"\x28\xb5\x2f\xfd": "zstd-compressed; decompress it first",
}
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class CsvFile:
    """A CSV file whose header passed: its location (a path or a URI), size, column names and
    where line 2 starts."""

    path: Location
    size: int
    header: tuple[str, ...]
    data_start: int

    @property
    def name(self) -> str:
        """The file's name (the last part of its path or URI)."""
        return store.name_of(self.path)


def sha256_file(path: Location) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    for chunk in _chunks(path, 0, None):
        digest.update(chunk)
    return digest.hexdigest()


# Bytes per read of the hash pass: one ranged request each on a bucket, so not too few.
_CHUNK = 8 << 20


def _chunks(path: Location, start: int, end: int | None) -> Iterator[memoryview]:
    """Bytes [start, end) of a file in reads of _CHUNK; `end` None: to wherever the file
    ends by then (so bytes added while it is read count)."""
    while end is None or start < end:
        stop = start + _CHUNK if end is None else min(end, start + _CHUNK)
        chunk = store.read_range(path, start, stop)
        if not chunk:
            return
        yield chunk
        start += len(chunk)


def changed_message(path: Location, where: str) -> str:
    """The error of a file that changed while pass 1 read it."""
    return (
        f"{path}: changed while it was read ({where}); nothing of it was used: run again once "
        "the file is complete"
    )


def open_csv(path: Location, required: list[str], allowed: set[str]) -> CsvFile:
    """Check a file's first bytes and its header (see check_header)."""
    try:
        fh = store.open_input(path)
    except FileNotFoundError:
        raise InputFileError(f"{path}: file not found") from None
    head = fh.read(64)
    if not head:
        raise InputFileError(f"{path}: empty file (0 bytes)")
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise InputFileError(f"{path}: file is {what}")
    if head.startswith(_UTF16_BOMS) or (len(head) >= 4 and head[1:4:2] == b"\x00\x00"):
        raise InputFileError(f"{path}: file is UTF-16 encoded; save it as UTF-8")
    fh.seek(0)
    first = fh.readline()
    try:
        text = first.removeprefix(UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: line 1 (header) is not valid UTF-8") from None
    if not text.strip():
        raise InputFileError(f"{path}: line 1 is blank; expected a header row")
    header = header_fields(text)
    check_header(path, header, required, allowed)
    return CsvFile(path, fh.size, header, len(first))


def header_fields(text: str) -> tuple[str, ...]:
    """The column names of a header line (its BOM and line end removed)."""
    return tuple(next(csv.reader([text.rstrip("\r\n")])))


def check_header(
    path: Location, header: tuple[str, ...], required: list[str], allowed: set[str]
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


def _names(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


@dataclass(frozen=True)
class ByteRange:
    """Bytes [start, end) of a file's data, starting at a line start; `index` orders them."""

    start: int
    end: int
    index: int


def split_ranges(file: CsvFile, range_bytes: int) -> list[ByteRange]:
    """The file's data (after the header) as byte ranges of about `range_bytes`, each cut
    after a newline; one range when `range_bytes` is 0 or the data is smaller."""
    cuts = [file.data_start]
    if range_bytes > 0:
        with store.open_input(file.path) as fh:
            while cuts[-1] + range_bytes < file.size:
                fh.seek(cuts[-1] + range_bytes)
                rest = fh.readline()
                if not rest.endswith(b"\n") or fh.tell() >= file.size:
                    break
                cuts.append(fh.tell())
    cuts.append(file.size)
    return [ByteRange(a, b, i) for i, (a, b) in enumerate(itertools.pairwise(cuts))]


@dataclass(frozen=True)
class FileHash:
    """A file's sha256 and, from the same read, the sha256 of each byte range of its plan: the
    first with the header, the last up to the end of the file (so bytes added later count).
    A range that no longer ends with a line end where the plan cut it has "" (the file changed
    after it was cut): no read of the range can match it."""

    sha256: str
    ranges: tuple[str, ...]


def hash_file(path: Location, spans: list[ByteRange]) -> FileHash:
    """The file's FileHash, in one read; the range sha256s are taken on a second thread."""
    if len(spans) == 1:  # the whole file is the one range
        sha256 = sha256_file(path)
        return FileHash(sha256, (sha256,))
    whole, digests, at = hashlib.sha256(), [], 0
    with ThreadPoolExecutor(1) as pool:
        for span in spans:
            last = span.index == len(spans) - 1
            part, tail = hashlib.sha256(), b""
            for chunk in _chunks(path, at, None if last else span.end):
                done = pool.submit(part.update, chunk)
                whole.update(chunk)
                done.result()
                tail, at = bytes(chunk[-1:]), at + len(chunk)
            fits = last or (at == span.end and tail == b"\n")
            digests.append(part.hexdigest() if fits else "")
    return FileHash(whole.hexdigest(), tuple(digests))
