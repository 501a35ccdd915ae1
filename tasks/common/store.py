"""One filesystem layer for every location the pipeline reads or writes: a local path or an
`s3://bucket/prefix` URI, both through obstore (Python bindings of the Rust `object_store` crate,
the same one delta-rs commits the output tables with). So one set of settings reaches both: the
standard AWS chain (environment, profile, instance or pod role) and `AWS_ENDPOINT_URL` plus
`AWS_ALLOW_HTTP=true` for an S3-compatible store (MinIO, Ceph, R2, a test server).

What it gives the stages: `size`, `read_range` and `open_input` (byte ranges: CSV blocks are read
range by range), `read`/`write` of whole objects, `create` (a conditional write: If-None-Match,
so exactly one of several writers wins, on a bucket as on a local disk), `open_output` (a
streamed, multipart upload for Parquet parts), `list_files` (key, size, ETag) and `delete`.
Throttling, 5xx answers and dropped connections are retried with exponential backoff for up to
SALES_MODEL_STORE_RETRY_SECONDS (20 s); then one PipelineError names the URI. Errors never carry
credentials.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import LocalStore, S3Store

from tasks.common.errors import PipelineError

SCHEME = "s3://"
RETRY_SECONDS_ENV = "SALES_MODEL_STORE_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 20.0
# What a streamed write holds before it writes a part out. A bucket's parts must be 5 MiB or
# more (obstore's default, 10 MB, stays); a local file is written a MiB at a time, since every
# open writer's buffer is resident (a 10M-row pass 1 keeps about 15 key files open).
LOCAL_WRITE_BUFFER = 1 << 20

Location = str | Path


def is_remote(location: Location) -> bool:
    """Whether `location` is an object-store URI (s3://...) rather than a local path."""
    return str(location).startswith(SCHEME)


def join(location: Location, *parts: str) -> str:
    """`location` with `parts` appended, as a string: a URI stays a URI, a path a path."""
    if is_remote(location):
        return "/".join([str(location).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(location, *parts))


def name_of(location: Location) -> str:
    """The last part of a path or URI (a file's name)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def parent_of(location: Location) -> str:
    """The folder (prefix) `location` is in."""
    if is_remote(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).parent)


def bucket_of(location: Location) -> str:
    """`s3://bucket` of a URI."""
    return SCHEME + str(location)[len(SCHEME) :].split("/", 1)[0]


def storage_options(location: Location) -> dict[str, str] | None:
    """delta-rs' storage_options for a table under `location`: on a bucket, commits by
    conditional write (If-None-Match, "etag"), the rest from the same AWS environment."""
    if not is_remote(location):
        return None
    # delta-rs' own retries (object_store's defaults: 10 retries within 180 s, backoff up to
    # 15 s) bounded like the store layer's, so a bucket that keeps answering 503 or does not
    # answer is one error line within SALES_MODEL_STORE_RETRY_SECONDS, not minutes later.
    options = {
        "conditional_put": "etag",
        "max_retries": "10",
        "retry_timeout": f"{max(1, round(retry_seconds() * 1000))}ms",
        "backoff_config.init_backoff": "100ms",
        "backoff_config.max_backoff": "5s",
    }
    for key in ("AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "AWS_REGION"):
        if os.environ.get(key):
            options[key] = os.environ[key]
    return options


@dataclass(frozen=True)
class Entry:
    """One object (file) found by list_files."""

    location: str
    size: int
    etag: str
    modified: datetime


def size(location: Location) -> int:
    """The object's size in bytes."""
    store, key = _split(location)
    with _errors(location):
        return int(obstore.head(store, key)["size"])


def exists(location: Location) -> bool:
    """Whether an object (file) is at `location`."""
    try:
        size(location)
    except FileNotFoundError:
        return False
    return True


def read_range(location: Location, start: int, end: int) -> memoryview:
    """Bytes [start, end) of the object (fewer if it is shorter now, none if it ends before
    `start`: a reader of a file cut short since it was planned sees its end, as with a file)."""
    if end <= start:
        return memoryview(b"")
    store, key = _split(location)
    with _errors(location):
        try:
            return memoryview(obstore.get_range(store, key, start=start, end=end))
        except BaseError as exc:
            # the disk says InvalidRange/StartTooLarge, S3 416 InvalidRange
            if "InvalidRange" not in str(exc):
                raise
    return memoryview(b"")


def read(location: Location) -> bytes:
    """The whole object."""
    store, key = _split(location)
    with _errors(location):
        return bytes(obstore.get(store, key).bytes())


def write(location: Location, data: bytes) -> None:
    """Put the object whole: readers see the old bytes or the new ones, never a part."""
    store, key = _split(location)
    with _errors(location):
        obstore.put(store, key, data)


def create(location: Location, data: bytes) -> bool:
    """Put the object only if nothing is at `location` yet (If-None-Match: *). True if this
    call created it, False if an object was there: of several writers exactly one wins."""
    store, key = _split(location)
    try:
        with _errors(location):
            obstore.put(store, key, data, mode="create")
    except FileExistsError:
        return False
    return True


def open_output(location: Location) -> Any:
    """A binary file to write the object through (a multipart upload on a bucket); the object
    appears when the file is closed."""
    store, key = _split(location)
    buffer = {} if is_remote(location) else {"buffer_size": LOCAL_WRITE_BUFFER}
    with _errors(location):
        return OutputFile(location, obstore.open_writer(store, key, **buffer))


def open_input(location: Location) -> InputFile:
    """A binary file reading the object by byte ranges (read, readinto, readline, seek)."""
    return InputFile(location)


def list_files(location: Location) -> list[Entry]:
    """Every object under the folder or prefix `location` (recursively), by key."""
    store, key = _split(location)
    prefix = key.rstrip("/") + "/" if key else None
    found = []
    with _errors(location):
        for batch in obstore.list(store, prefix=prefix):
            found.extend(batch)
    base = str(location).rstrip("/")
    return sorted(
        (
            Entry(
                base + "/" + meta["path"][len(prefix or "") :],
                int(meta["size"]),
                meta.get("e_tag") or "",
                meta["last_modified"],
            )
            for meta in found
        ),
        key=lambda entry: entry.location,
    )


def delete(location: Location) -> None:
    """Remove the object if it is there."""
    store, key = _split(location)
    try:
        with _errors(location):
            obstore.delete(store, key)
    except FileNotFoundError:
        pass


def check_reachable(location: Location) -> None:
    """One list request under `location`: a missing bucket, refused credentials or an endpoint
    that does not answer is a PipelineError naming the URI before any work starts."""
    if is_remote(location):
        store, key = _split(location)
        with _errors(location):
            next(
                iter(
                    obstore.list(store, prefix=key.rstrip("/") + "/" if key else None, chunk_size=1)
                ),
                None,
            )


class OutputFile:
    """A binary file writing an object (what pyarrow's writers take: `closed` a property)."""

    def __init__(self, location: Location, writer: Any) -> None:
        self.location, self._writer = location, writer

    @property
    def closed(self) -> bool:
        return self._writer.closed()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        # pyarrow's IPC writer hands buffers of signed bytes, which the writer refuses
        view = memoryview(data).cast("B")
        with _errors(self.location):
            return self._writer.write(view)

    def flush(self) -> None:
        with _errors(self.location):
            self._writer.flush()

    def close(self) -> None:
        if not self.closed:
            with _errors(self.location):
                self._writer.close()

    def abort(self) -> None:
        """Give the object up: nothing appears at the location (a bucket's multipart upload is
        aborted, a local temporary file removed)."""
        if not self.closed:
            with contextlib.suppress(BaseError, OSError, ValueError):
                self._writer.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, kind: type | None, *exc: object) -> None:
        """Complete the object, or, when the block raised, give it up: a half-written object
        must never appear under its name."""
        if kind is None:
            self.close()
        else:
            self.abort()


class InputFile:
    """A read-only binary file over an object, read by ranges as asked (no read-ahead: the
    pipeline asks for blocks of megabytes)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self.size = size(location)
        self._pos = 0
        self.closed = False  # (pyarrow's readers ask, as of any Python file)

    def __enter__(self) -> InputFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self._pos + n)
        data = bytes(read_range(self.location, self._pos, end))
        self._pos += len(data)
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:
        view = memoryview(buffer).cast("B")
        data = read_range(self.location, self._pos, min(self.size, self._pos + len(view)))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def readline(self, limit: int = 1 << 20) -> bytes:
        """One line, its end included; lines longer than 1 MiB are read in steps."""
        parts, step = [], 64 << 10
        while self._pos < self.size:
            chunk = bytes(read_range(self.location, self._pos, min(self.size, self._pos + step)))
            cut = chunk.find(b"\n")
            if cut >= 0:
                parts.append(chunk[: cut + 1])
                self._pos += cut + 1
                break
            parts.append(chunk)
            self._pos += len(chunk)
            step = min(step * 2, limit)
        return b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def retry_seconds() -> float:
    value = os.environ.get(RETRY_SECONDS_ENV, "")
    try:
        return float(value) if value else DEFAULT_RETRY_SECONDS
    except ValueError:
        raise PipelineError(f"{RETRY_SECONDS_ENV}={value!r} is not a number of seconds") from None


def forget_clients() -> None:
    """Drop the cached clients (after the AWS environment changed: tests, a new profile)."""
    _bucket_store.cache_clear()


def _split(location: Location) -> tuple[Any, str]:
    """(store, key) of a location: a bucket's store and the key in it; the local disk's store
    and the absolute path."""
    text = str(location)
    if is_remote(text):
        bucket, _, key = text[len(SCHEME) :].partition("/")
        if not bucket:
            raise PipelineError(f"{text}: no bucket in the URI; expected s3://bucket/prefix")
        return _bucket_store(bucket, retry_seconds()), key.strip("/")
    return _local_store(), str(Path(text).resolve()).lstrip("/")


@functools.cache
def _local_store() -> LocalStore:
    return LocalStore()


@functools.cache
def _bucket_store(bucket: str, seconds: float) -> S3Store:
    """The bucket's store, configured from the AWS environment (S3Store reads the AWS_*
    variables and the credential chain itself)."""
    return S3Store(
        bucket,
        config={"conditional_put": "etag"},
        retry_config={
            "max_retries": 10,
            "retry_timeout": timedelta(seconds=seconds),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=5),
            },
        },
        client_options={
            "connect_timeout": "5s",
            "timeout": "120s",
            "allow_http": os.environ.get("AWS_ALLOW_HTTP", "").lower() == "true",
        },
    )


@contextlib.contextmanager
def _errors(location: Location) -> Iterator[None]:
    """Turn the store's errors into the pipeline's: FileNotFoundError / FileExistsError stay
    what they are (callers decide), anything else becomes one PipelineError naming the URI."""
    try:
        yield
    except (NotFoundError, FileNotFoundError) as exc:
        if "NoSuchBucket" in str(exc):
            raise PipelineError(f"{location}: no such bucket ({bucket_of(location)})") from None
        raise FileNotFoundError(f"{location}: not found") from None
    except (AlreadyExistsError, FileExistsError):
        raise FileExistsError(f"{location}: already exists") from None
    except (BaseError, OSError) as exc:
        number = _local_errno(location, exc)
        if number:  # a full disk, a permission: the callers' OSError handling applies
            raise OSError(number, os.strerror(number), str(location)) from None
        raise PipelineError(f"{location}: {describe(exc)}") from None


def _local_errno(location: Location, exc: BaseException) -> int | None:
    """The errno of a local file's failure (obstore says "(os error 28)")."""
    if is_remote(location):
        return None
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    found = _OS_ERROR.search(str(exc))
    return int(found.group(1)) if found else None


