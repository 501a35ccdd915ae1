"""Command-line plumbing shared by the flows: check parameters and paths before anything starts,
run the flow, report a user error as one line.

By default the terminal shows the summary, or one `error:` line; Prefect's own logs still go to
the Prefect server (the UI shows them). `--verbose`, or setting PREFECT_LOGGING_LEVEL yourself,
shows them in the terminal too.

Which server: PREFECT_API_URL (or a Prefect profile) when set; else the local stack's server
when `make serve` is running (found from its state file); else the command line's own local
server, started in the background by the first run and kept warm for the next ones
(flows/local_server.py); with SALES_MODEL_LOCAL_SERVER=off, Prefect's temporary server.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import inspect
import json
import logging
import os
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from prefect import Flow
from prefect.exceptions import ParameterTypeError
from prefect.logging.handlers import PrefectConsoleHandler
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows import local_server
from flows.local_server import OFFLINE_ENV
from flows.progress import terminal_progress
from schemas.params import Option
from tasks.common import memory, progress
from tasks.common.errors import PipelineError, exit_code

ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
# Where `make serve` (scripts/local_prefect.py) records its server's address and PIDs.
STACK_INFO = local_server.run_dir() / "stack.json"


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


def running_stack_api(info_file: Path = STACK_INFO) -> str | None:
    """The API URL of the local stack's server if it is up and answering (waited for while
    its server process is still starting), else None."""
    try:
        info = json.loads(info_file.read_text())
        url, pid = info["api_url"], int(info["pids"]["server"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    deadline = time.monotonic() + local_server.START_TIMEOUT
    while not local_server.healthy(url):
        if not _is_prefect_server(pid) or time.monotonic() > deadline:
            return None
        time.sleep(0.5)
    return url


def _is_prefect_server(pid: int) -> bool:
    """Whether `pid` is a `prefect server start` process (a PID left by a reboot may name any)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"server" in argv and b"start" in argv


def running_server() -> str | None:
    """The API URL of the configured Prefect server, or of the local stack's when it runs."""
    return PREFECT_API_URL.value() or running_stack_api()


def find_server() -> str | local_server.LocalServer | None:
    """Where a run's Prefect API is: the configured one, or the local stack's (a URL); else
    the command line's local server, started now in the background if none runs; None:
    Prefect's temporary server (the local server off, or its state folder not writable)."""
    url = running_server()
    if url or not local_server.enabled():
        return url
    server = local_server.LocalServer.of_environment()
    try:
        started = local_server.warm_up(server)
    except OSError as exc:
        print(
            f"note: cannot keep a local Prefect server in {server.state} ({exc.strerror or exc}); "
            "this run starts a temporary one",
            file=sys.stderr,
        )
        return None
    if started:
        print(
            "note: starting a local Prefect server for this and later runs; it stops after "
            f"{local_server.idle_minutes():g} idle minutes, or with `make stop`",
            file=sys.stderr,
        )
    return server


@contextlib.contextmanager
def prefect_server(
    where: str | local_server.LocalServer | None, preload: tuple[str, ...] = ()
) -> Iterator[str | None]:
    """Run what is inside against `where` (see find_server), once it answers; yields its API
    URL (None: Prefect's temporary server). While a local server is still starting, the
    modules in `preload` are imported: the run needs them later, and the start leaves time."""
    with contextlib.ExitStack() as stack:
        url = where
        if isinstance(where, local_server.LocalServer):
            stack.callback(local_server.release, where)
            if local_server.ready(where) is None:
                for module in preload:
                    importlib.import_module(module)
            try:
                url = local_server.wait_ready(where)
            except RuntimeError as exc:
                raise PipelineError(str(exc)) from None
        local = isinstance(where, local_server.LocalServer)
        stack.enter_context(temporary_settings(updates=_run_settings(url, local)))
        yield url


# Prefect's default flow-run heartbeat (seconds), and the one runs against a server with the
# zombie-run automation need (scripts/server_setup.py: 90 s without one crashes the run).
PREFECT_DEFAULT_HEARTBEAT = 180
SERVER_HEARTBEAT = 30


def _run_settings(url: str | None, local: bool) -> dict[Any, Any]:
    """The server's URL and, unless the user chose a heartbeat: none against the command
    line's own or a temporary server (nothing watches it there, and its thread's join costs up
    to a second at the end of every run), one every SERVER_HEARTBEAT s against another."""
    updates: dict[Any, Any] = {PREFECT_API_URL: url} if url else {}
    if PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == PREFECT_DEFAULT_HEARTBEAT:
        remote = url is not None and not local
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = SERVER_HEARTBEAT if remote else None
    return updates


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
