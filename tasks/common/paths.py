"""Path confinement: every path that arrives as a parameter is resolved (symlinks followed) and
must lie under a configured root, so `--param data=/etc/passwd` or a symlink out of data/ is
refused before anything is read.

Roots come from SALES_MODEL_DATA_ROOTS and SALES_MODEL_OUTPUT_ROOTS (os.pathsep-separated);
by default `data/` and `output/` under the working directory. A root may be an object-store
prefix (`s3://bucket/prefix`): a URI is allowed when it lies under such a root, segment by
segment (`s3://bucket/prefix-other` is not under `s3://bucket/prefix`), with no `.` or `..`.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.common import store
from tasks.common.errors import InputFileError, ParameterError, PipelineError
from tasks.common.store import SCHEME, check_reachable, is_remote

GLOB_CHARS = frozenset("*?[")

DATA_ROOTS_ENV = "SALES_MODEL_DATA_ROOTS"
OUTPUT_ROOTS_ENV = "SALES_MODEL_OUTPUT_ROOTS"
DEFAULT_DATA_ROOTS = ("data",)
DEFAULT_OUTPUT_ROOTS = ("output",)


Root = Path | str  # a resolved local folder, or an s3:// prefix without its trailing slash


def configured_roots(env: str, defaults: tuple[str, ...]) -> list[Root]:
    """The roots named by an environment variable, or the defaults: local ones resolved.
    (`s3://` holds a colon, os.pathsep on POSIX: the entries are split on ':' not followed
    by '//'.)"""
    value = os.environ.get(env, "")
    items = [item for item in re.split(rf"{re.escape(os.pathsep)}(?!//)", value) if item]
    return [uri_root(item) if is_remote(item) else Path(item).resolve() for item in items] or [
        Path(item).resolve() for item in defaults
    ]


def uri_root(uri: str) -> str:
    """A URI as a root or location: no trailing slash; `.` and `..` segments refused."""
    text = uri.rstrip("/")
    parts = text[len(SCHEME) :].split("/")
    if not parts[0] or any(part in (".", "..") for part in parts):
        raise ParameterError(f"'{uri}': expected s3://bucket/prefix (no '.' or '..' segments)")
    return text


def data_roots() -> list[Root]:
    return configured_roots(DATA_ROOTS_ENV, DEFAULT_DATA_ROOTS)


def output_roots() -> list[Root]:
    return configured_roots(OUTPUT_ROOTS_ENV, DEFAULT_OUTPUT_ROOTS)


def is_under(location: str | Path, roots: list[Root]) -> bool:
    """Whether `location` lies under one of `roots` (local paths resolved, symlinks followed;
    URIs segment by segment)."""
    if is_remote(location):
        uri = str(location).rstrip("/")
        if any(part in (".", "..") for part in uri.split("/")[2:]):
            return False
        return any(
            isinstance(root, str) and (uri == root or uri.startswith(root + "/")) for root in roots
        )
    resolved = Path(location).resolve()
    return any(isinstance(root, Path) and resolved.is_relative_to(root) for root in roots)


def confine(path: str | Path, roots: list[Root], parameter: str) -> Path | str:
    """Return `path` unchanged (a URI as a string without its trailing slash) if it lies under
    one of `roots`; else raise ParameterError naming the parameter. Nothing is opened."""
    if is_under(path, roots):
        return uri_root(str(path)) if is_remote(path) else Path(path)
    env = OUTPUT_ROOTS_ENV if parameter == "output" else DATA_ROOTS_ENV
    allowed = ", ".join(str(root) for root in roots)
    raise ParameterError(
        f"parameter {parameter}: '{path}' is outside the allowed folders ({allowed}); "
        f"set {env} to allow another"
    )


def resolve_inputs(data: str | Path | list[str], roots: list[Root]) -> list[Path | str]:
    """A file, a folder (its *.csv files), a glob, or a list of those -> the CSV files to read,
    in order, each once. Every path must lie under one of `roots` (symlinks followed). Each
    may be an s3:// URI: an object, a prefix (the *.csv objects directly under it) or a glob
    over keys (see remote_inputs); URIs come back as strings."""
    if isinstance(data, list):
        if not data:
            raise InputFileError("parameter data: no input paths given")
        files = [path for item in data for path in resolve_inputs(item, roots)]
        return list(dict.fromkeys(files))
    text = str(data)
    if is_remote(text):
        return remote_inputs(text, roots)
    if any(ch in text for ch in GLOB_CHARS):
        static = re.split(r"[*?\[]", text, maxsplit=1)[0]  # the folder part before any wildcard
        confine(static if static.endswith(os.sep) else Path(static).parent, roots, "data")
        paths = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [confine(p, roots, "data") for p in paths if p.is_file()]
        if not files:
            raise InputFileError(f"no input files match '{text}'")
        return files
    path = confine(text, roots, "data")
    if path.is_dir():
        found = sorted(p for p in path.glob("*.csv") if p.is_file() and not p.name.startswith("."))
        if not found:
            raise InputFileError(f"no input files: folder '{text}' holds no *.csv file")
        return [confine(p, roots, "data") for p in found]
    if not path.exists():
        raise InputFileError(f"{text}: file not found")
    if not path.is_file():
        raise InputFileError(f"{text}: not a regular file")
    return [path]


def remote_inputs(uri: str, roots: list[Root]) -> list[str]:
    """resolve_inputs of one s3:// URI: the object; else the prefix's *.csv objects directly
    under it (not hidden ones), by key; or the objects a glob matches (see key_matches).
    A missing bucket or an endpoint that does not answer is the store's PipelineError."""
    if any(ch in uri for ch in GLOB_CHARS):
        return _remote_glob(uri, roots)
    location = confine(uri, roots, "data")
    if not uri.endswith("/") and "/" in location[len(SCHEME) :]:
        try:
            store.size(location)
            return [location]
        except FileNotFoundError:
            pass  # not an object: a prefix, or nothing (the listing tells which)
    found = [entry.location for entry in store.list_files(location)]
    if not found:
        raise InputFileError(f"{uri}: file not found")
    names = [loc[len(location) + 1 :] for loc in found]
    csvs = [
        loc
        for loc, name in zip(found, names, strict=True)
        if "/" not in name and name.endswith(".csv") and not name.startswith(".")
    ]
    if not csvs:
        raise InputFileError(f"no input files: folder '{uri}' holds no *.csv file")
    return [confine(loc, roots, "data") for loc in csvs]


