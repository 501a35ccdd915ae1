"""The command line's own Prefect server, kept warm between runs.

When no server is configured (no PREFECT_API_URL, no `make serve` stack), the first run starts
`prefect server start` on a free 127.0.0.1 port in the background, with the checkout's state
(.prefect/, the database `make serve` uses too), and later runs reuse it: a run pays the
server's start (3-9 s) once, not every time. A supervisor process (`serve` below) stops the
server after IDLE_MINUTES without a command-line run, and on `make stop`.

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
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tasks.common.processes import pid_alive

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
# Prefect must never phone home from these machines; a user's own setting wins.
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

    def info(self) -> dict | None:
        """The running server's {"api_url", "ui_url", "pid"}, or None when there is none."""
        try:
            info = json.loads(self.info_file.read_text())
        except (OSError, ValueError):
            return None
        return info if pid_alive(info.get("pid", 0)) else None


def idle_minutes() -> float:
    return float(os.environ.get("SALES_MODEL_SERVER_IDLE_MINUTES") or IDLE_MINUTES)


def enabled() -> bool:
    return os.environ.get("SALES_MODEL_LOCAL_SERVER", "on").lower() not in ("off", "0", "false")


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def warm_up(server: LocalServer) -> bool:
    """Register this process as a client until it exits (the server does not idle out under a
    run) and start the server in the background unless one runs or is starting. Returns at
    once: whether this call started it."""
    server.clients.mkdir(parents=True, exist_ok=True)
    (server.clients / str(os.getpid())).touch()
    return server.info() is None and _start_once(server)


def ready(server: LocalServer) -> str | None:
    """The API URL of the local server if it answers now, else None."""
    info = server.info()
    return info["api_url"] if info and healthy(info["api_url"]) else None


def wait_ready(server: LocalServer) -> str:
    """The API URL of the local server once it answers (started by warm_up, here or in another
    run; started again if it died meanwhile). RuntimeError when it does not come up."""
    deadline = time.monotonic() + START_TIMEOUT
    restarts = 1  # a server that died since warm_up gets one more start, a failing one no more
    while time.monotonic() < deadline:
        url = ready(server)
        if url is not None:
            return url
        if server.info() is None and not server.lock.exists():
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


def _start_once(server: LocalServer) -> bool:
    """Start the supervisor unless another process is starting one (the lock file, created
    exclusively; one left by a process that died is taken over). Whether this call started it."""
    try:
        fd = os.open(server.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        with contextlib.suppress(OSError, ValueError):
            if pid_alive(int(server.lock.read_text() or 0)):
                return False
        server.lock.unlink(missing_ok=True)  # its starter died: the next call retries
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
    # the lock names the supervisor from now on: a run that gives up waiting does not free it
    server.lock.write_text(str(supervisor.pid))
    return True


def serve(server: LocalServer, idle: float) -> int:
    """The supervisor: start the Prefect server, publish its address once it answers, stop it
    after `idle` minutes without a client, or on SIGTERM."""
    port = _free_port()
    api_url = f"http://{HOST}:{port}/api"
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PREFECT_HOME": os.environ.get("PREFECT_HOME") or str(REPO / ".prefect"),
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_UI_API_URL": api_url,  # the UI reads this server, whatever else runs
    }
    env.pop("PREFECT_API_URL", None)
    command = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    child = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    signal.signal(signal.SIGTERM, lambda *_: _end(server, child, 0))
    try:
        while not healthy(api_url):
            if child.poll() is not None:
                return _end(server, child, 1)
            time.sleep(POLL_SECONDS)
        info = {"api_url": api_url, "ui_url": f"http://{HOST}:{port}", "pid": os.getpid()}
        server.info_file.write_text(json.dumps(info) + "\n")
        server.lock.unlink(missing_ok=True)
        while child.poll() is None and not _idle(server, idle * 60):
            time.sleep(5)
    finally:
        server.lock.unlink(missing_ok=True)
    return _end(server, child, 0)


def _idle(server: LocalServer, seconds: float) -> bool:
    """No client alive (files of exited runs are removed), and none for `seconds`."""
    for client in server.clients.iterdir():
        if client.name.isdigit() and pid_alive(int(client.name)):
            return False
        client.unlink(missing_ok=True)
    return time.time() - server.clients.stat().st_mtime > seconds


def _end(server: LocalServer, child: subprocess.Popen, code: int) -> int:
    server.info_file.unlink(missing_ok=True)
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    sys.exit(code)


def stop(server: LocalServer, timeout: float = 20.0) -> bool:
    """Stop the supervisor and its server (SIGTERM to the group, SIGKILL after `timeout`).
    Whether one was running."""
    info = server.info()
    if info is None:
        server.info_file.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(info["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(info["pid"], signal.SIGKILL)
    server.info_file.unlink(missing_ok=True)
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.local_server")
    parser.add_argument("command", choices=["status", "stop", "serve"])
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    server = LocalServer(args.state) if args.state else LocalServer.of_environment()
    if args.command == "serve":
        return serve(server, idle_minutes())
    if args.command == "stop":
        print("stopped the local Prefect server" if stop(server) else "no local Prefect server")
        return 0
    info = server.info()
    print(f"local Prefect server: {info['ui_url']}" if info else "no local Prefect server")
    return 0


if __name__ == "__main__":
    sys.exit(main())
