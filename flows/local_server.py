"""The command line's own Prefect server, kept warm between runs.

When no server is configured (no PREFECT_API_URL, no `make serve` stack), the first run starts
`prefect server start` on a free 127.0.0.1 port in the background, with the checkout's state
(.prefect/ beside the run folder: the database `make serve` uses too), and later runs reuse
it: a run pays the server's start (3-9 s) once, not every time. A supervisor process
(flows/supervisor.py) stops the server after IDLE_MINUTES without a command-line run, and on
`make stop`; it also keeps the warm runner (flows/warm.py) beside the server.

    python -m flows.local_server status | stop

SALES_MODEL_LOCAL_SERVER=off gives each run Prefect's temporary server instead (the tests do);
SALES_MODEL_RUN_DIR moves the state file (default .run/ in the checkout).

This module imports the standard library only: the supervisor stays small and starts at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flows.processes import command_line, pid_alive

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
# Prefect must never phone home from these machines (set for every process started here, and
# by the command line where the user has not set them).
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
IDLE_MINUTES = 15.0
# How long a run waits for a server another run is starting, or for one it started: a new
# database's migrations take about 9 s here.
START_TIMEOUT = 90.0
POLL_SECONDS = 0.1


def run_dir() -> Path:
    """Where the local servers keep their state: SALES_MODEL_RUN_DIR, default .run/ in the
    checkout (`make serve`'s stack.json, and local-server/ below)."""
    return Path(os.environ.get("SALES_MODEL_RUN_DIR") or REPO / ".run")


@dataclass(frozen=True)
class LocalServer:
    """Where the local server keeps its state: `server.json` (its API URL, the supervisor's
    PID), `clients/` (one file per command-line run using it), the start lock and the log."""

    state: Path

    @classmethod
    def of_environment(cls) -> LocalServer:
        return cls(run_dir() / "local-server")

    @property
    def info_file(self) -> Path:
        return self.state / "server.json"

    @property
    def clients(self) -> Path:
        return self.state / "clients"

    @property
    def lock(self) -> Path:
        return self.state / "starting"

    @property
    def log(self) -> Path:
        return self.state / "server.log"

    @property
    def home(self) -> Path:
        """Its PREFECT_HOME: .prefect/ beside the run folder (the checkout's, as `make serve`)."""
        return self.state.parent.parent / ".prefect"

    def info(self) -> dict | None:
        """The running server's {"api_url", "ui_url", "pid"}, or None when there is none."""
        try:
            info = json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None
        return info if is_supervisor(self, info.get("pid")) else None


def idle_minutes() -> float:
    return float(os.environ.get("SALES_MODEL_SERVER_IDLE_MINUTES") or IDLE_MINUTES)


def enabled() -> bool:
    return switched_on("SALES_MODEL_LOCAL_SERVER")


def switched_on(name: str, env: dict[str, str] | None = None) -> bool:
    """An on/off setting of `env` (this process's by default): on unless off, 0 or false."""
    return (os.environ if env is None else env).get(name, "on").lower() not in ("off", "0", "false")


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except Exception:  # refused, reset, timed out, a half-started server's bad answer
        return False


def is_supervisor(server: LocalServer, pid: int | None) -> bool:
    """Whether `pid` is this state's supervisor: alive, and its command line says so."""
    argv = command_line(pid or 0)
    return b"flows.local_server" in argv and str(server.state).encode() in argv


def live_clients(server: LocalServer) -> list[int]:
    """The PIDs of the command-line runs using the server now (files of gone ones removed)."""
    alive = []
    with contextlib.suppress(FileNotFoundError):
        for client in server.clients.iterdir():
            if client.name.isdigit() and pid_alive(int(client.name)):
                alive.append(int(client.name))
            else:
                client.unlink(missing_ok=True)
    return alive


def warm_up(server: LocalServer) -> bool:
    """Register this process as a client until it exits (the server does not idle out under a
    run) and start the server in the background unless one runs or is starting. Returns at
    once: whether this call started it. OSError when the state folder cannot be written."""
    server.clients.mkdir(parents=True, exist_ok=True)
    (server.clients / str(os.getpid())).touch()
    return server.info() is None and _start_once(server)


def ready(server: LocalServer) -> str | None:
    """The API URL of the local server if it answers now, else None."""
    info = server.info()
    return info["api_url"] if info and healthy(info["api_url"]) else None


def wait_ready(server: LocalServer) -> str:
    """The API URL of the local server once it answers (started by warm_up, here or in another
    run; started again once if it died meanwhile). RuntimeError when it does not come up."""
    deadline = time.monotonic() + START_TIMEOUT
    restarts = 1  # a server that died since warm_up gets one more start, a failing one no more
    while time.monotonic() < deadline:
        url = ready(server)
        if url is not None:
            return url
        if server.info() is None and not _starting(server):
            if not restarts:
                break  # its supervisor gave up: the server exited
            restarts -= _start_once(server)
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"the local Prefect server did not start; see {server.log}")


