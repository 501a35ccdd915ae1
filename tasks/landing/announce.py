"""What makes a landed file a candidate, and the announcement of its complete content
(`<name>.sha256` beside it, as `sha256sum` writes it). Kept free of Prefect and the pipeline's
libraries: `make land` moves a file in with only this loaded (flows/land.py), and the landing
check (check.py) and the watcher (scripts/landing_watcher.py) read the same names.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tasks.common import store
from tasks.common.errors import PipelineError

# Names that writers use while a file is still being written.
IN_PROGRESS_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", "~")
# `<name>.sha256` next to a landed file announces its complete content.
ANNOUNCEMENT_SUFFIX = ".sha256"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 8 << 20


def is_candidate_name(name: str) -> bool:
    """A visible *.csv name, not named as still being written."""
    return not (
        name.startswith(".") or name.endswith(IN_PROGRESS_SUFFIXES) or not name.endswith(".csv")
    )


def is_candidate(path: Path) -> bool:
    """A visible *.csv file not named as still being written."""
    return is_candidate_name(path.name) and path.is_file()


def sha256_of(location: store.Location) -> str:
    """Hex sha256 of a file's or object's bytes, read in blocks."""
    digest = hashlib.sha256()
    with store.open_input(location) as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def announcement_path(location: store.Location) -> str:
    """Where the content of a landed file is announced: `<name>.sha256` beside it."""
    return f"{location}{ANNOUNCEMENT_SUFFIX}"


def announce(location: store.Location, sha256: str) -> str:
    """Announce the complete content of the file landing at `location`, as `sha256sum` does."""
    target = announcement_path(location)
    store.write(target, f"{sha256}  {store.name_of(location)}\n".encode())
    return target


def announced_sha256(location: store.Location) -> str | None:
    """The sha256 announced for `location`, if an announcement is there and reads as one."""
    try:
        words = store.read(announcement_path(location)).decode(errors="replace").split()
    except (OSError, PipelineError):
        return None
    digest = words[0].lower() if words else ""
    return digest if _SHA256.fullmatch(digest) else None
