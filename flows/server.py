"""Which Prefect server a run talks to: PREFECT_API_URL (or a Prefect profile) when set; else
the local stack's server when `make serve` is running (found from its state file); else the
command line's own local server, started in the background by the first run and kept warm for
the next ones (flows/local_server.py); with SALES_MODEL_LOCAL_SERVER=off, Prefect's temporary
server. And the settings a run gets for it (the flow-run heartbeat)."""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows import local_server
from flows.processes import command_line
from tasks.common.errors import PipelineError

# Where `make serve` (scripts/local_prefect.py) records its server's address and PIDs.
STACK_INFO = local_server.run_dir() / "stack.json"


def running_stack_api(info_file: Path | None = None) -> str | None:
    """The API URL of the local stack's server if it is up and answering (waited for while
    its server process is still starting), else None."""
    info_file = info_file or local_server.run_dir() / "stack.json"  # the run's environment's
    try:
        info = json.loads(info_file.read_text())
        url, pid = info["api_url"], int(info["pids"]["server"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    deadline = time.monotonic() + local_server.START_TIMEOUT
    while not local_server.healthy(url):
        if not {b"server", b"start"} <= set(command_line(pid)) or time.monotonic() > deadline:
            return None
        time.sleep(0.5)
    return url


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
