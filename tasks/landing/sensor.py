"""The bucket sensor's logic: which objects under an `s3://bucket/prefix` landing location are new,
given the prefix's listing and a durable cursor of what was already announced.

The cursor remembers every object it has announced as (location, ETag, size), not the last key in
lexical order: a producer whose keys arrive out of order (`b.csv`, then `a.csv`) would have `a.csv`
missed by a key-order cursor. An object is new when its (location, ETag, size) is not in the
cursor, so an overwritten key with new content is new again. The cursor is one JSON object on the
store (`<ledger>/sensor/cursor.json` by default), replaced whole after each poll that changed it:
one GET when a sensor starts, one PUT per poll that found something, and a sensor restarted on
another machine announces what arrived while none ran, and nothing it had announced. It holds
what the last listing held, so it stays as small as the landing prefix.

Objects appear on a bucket only when complete (a PUT, or a multipart upload once finished), so
unlike the local watcher the sensor has no quiet time to wait out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import PurePosixPath

from tasks.common import store
from tasks.landing.check import IN_PROGRESS_SUFFIXES

# Seconds between two listings of the landing prefix. Landing -> training start is this plus
# the trigger's window (5 s), the worker's query interval (2 s) and the check: within 30 s.
# One LIST request each time: 17,280 a day.
DEFAULT_INTERVAL_SECONDS = 5.0
CURSOR_VERSION = 1


class CursorError(Exception):
    """The cursor does not read as one (written by hand, or by a newer version)."""


# What the cursor holds: (location, ETag, size) of each object announced.
Seen = frozenset[tuple[str, str, int]]


def cursor_location(ledger: store.Location) -> str:
    """Where the sensor keeps its cursor: beside the ledger, which outlives any one machine."""
    return store.join(ledger, "sensor", "cursor.json")


def is_landed_name(name: str) -> bool:
    """A visible *.csv name, not named as still being written: what the local watcher takes
    (tasks/landing/check.py is_candidate), by name alone. `.sha256` markers are left out."""
    if name.startswith(".") or name.endswith(IN_PROGRESS_SUFFIXES):
        return False
    return PurePosixPath(name).suffix == ".csv"


def is_landed_object(landing: str, location: str) -> bool:
    """Whether the object at `location` is a landed file of `landing`: directly under it (as
    in a landing folder, whose subfolders are not looked into) and named as one."""
    base = landing.rstrip("/") + "/"
    rest = location[len(base) :]
    return location.startswith(base) and "/" not in rest and is_landed_name(rest)


def new_objects(landing: str, listing: list[store.Entry], seen: Seen) -> tuple[list[str], Seen]:
    """(locations of the landed objects in `listing` not in `seen`, by location; what to
    remember now)."""
    current = {
        (entry.location, entry.etag, entry.size)
        for entry in listing
        if is_landed_object(landing, entry.location)
    }
    fresh = sorted(location for location, etag, size in current - seen)
    return fresh, frozenset(current)


def load_cursor(location: str) -> Seen:
    """The objects announced so far (none if there is no cursor yet). A cursor that does not
    read as one is CursorError: the caller decides to start afresh."""
    try:
        data = json.loads(store.read(location))
    except FileNotFoundError:
        return frozenset()
    except json.JSONDecodeError:
        raise CursorError(f"{location}: not a sensor cursor (not JSON)") from None
    try:
        if data["version"] != CURSOR_VERSION:
            raise CursorError(f"{location}: cursor version {data['version']!r} is not known")
        return frozenset((e["location"], e["etag"], int(e["size"])) for e in data["seen"])
    except (KeyError, TypeError):
        raise CursorError(f"{location}: not a sensor cursor") from None


def save_cursor(location: str, landing: str, seen: Seen) -> None:
    """Replace the cursor whole (readers see the old one or the new one)."""
    data = {
        "version": CURSOR_VERSION,
        "landing": landing,
        "seen": [{"location": loc, "etag": etag, "size": size} for loc, etag, size in sorted(seen)],
    }
    store.write(location, (json.dumps(data, indent=1) + "\n").encode())


def poll(
    landing: str,
    cursor: str,
    emit: Callable[[list[str]], None],
    seen: Seen | None = None,
) -> tuple[list[str], Seen]:
    """One look at `landing`: `emit` the locations of the objects not seen before, then save
    the cursor. `seen` is what this process remembers from its last poll (None: read the
    cursor). Returns (the locations emitted, what is seen now). The cursor is saved only once
    `emit` returned: a failed announcement is made again at the next poll (an event only says
    when to look, so one too many is harmless; one too few would leave a file to the slow
    poll)."""
    if seen is None:
        seen = load_cursor(cursor)
    fresh, now_seen = new_objects(landing, store.list_files(landing), seen)
    if fresh:
        emit(fresh)
    if now_seen != seen:
        save_cursor(cursor, landing, now_seen)
    return fresh, now_seen
