"""The local stack's watcher, next to the worker: it emits the landed event
(tasks/landing/events.py) for every file renamed or written into the landing folder once the file
has stopped changing, so a producer that only copies a file in needs no announcement; and every
RECOVER_SECONDS it marks Crashed the runs whose process is gone (scripts/local_prefect.recover),
which the heartbeat automation cannot see (a run still PENDING sends no heartbeats).

    python -m scripts.landing_watcher --landing data/landing --api-url URL

Started and stopped by `make serve` / `make stop`; its log is .run/watcher.log.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

from watchfiles import Change, watch

from scripts.server_setup import recover
from tasks.landing.check import is_candidate
from tasks.landing.events import emit_landed

# A file is announced once it has not changed for this long (a copy still in progress would
# be checked half-written; the landing check's own settle time covers slower writers).
QUIET_SECONDS = 1.0
RECOVER_SECONDS = 30.0


def ready(pending: dict[Path, float], now: float) -> list[Path]:
    """Pending files (path -> last change seen) quiet for QUIET_SECONDS and still there."""
    done = []
    for path, changed in list(pending.items()):
        if not path.exists():
            del pending[path]
        elif now - max(changed, path.stat().st_mtime) >= QUIET_SECONDS:
            done.append(path)
            del pending[path]
    return sorted(done)


def announce_landed_files(landing: Path, api_url: str, stop: threading.Event) -> None:
    """Announce complete files arriving in `landing` until `stop` is set; recover orphaned
    runs every RECOVER_SECONDS."""
    pending: dict[Path, float] = {}
    recovered = time.monotonic()
    for changes in watch(
        landing, stop_event=stop, rust_timeout=250, yield_on_timeout=True, debounce=200
    ):
        now = time.time()
        for change, name in changes:
            path = Path(name)
            if change != Change.deleted and path.parent == landing and is_candidate(path):
                pending[path] = now
        announce = ready(pending, now)
        if announce:
            emit_landed(announce)
            print(f"announced {', '.join(p.name for p in announce)}", flush=True)
        if time.monotonic() - recovered >= RECOVER_SECONDS:
            recovered = time.monotonic()
            crashed = recover(api_url)
            if crashed:
                print(f"marked Crashed (process gone): {', '.join(crashed)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.landing_watcher")
    parser.add_argument("--landing", type=Path, required=True)
    parser.add_argument("--api-url", required=True)
    args = parser.parse_args(argv)
    landing = args.landing.resolve()
    print(f"watching {landing}", flush=True)
    announce_landed_files(landing, args.api_url, threading.Event())
    return 0


if __name__ == "__main__":
    sys.exit(main())
