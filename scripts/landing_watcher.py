"""The local stack's watcher, next to the worker: it emits the landed event
(tasks/landing/events.py) for every file renamed or written into the landing folder once the file
is complete, so a producer that only copies a file in needs no announcement. Complete here means
unchanged for QUIET_SECONDS and open for writing in no process: the watcher then announces its
sha256 beside it (`<name>.sha256`, as `make land` does), so the landing check takes it at once
instead of waiting out its settle time (a file changed after that no longer matches its
announcement and waits for the settle time again). A writer the watcher cannot see (another
user's process) that pauses longer than QUIET_SECONDS would be taken half-written: such producers
should write under a dot-name or `*.part` and rename, or land with `make land`. And every
RECOVER_SECONDS it marks Crashed the runs whose process is gone (scripts/local_prefect.recover),
which the heartbeat automation cannot see (a run still PENDING sends no heartbeats), and every
NAME_SECONDS it names the runs the deployments' schedules and triggers created, which Prefect
names at random (scripts/server_setup.py: name_scheduled_runs).

When the landing location is an `s3://bucket/prefix` URI it is a sensor instead: it lists the
prefix every `--interval` seconds and emits the event for each object it has not announced
before, remembered in a cursor on the store beside the ledger (tasks/landing/sensor.py).

    python -m scripts.landing_watcher --landing data/landing --api-url URL
    python -m scripts.landing_watcher --landing s3://bucket/landing --ledger data/ledger \
        --api-url URL [--interval 5]

Started and stopped by `make serve` / `make stop`; its log is .run/watcher.log.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path

from watchfiles import Change, watch

from schemas.params import DEFAULT_LEDGER
from scripts.server_setup import name_scheduled_runs, recover
from tasks.common import store
from tasks.common.errors import PipelineError
from tasks.landing.check import announce, announced_sha256, is_candidate
from tasks.landing.events import emit_landed
from tasks.landing.ledger import sha256_of
from tasks.landing.sensor import DEFAULT_INTERVAL_SECONDS, CursorError, Seen, cursor_location, poll

# A file is announced once it has not changed for this long and no process has it open for
# writing (a copy still in progress would be checked half-written).
QUIET_SECONDS = 0.5
RECOVER_SECONDS = 30.0
# How soon a run a schedule or trigger created gets its name (Prefect 3.9 gives it a random
# one); a bucket's sensor names them at each listing, at most this often.
NAME_SECONDS = 3.0
# The watcher's first line once it sees every change (a file copied in before that is missed).
READY = "watching"


def ready(pending: dict[Path, float], now: float) -> list[Path]:
    """Pending files (path -> last change seen) quiet for QUIET_SECONDS and still there."""
    done = []
    writing = None
    for path, changed in list(pending.items()):
        if not path.exists():
            del pending[path]
        elif now - max(changed, path.stat().st_mtime) >= QUIET_SECONDS:
            writing = open_for_writing() if writing is None else writing
            if path.resolve() not in writing:
                done.append(path)
                del pending[path]
    return sorted(done)


def open_for_writing() -> set[Path]:
    """The files some process we may inspect (/proc/<pid>/fd: our own user's, or all as root)
    has open for writing right now."""
    found = set()
    for fdinfo in Path("/proc").glob("[0-9]*/fdinfo/*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            flags = int(fdinfo.read_text().split("flags:", 1)[1].split()[0], 8)
            if (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR):
                found.add((fdinfo.parent.parent / "fd" / fdinfo.name).readlink())
    return found


def announce_complete(paths: list[Path]) -> None:
    """Announce the sha256 of each file beside it, unless its producer announced one (make
    land: its own word on the content stands)."""
    for path in paths:
        with contextlib.suppress(OSError):  # gone meanwhile: the check finds nothing
            if announced_sha256(str(path)) is None:
                announce(str(path), sha256_of(str(path)))


def announce_landed_files(landing: Path, api_url: str, stop: threading.Event) -> None:
    """Announce complete files arriving in `landing` until `stop` is set; recover orphaned
    runs every RECOVER_SECONDS, name scheduled runs every NAME_SECONDS."""
    pending: dict[Path, float] = {}
    recovered, named = time.monotonic(), 0.0
    watching = False
    for changes in watch(
        landing, stop_event=stop, rust_timeout=250, yield_on_timeout=True, debounce=200
    ):
        if not watching:  # the first yield: inotify is set up (`make serve` waits for this line)
            print(f"{READY} {landing}", flush=True)
            watching = True
        now = time.time()
        for change, name in changes:
            path = Path(name)
            if change != Change.deleted and path.parent == landing and is_candidate(path):
                pending[path] = now
        complete = ready(pending, now)
        if complete:
            announce_complete(complete)
            emit_landed(complete)
            print(f"announced {', '.join(p.name for p in complete)}", flush=True)
        recovered = recover_if_due(api_url, recovered)
        named = name_if_due(api_url, named)


def announce_landed_objects(
    landing: str, cursor: str, api_url: str, stop: threading.Event, interval: float
) -> None:
    """List `landing` every `interval` seconds and announce the objects not announced before,
    until `stop` is set; recover orphaned runs every RECOVER_SECONDS. A store or server that
    does not answer is reported and tried again at the next poll (the cursor is only saved once
    the events are sent, so nothing is lost)."""
    seen: Seen | None = None
    recovered, named = time.monotonic(), 0.0
    while not stop.is_set():
        try:
            fresh, seen = poll(landing, cursor, emit_landed, seen)
        except CursorError as exc:  # an unreadable cursor: announce everything once more
            print(f"{exc}: starting afresh", flush=True)
            seen = frozenset()
            continue
        except Exception as exc:  # one line, then the next poll tries again
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"error: {first}; trying again in {interval:g} s", flush=True)
        else:
            if fresh:
                print(f"announced {', '.join(map(store.name_of, fresh))}", flush=True)
        recovered = recover_if_due(api_url, recovered)
        named = name_if_due(api_url, named)
        stop.wait(interval)


def recover_if_due(api_url: str, recovered: float) -> float:
    """Mark Crashed the runs whose process is gone, if RECOVER_SECONDS have passed since
    `recovered` (a monotonic time); returns when it last did."""
    if time.monotonic() - recovered < RECOVER_SECONDS:
        return recovered
    crashed = recover(api_url)
    if crashed:
        print(f"marked Crashed (process gone): {', '.join(crashed)}", flush=True)
    return time.monotonic()


def name_if_due(api_url: str, named: float) -> float:
    """Name the runs the schedules and triggers created (scripts/server_setup.py:
    name_scheduled_runs), if NAME_SECONDS have passed since `named`; returns when it last did.
    A server that does not answer is tried again next time: the watcher goes on announcing."""
    if time.monotonic() - named < NAME_SECONDS:
        return named
    try:
        name_scheduled_runs(api_url)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"error: naming scheduled runs: {first}", flush=True)
    return time.monotonic()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.landing_watcher")
    parser.add_argument("--landing", required=True, help="a folder, or s3://bucket/prefix")
    parser.add_argument("--api-url", required=True)
    parser.add_argument(
        "--ledger", default=DEFAULT_LEDGER, help="a bucket's sensor keeps its cursor beside it"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL_SECONDS,
        help=f"seconds between listings of a bucket (default {DEFAULT_INTERVAL_SECONDS:g})",
    )
    args = parser.parse_args(argv)
    if not store.is_remote(args.landing):
        landing = Path(args.landing).resolve()
        announce_landed_files(landing, args.api_url, threading.Event())
        return 0
    cursor = cursor_location(args.ledger)
    try:
        store.check_reachable(args.landing)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # The cursor takes every object not announced before, so the sensor is ready at once.
    print(
        f"{READY} {args.landing}: listing it every {args.interval:g} s (cursor {cursor})",
        flush=True,
    )
    announce_landed_objects(args.landing, cursor, args.api_url, threading.Event(), args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