def describe(exc: BaseException) -> str:
    """One line saying why a request to the store failed (from obstore or delta-rs), in the
    words of the store layer's errors: unreachable, access denied, a 5xx answer, ..."""
    # delta-rs tells object_store's errors over several lines, with terminal colours; obstore
    # adds a "Debug source:" dump.
    text = str(exc).split("Debug source:", 1)[0]
    text = " ".join(_ANSI.sub("", text).replace("\u21b3", " ").split())
    if isinstance(exc, PermissionDeniedError | UnauthenticatedError) or any(
        code in text
        for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403 Forbidden")
    ):
        return (
            "access denied: check the AWS credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...) "
            "and the bucket's policy"
        )
    if "NoSuchBucket" in text:
        return "no such bucket"
    if status := _SERVER_ERROR.search(text):
        return (
            f"the object store answered {status.group(1).strip()} "
            f"(retried for up to {retry_seconds():g} s)"
        )
    if any(
        phrase in text
        for phrase in (
            "Connection refused",
            "error sending request",
            "error trying to connect",
            "tcp connect error",
            "dns error",
            "operation timed out",
        )
    ):
        # an endpoint may carry user:password@: never shown
        endpoint = _USERINFO.sub("://", os.environ.get("AWS_ENDPOINT_URL", "the AWS endpoint"))
        return (
            f"cannot reach the object store at {endpoint} (retried for up to {retry_seconds():g} s)"
        )
    return text[:300] if text else type(exc).__name__


# "(os error 28)": the errno of a local file's failure, as obstore words it.
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# The user:password@ of a URL.
_USERINFO = re.compile(r"://[^/@]*@")
# Terminal colours, in delta-rs' errors.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A 5xx answer as object_store reports it, e.g. "status code: 503 Service Unavailable: <?xml".
_SERVER_ERROR = re.compile(r"status code:? (5\d\d[A-Za-z ]*)")
