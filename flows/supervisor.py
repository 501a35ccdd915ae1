"""The local server's supervisor (`python -m flows.local_server serve`, started by the first
command-line run that finds no server; flows/local_server.py): the Prefect server and the warm
runner (flows/warm.py) beside it, stopped when idle. The standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from flows.local_server import (
    HOST,
    OFFLINE_ENV,
    POLL_SECONDS,
    REPO,
    LocalServer,
    healthy,
    live_clients,
    write,
)


def serve(server: LocalServer, idle: float) -> int:
    """The supervisor: start the Prefect server, publish its address once it answers, and the
    warm runner beside it (flows/warm.py: started again when it exits); stop both after `idle`
    minutes without a client, or on SIGTERM; whatever ends the supervisor stops them too."""
    port = _free_port()
    api_url = f"http://{HOST}:{port}/api"
    info = {"api_url": api_url, "ui_url": f"http://{HOST}:{port}", "pid": os.getpid()}
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PREFECT_HOME": str(server.home),
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_UI_API_URL": api_url,  # the UI reads this server, whatever else runs
    }
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", HOST]
    child = subprocess.Popen([*command, "--port", str(port)], env=env, stdin=subprocess.DEVNULL)
    runner = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while not healthy(api_url):
            if child.poll() is not None:
                return 1
            time.sleep(POLL_SECONDS)
        write(server.info_file, json.dumps(info) + "\n")
        server.lock.unlink(missing_ok=True)
        runner, failures = _runner(server), 0
        while child.poll() is None and not _idled_out(server, info, idle * 60):
            if runner is not None and runner.poll() is not None:
                runner, failures = _restart(server, runner.returncode, failures)
            time.sleep(5)
        return 0
    finally:
        _forget(server, os.getpid())
        for process in (runner, child):
            _end(process)


def _runner(server: LocalServer) -> subprocess.Popen | None:
    """The warm runner for this server's runs (its output goes to the server's log), unless
    turned off."""
    from flows import warm

    if not warm.enabled():
        return None
    command = [sys.executable, "-m", "flows.warm", "--state", str(server.state)]
    return subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL)


def _restart(server: LocalServer, code: int, failures: int) -> tuple[subprocess.Popen, int]:
    """A fresh runner for one that exited: at once when its code changed (it exits with 0),
    else (a crash, an import error while a file is being edited, a kill) after a pause that
    doubles with each failure in a row, up to 5 minutes."""
    if code == 0:
        return _runner(server), 0
    pause = min(5 * 2**failures, 300)
    print(f"warm runner exited with {code}; starting another in {pause} s", flush=True)
    time.sleep(pause)
    return _runner(server), failures + 1


def _end(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _idled_out(server: LocalServer, info: dict, seconds: float) -> bool:
    """No client for `seconds`. The address is withdrawn before the last look, so a run that
    registers meanwhile either is seen (the address is put back) or starts a new server."""
    if live_clients(server) or time.time() - _mtime(server.clients) <= seconds:
        return False
    server.info_file.unlink(missing_ok=True)
    if live_clients(server):
        write(server.info_file, json.dumps(info) + "\n")
        return False
    return True


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed by hand: the idle time starts again
        path.mkdir(parents=True, exist_ok=True)
        return time.time()


def _forget(server: LocalServer, pid: int) -> None:
    """Remove the state files that name `pid` (never another supervisor's)."""
    for path in (server.info_file, server.lock):
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text().strip()
            named = json.loads(text)["pid"] if path == server.info_file else int(text or 0)
            if named == pid:
                path.unlink()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
