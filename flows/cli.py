"""Command-line plumbing shared by the flows: check parameters and paths before anything starts,
run the flow, report a user error as one line.

By default the terminal shows the summary, or one `error:` line; Prefect's own logs still go to
the Prefect server (the UI shows them). `--verbose`, or setting PREFECT_LOGGING_LEVEL yourself,
shows them in the terminal too.

Which server: PREFECT_API_URL (or a Prefect profile) when set; else the local stack's server
when `make serve` is running (found from its state file); else Prefect's temporary server.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect import Flow
from prefect.exceptions import ParameterTypeError
from prefect.logging.handlers import PrefectConsoleHandler
from prefect.settings import PREFECT_API_URL, temporary_settings

from schemas.params import DEFAULT_ID_COLUMN, NO_ID
from tasks.errors import PipelineError

# Prefect must never phone home from these machines; a user's own setting wins.
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
# Where `make serve` (scripts/local_prefect.py) records its server's address and PIDs.
STACK_INFO = Path(__file__).resolve().parents[1] / ".run" / "stack.json"


class _DropUserErrorTracebacks(logging.Filter):
    """A PipelineError is a message for the user, not a bug: log it without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


class _QuietConsole(logging.Filter):
    """The terminal without Prefect's chatter: warnings, and errors other than the flow's and
    tasks' own. Their errors are the failure the `error:` line reports once (a bug still ends
    in a traceback: the exception leaves the flow call); their info lines, and the event
    client's shutdown notice, stay on the server."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return False
        if record.name.startswith(ENGINE_LOGGERS):
            return record.levelno == logging.WARNING
        return not record.getMessage().startswith("Still processing items")


def send_pending_logs_and_events(timeout: float = 10.0) -> None:
    """Wait until Prefect's log and event workers have sent what they hold to the server."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=timeout)
    EventsWorker.drain_all(timeout=timeout)


def exit_now(code: int) -> None:
    """End the command-line process: send Prefect's last logs and events while its server is
    still up (an exit handler stops the temporary server before logging's own flush, which then
    waits ~5 s for a server that is gone), run the exit handlers, flush, and exit without
    tearing the interpreter down, which with torch loaded takes about a second and does
    nothing a finished run needs."""
    send_pending_logs_and_events()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect's logs in the terminal too"
    )


def add_id_column_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--id-column",
        help=f"id column of the rows, unique within a file (default {DEFAULT_ID_COLUMN}); "
        f"{NO_ID}: files without one (no duplicate-key check, the split keyed on the row's "
        "values)",
    )


def running_stack_api(info_file: Path = STACK_INFO) -> str | None:
    """The API URL of the local stack's server if it is up and answering, else None."""
    try:
        url = json.loads(info_file.read_text())["api_url"]
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            response.read()
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url


@contextlib.contextmanager
def prefect_server() -> Iterator[str | None]:
    """Run what is inside against the configured Prefect API, or the local stack's server
    when none is configured and `make serve` is running (no temporary server to start)."""
    configured = PREFECT_API_URL.value()
    stack = None if configured else running_stack_api()
    if stack is None:
        yield configured
        return
    with temporary_settings(updates={PREFECT_API_URL: stack}):
        yield stack


def parameter_error(exc: ParameterTypeError, given: dict[str, Any]) -> str:
    """Prefect's multi-line parameter error -> one line naming each parameter and its value."""
    problems = []
    for line in str(exc).splitlines():
        if line.startswith(" - ") and ":" in line:
            name, message = line[3:].split(":", 1)
            message = message.replace(" Value error, ", " ", 1)
            shown = name in given and repr(given[name]) not in message
            value = f" (got {given[name]!r})" if shown else ""
            problems.append(f"parameter {name}:{message}{value}")
    return "; ".join(problems) or str(exc).replace("\n", " ")


def terminal_logging(verbose: bool) -> None:
    """Make Prefect's console handlers quiet (see _QuietConsole) unless `verbose` or the user
    set PREFECT_LOGGING_LEVEL, for the rest of this command-line process (the temporary server
    stops at exit, after the flow); user errors never show a traceback."""
    loud = verbose or "PREFECT_LOGGING_LEVEL" in os.environ
    console = [
        handler
        for name in ("", "uvicorn", "fastapi")
        for handler in logging.getLogger(name).handlers
        if isinstance(handler, PrefectConsoleHandler)
    ]
    quiet, no_tracebacks = _QuietConsole(), _DropUserErrorTracebacks()
    for handler in console:
        handler.addFilter(no_tracebacks if loud else quiet)
    for name in ENGINE_LOGGERS:
        logging.getLogger(name).addFilter(no_tracebacks)


def run_flow(
    flow: Flow,
    parameters: dict[str, Any],
    summarize: Callable[[Any], str],
    preflight: Callable[[dict[str, Any]], object] | None = None,
) -> int:
    """Validate `parameters` against the flow's signature and run `preflight` on them (path
    checks: nothing has started yet), then run the flow and print the summary.

    Returns the exit code: 0 on success, 2 for a bad parameter, 1 for a PipelineError.
    Anything else is a bug and keeps its traceback.
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    verbose = bool(parameters.pop("verbose", False))
    flows_logger = logging.getLogger("prefect.flows")
    level = flows_logger.level
    flows_logger.setLevel(logging.CRITICAL)
    try:
        checked = flow.validate_parameters(parameters)
    except ParameterTypeError as exc:
        print(f"error: {parameter_error(exc, parameters)}", file=sys.stderr)
        return 2
    finally:
        flows_logger.setLevel(level)
    try:
        if preflight is not None:
            preflight(checked)
        terminal_logging(verbose)
        with prefect_server():
            result = flow(**parameters)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summarize(result))
    return 0
