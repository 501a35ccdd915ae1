"""Land files: move each to the landing location (a folder or an s3:// prefix) in one step
(never seen half-written), with its sha256 beside it (`<name>.sha256`: the landing check takes
a file whose content matches at once, without waiting out the settle time), then announce it
with the landed event (tasks/landing/events.py), so the landing check starts at once; then
wait for what became of each file: the check's verdict, the training run that used it and the
promotion gate's decision (tasks/landing/outcome.py).

    .venv/bin/python -m flows.land FILE [FILE ...] [--landing DIR|URI] [--no-wait]
        (make land FILE=... [NO_WAIT=1])

Without a Prefect server to tell (no PREFECT_API_URL, `make serve` not running) the files are
still landed: the fallback poll picks them up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from schemas.params import DEFAULT_LANDING, DEFAULT_LEDGER, DEFAULT_OUTPUT
from tasks.common import store
from tasks.common.errors import PipelineError, exit_code
from tasks.common.paths import data_roots, existing_location
from tasks.landing.announce import announce, announced_sha256, is_candidate, sha256_of

_CHUNK = 8 << 20
POLL_SECONDS = 1.0


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


# How long `make land` waits for the check's verdict, the training and the gate by default.
WAIT_SECONDS = 300.0


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 landed (and, waited for, accepted and trained), 1 a file refused here, by
    the landing check or its training run, 2 a parameter refused."""
    args = parse_args(argv)
    try:
        landing = existing_location(args.landing, data_roots(), "landing")
        landed = [land(source, landing) for source in args.files]
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    for path in landed:
        print(f"landed {path}")
    if not tell_the_server(landed) or args.no_wait:
        return 0
    contents = {store.name_of(path): announced_sha256(path) or "" for path in landed}
    return wait_for_outcomes(contents, args.ledger, args.output, args.wait_seconds)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.land", description=__doc__.split("\n")[0]
    )
    parser.add_argument("files", nargs="+", type=Path, help="CSV files to land (moved, not copied)")
    parser.add_argument(
        "--landing",
        default=DEFAULT_LANDING,
        help=f"a folder or s3:// prefix (default {DEFAULT_LANDING})",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="return once landed, without the outcome"
    )
    parser.add_argument(
        "--wait-seconds",
        type=float,
        default=WAIT_SECONDS,
        help=f"how long to wait for each file's outcome (default {WAIT_SECONDS:g})",
    )
    parser.add_argument("--ledger", default=DEFAULT_LEDGER, help="the check's ledger")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="the training's output root")
    return parser.parse_args(argv)


def tell_the_server(landed: list[str]) -> bool:
    """Emit the landed events to the configured server, or the running stack's (never a
    local server started now: it would have no deployment to trigger). Whether it was told."""
    # Prefect is imported only now, once the files are in: the stack's watcher may already
    # have seen them, and the landing check started.
    from flows.server import prefect_server, running_server
    from tasks.landing.events import emit_landed

    with prefect_server(running_server()) as api:
        if api is None:
            print("no Prefect server to announce them to: the next landing poll picks them up")
            return False
        try:
            emit_landed(landed)
        except Exception as exc:  # the files are landed whatever happens to the announcement
            print(f"could not announce them to {api} ({exc}): the next poll picks them up")
            return False
    print(f"announced to {api}: waiting for the landing check (--no-wait to skip)")
    return True


def wait_for_outcomes(contents: dict[str, str], ledger: str, output: str, seconds: float) -> int:
    """Print each landed file's outcome as it becomes final (see tasks/landing/outcome.py);
    1 if any was refused or its training failed."""
    from tasks.landing.outcome import outcomes

    pending, failed = dict(contents), False
    deadline = time.monotonic() + seconds
    while pending and time.monotonic() < deadline:
        for name, outcome in outcomes(pending, ledger, output).items():
            if outcome is not None and outcome.done:
                print(outcome.line, flush=True)
                failed |= outcome.failed
                del pending[name]
        if pending:
            time.sleep(POLL_SECONDS)
    for name in pending:
        print(f"{name}: no outcome after {seconds:g} s; it is landed, and the check goes on")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
