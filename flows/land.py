"""Land files: move each to the landing location (a folder or an s3:// prefix) in one step
(never seen half-written), with its sha256 beside it (`<name>.sha256`: the landing check takes
a file whose content matches at once, without waiting out the settle time), then announce it
with the landed event (tasks/landing/events.py), so the landing check starts at once.

    .venv/bin/python -m flows.land FILE [FILE ...] [--landing DIR|URI]     (make land FILE=...)

Without a Prefect server to tell (no PREFECT_API_URL, `make serve` not running) the files are
still landed: the fallback poll picks them up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schemas.params import DEFAULT_LANDING
from tasks.common import store
from tasks.common.errors import PipelineError, exit_code
from tasks.common.paths import data_roots, existing_location
from tasks.landing.announce import announce, is_candidate, sha256_of

_CHUNK = 8 << 20


def land(source: Path, landing: store.Location) -> str:
    """Move `source` to `landing` under its own name: its sha256 announced, then its bytes
    put in one object (which appears whole when complete, on a disk as on a bucket), then
    the source deleted. Returns the landed location."""
    if not source.is_file():
        raise PipelineError(f"{source}: file not found")
    if not is_candidate(source):
        raise PipelineError(f"{source}: only visible *.csv files can be landed")
    target = store.join(landing, source.name)
    # Announced first: the file never shows without its announcement (an earlier one for
    # another content only means the settle time applies).
    announce(target, sha256_of(source))
    with source.open("rb") as data, store.open_output(target) as sink:
        while chunk := data.read(_CHUNK):
            sink.write(chunk)
    source.unlink()
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.land", description=__doc__.split("\n")[0]
    )
    parser.add_argument("files", nargs="+", type=Path, help="CSV files to land (moved, not copied)")
    parser.add_argument(
        "--landing",
        default=DEFAULT_LANDING,
        help=f"a folder or s3:// prefix (default {DEFAULT_LANDING})",
    )
    args = parser.parse_args(argv)
    try:
        landing = existing_location(args.landing, data_roots(), "landing")
        landed = [land(source, landing) for source in args.files]
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    for path in landed:
        print(f"landed {path}")
    return tell_the_server(landed)


def tell_the_server(landed: list[str]) -> int:
    """Emit the landed events to the configured server, or the running stack's (never a
    local server started now: it would have no deployment to trigger)."""
    # Prefect is imported only now, once the files are in: the stack's watcher may already
    # have seen them, and the landing check started.
    from flows.cli import prefect_server, running_server
    from tasks.landing.events import emit_landed

    with prefect_server(running_server()) as api:
        if api is None:
            print("no Prefect server to announce them to: the next landing poll picks them up")
            return 0
        try:
            emit_landed(landed)
        except Exception as exc:  # the files are landed whatever happens to the announcement
            print(f"could not announce them to {api} ({exc}): the next poll picks them up")
            return 0
    print(f"announced to {api}: the landing check starts within seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
