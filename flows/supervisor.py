"""The local server's supervisor (`python -m flows.local_server serve`, started by the first
command-line run that finds no server; flows/local_server.py): the Prefect server and the warm
runner (flows/warm.py) beside it, stopped when idle. `python -m flows.supervisor --state DIR`
keeps only a warm runner, in DIR: `make serve`'s, for its worker's flow runs
(scripts/local_prefect.py). The standard library only."""

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
from pathlib import Path

from flows import warm
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

RESTART_POLL_SECONDS = 5  # how soon a runner that exited is started again


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
        runner, failures = _runner(server.state) if warm.enabled() else None, 0
        while child.poll() is None and not _idled_out(server, info, idle * 60):
            if runner is not None and runner.poll() is not None:
                runner, failures = _restart(server.state, runner.returncode, failures)
            time.sleep(RESTART_POLL_SECONDS)
        return 0
    finally:
        _forget(server, os.getpid())
        for process in (runner, child):
            _end(process)


def keep_runner(state: Path) -> int:
    """A warm runner in `state`, started again when it exits, stopped with this process (on
    SIGTERM)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    runner, failures = _runner(state), 0
    try:
        while True:
            if runner.poll() is not None:
                runner, failures = _restart(state, runner.returncode, failures)
            time.sleep(RESTART_POLL_SECONDS)
    finally:
        _end(runner)


def _runner(state: Path) -> subprocess.Popen:
    """A warm runner listening in `state` (its output goes to this process's: the log)."""
    command = [sys.executable, "-m", "flows.warm", "--state", str(state)]
    return subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL)


def _restart(state: Path, code: int, failures: int) -> tuple[subprocess.Popen, int]:
    """A fresh runner for one that exited: at once when its code changed (it exits with 0),
    else (a crash, an import error while a file is being edited, a kill) after a pause that
    doubles with each failure in a row, up to 5 minutes."""
    if code == 0:
        return _runner(state), 0
    pause = min(5 * 2**failures, 300)
    print(f"warm runner exited with {code}; starting another in {pause} s", flush=True)
    time.sleep(pause)
    return _runner(state), failures + 1


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.supervisor")
    parser.add_argument("--state", type=Path, required=True, help="the warm runner's folder")
    return keep_runner(parser.parse_args(argv).state)


if __name__ == "__main__":
    sys.exit(main())