def release(server: LocalServer) -> None:
    """This process no longer uses the server (its idle time starts now, if no other run)."""
    with contextlib.suppress(OSError):
        (server.clients / str(os.getpid())).unlink()
        os.utime(server.clients)


def _starting(server: LocalServer) -> bool:
    """Whether a start is under way: the lock names a live process (the run starting the
    supervisor, then the supervisor) and is younger than START_TIMEOUT. A lock left empty by a
    process killed as it wrote it counts for a few seconds only."""
    try:
        age = time.time() - server.lock.stat().st_mtime
        text = server.lock.read_text().strip()
    except OSError:
        return False
    if age > START_TIMEOUT:
        return False
    return pid_alive(int(text)) if text.isdigit() and int(text) > 0 else age < 5


def _start_once(server: LocalServer) -> bool:
    """Start the supervisor unless another start is under way (the lock file, created
    exclusively; a stale one is removed, for the next call). Whether this call started it."""
    try:
        fd = os.open(server.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if not _starting(server):
            server.lock.unlink(missing_ok=True)
        return False
    with os.fdopen(fd, "w") as out:
        out.write(str(os.getpid()))
    if server.info() is not None:  # started between our look and the lock
        server.lock.unlink(missing_ok=True)
        return False
    with server.log.open("ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "flows.local_server", "serve", "--state", str(server.state)],
            cwd=REPO,
            env={**os.environ, **OFFLINE_ENV},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives this run; `stop` ends its whole group
        )
    # the lock names the supervisor from now on (replaced whole: never read empty)
    write(server.lock, str(supervisor.pid))
    return True


def write(path: Path, text: str) -> None:
    """Replace `path` whole: a reader never sees it half written."""
    part = path.with_name(f".{path.name}.{os.getpid()}")
    part.write_text(text)
    part.replace(path)


def stop(server: LocalServer, timeout: float = 20.0) -> bool:
    """Stop the supervisor and its server, running or still starting (SIGTERM to its group,
    SIGKILL after `timeout`); a PID in a state file that is not this state's supervisor is
    never signalled. Whether one was running."""
    pids = set()
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        pids.add(int(json.loads(server.info_file.read_text())["pid"]))
    with contextlib.suppress(OSError, ValueError):
        pids.add(int(server.lock.read_text().strip() or 0))
    supervisors = [pid for pid in pids if is_supervisor(server, pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in supervisors:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while any(map(pid_alive, supervisors)) and time.monotonic() < deadline:
            time.sleep(0.2)
    server.info_file.unlink(missing_ok=True)
    if not _starting(server):
        server.lock.unlink(missing_ok=True)
    return bool(supervisors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.local_server")
    parser.add_argument("command", choices=["status", "stop", "serve"])
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    server = LocalServer(args.state) if args.state else LocalServer.of_environment()
    if args.command == "serve":
        from flows.supervisor import serve

        return serve(server, idle_minutes())
    if args.command == "stop":
        print("stopped the local Prefect server" if stop(server) else "no local Prefect server")
        return 0
    info = server.info()
    print(f"local Prefect server: {info['ui_url']}" if info else "no local Prefect server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
