"""Command-line plumbing shared by the flows: check parameters and paths before anything starts,
run the flow, report a user error as one line.

By default the terminal shows the summary, or one `error:` line; Prefect's own logs still go to
the Prefect server (the UI shows them). `--verbose`, or setting PREFECT_LOGGING_LEVEL yourself,
shows them in the terminal too.

Which Prefect server a run talks to: flows/server.py.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import inspect
import logging
import os
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from prefect import Flow
from prefect.exceptions import ParameterTypeError
from prefect.logging.handlers import PrefectConsoleHandler

from flows.local_server import OFFLINE_ENV
from flows.progress import terminal_progress
from flows.server import find_server, prefect_server
from schemas.params import Option
from tasks.common import memory, progress
from tasks.common.errors import PipelineError, exit_code

ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


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


def exit_now(code: int, last: Callable[[], object] | None = None) -> None:
    """End the command-line process: send Prefect's last logs and events while its server is
    still up (an exit handler stops the temporary server before logging's own flush, which then
    waits ~5 s for a server that is gone), run the exit handlers, flush, and exit without
    tearing the interpreter down, which with torch loaded takes about a second and does
    nothing a finished run needs. `last` runs after the flush (the warm runner's child tells
    the command its exit code there)."""
    send_pending_logs_and_events()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if last is not None:
        with contextlib.suppress(OSError):
            last()
    os._exit(code)


def flow_parser(flow: Flow, prog: str, skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The command line of a flow, generated from its typed signature: one option per
    parameter (`--holdout-fraction` for `holdout_fraction`, or the spelling its `Option` gives),
    its help the parameter's description and default, plus `-v/--verbose`. Parameters in
    `skip` are set by deployments only."""
    module = sys.modules[flow.fn.__module__].__doc__ or ""
    parser = argparse.ArgumentParser(prog=prog, description=module.split("\n")[0])
    hints = typing.get_type_hints(flow.fn, include_extras=True)
    for name, parameter in inspect.signature(flow.fn).parameters.items():
        if name not in skip:
            _add_option(parser, name, hints[name], parameter.default)
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show Prefect's logs in the terminal too"
    )
    return parser


def _add_option(parser: argparse.ArgumentParser, name: str, hint: Any, default: Any) -> None:
    kind, metadata = _unwrap(hint)
    # Annotated metadata reads inner first: the outermost description and spelling win.
    description = next(
        (m.description for m in reversed(metadata) if getattr(m, "description", None)), ""
    )
    spelling = next((m for m in reversed(metadata) if isinstance(m, Option)), Option())
    flags = spelling.flags or ("--" + name.replace("_", "-"),)
    if kind is bool:
        # Text, like every other value: the signature parses it.
        const = "false" if default else "true"
        shown = spelling.help or description
        parser.add_argument(*flags, dest=name, action="store_const", const=const, help=shown)
        return
    options: dict[str, Any] = {"dest": name, "help": _help(description, default)}
    if _many(kind):
        options["nargs"] = "+"
        if _one_allowed(kind):
            options["action"] = _OneOrMany
    if typing.get_origin(kind) is Literal:
        # Shown, not enforced here: the signature refuses a bad value in the one error line.
        options["metavar"] = "{" + ",".join(map(str, typing.get_args(kind))) + "}"
    elif spelling.metavar:
        options["metavar"] = spelling.metavar
    parser.add_argument(*flags, **options)


def _unwrap(hint: Any) -> tuple[Any, list[Any]]:
    """(the type, its Annotated metadata, outermost last); nested Annotated types are
    flattened by Python itself."""
    if typing.get_origin(hint) is typing.Annotated:
        return hint.__origin__, list(hint.__metadata__)
    return hint, []


def _many(kind: Any) -> bool:
    """Whether a parameter takes several values (a tuple or list, alone or in a union)."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_many(_unwrap(arg)[0]) for arg in typing.get_args(kind))
    return origin in (tuple, list)


def _one_allowed(kind: Any) -> bool:
    """Whether a single text value is a value of the parameter too (`str | list[str]`)."""
    if typing.get_origin(kind) not in (typing.Union, types.UnionType):
        return False
    return any(_unwrap(arg)[0] is str for arg in typing.get_args(kind))


class _OneOrMany(argparse.Action):
    """Several values as a list, one value as itself (a parameter of type `str | list[str]`)."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, values[0] if len(values) == 1 else values)


def _help(description: str, default: Any) -> str:
    if default is None or default is inspect.Parameter.empty:
        return description
    shown = " ".join(map(str, default)) if isinstance(default, tuple | list) else default
    return f"{description} (default {shown})"


def parse_flow_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict[str, Any]:
    """Command-line options -> flow parameters (only those given: the flow has the defaults).
    Values stay text: the flow's typed signature parses and bounds them, one rule for all."""
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v not in (None, False)}


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
    preload: tuple[str, ...] = (),
) -> int:
    """Validate `parameters` against the flow's signature and run `preflight` on them (path
    checks: nothing has started yet), then run the flow and print the summary. `preload`:
    modules the run imports on its way, imported early while a local server starts.

    Returns the exit code: 0 on success, 2 for a bad parameter (its type, bounds, or a path
    outside the allowed folders), 1 for any other PipelineError.
    Anything else is a bug and keeps its traceback.
    """
    memory.limit_arenas()  # first: before any thread (Prefect's start at the flow call) allocates
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
        server = find_server()  # after the checks: a refused run starts no server
        terminal_logging(verbose)
        view = terminal_progress(verbose)
        with prefect_server(server, preload), progress.listening(view):
            try:
                result = flow(**parameters)
            finally:
                if view is not None:
                    view.close()  # erased before the summary or the error line
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    print(summarize(result))
    return 0