def _remote_glob(uri: str, roots: list[Root]) -> list[str]:
    """The objects under the glob's static prefix (one listing) whose keys match it."""
    static = re.split(r"[*?\[]", uri, maxsplit=1)[0]
    if "/" not in static[len(SCHEME) :]:
        raise ParameterError(f"'{uri}': no wildcards in the bucket name; expected s3://bucket/...")
    folder = static.rsplit("/", 1)[0]
    prefix = confine(folder, roots, "data")
    pattern = uri[len(folder) + 1 :].split("/")
    matched = [
        entry.location
        for entry in store.list_files(prefix)
        if not entry.location.endswith("/")
        and key_matches(pattern, entry.location[len(prefix) + 1 :].split("/"))
    ]
    # in the order of the local glob's sorted Paths: by segment ("a/b" before "a-b")
    files = [confine(loc, roots, "data") for loc in sorted(matched, key=lambda u: u.split("/"))]
    if not files:
        raise InputFileError(f"no input files match '{uri}'")
    return files


def key_matches(pattern: list[str], parts: list[str]) -> bool:
    """Whether a key's segments match a glob's, as glob.glob(recursive=True) matches paths:
    `**` any number of segments, any other segment one by fnmatch (`*` never crosses a '/');
    a hidden name (".x") only by a segment starting with '.'."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(
            key_matches(rest, parts[i:])
            for i in range(len(parts) + 1)
            if not any(part.startswith(".") for part in parts[:i])
        )
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and key_matches(rest, parts[1:])


def check_all(checks: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run every check (name -> callable) and return their results; if any raise
    PipelineError, raise one PipelineError listing every problem, so that a user with two
    wrong paths hears of both at once."""
    results, problems = {}, []
    for name, check in checks.items():
        try:
            results[name] = check()
        except PipelineError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        every = all(isinstance(p, ParameterError) for p in problems)
        raise (ParameterError if every else PipelineError)("; ".join(map(str, problems)))
    return results


def existing_folder(path: str, roots: list[Root], parameter: str) -> Path:
    """`path` confined to `roots` (see confine), which must be an existing folder."""
    folder = confine(path, roots, parameter)
    if not folder.is_dir():
        raise ParameterError(f"parameter {parameter}: folder '{path}' not found")
    return folder


def existing_location(location: str, roots: list[Root], parameter: str) -> Path | str:
    """`location` confined to `roots` (see confine): an existing folder, or an s3:// prefix
    whose bucket answers (a prefix need not exist on a bucket; check_reachable)."""
    if not is_remote(location):
        return existing_folder(location, roots, parameter)
    found = confine(location, roots, parameter)
    check_reachable(found)
    return found
