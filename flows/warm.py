"""The warm runner: a process that has imported the pipeline once (Prefect, torch, pandas,
pandera, pyarrow, scipy, matplotlib: about 3 s here) and forks one child per command-line run,
so a run pays none of it.

The local server's supervisor (flows/local_server.py) starts it beside the server, restarts it
when it exits, and stops it with the server. `python -m flows.train ...` first offers itself
here (`hand_over`, standard library only): the child takes the command's arguments, working
folder, environment and terminal (its three standard streams, passed over a Unix socket), runs
exactly what the command would have run, and sends back its exit code; the command forwards
Ctrl-C and ends with that code. The runner refuses a run, which then runs in its own process as
before, when:
- a Python file it imported changed since (it exits, and the supervisor starts a fresh one),
- the command runs another Python or checkout, or an environment variable read when libraries
  load differs (IMPORT_TIME_ENV: thread counts, allocator, Python's own);
- SALES_MODEL_WARM_RUNNER=off, or the local server is off (SALES_MODEL_LOCAL_SERVER=off).

SALES_MODEL_RUN_REPORT=FILE makes the command write the run's process id and peak RSS there
(`make bench` measures the run's process, not the command's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import sys
from pathlib import Path

from flows import local_server

SOCKET = "runner.sock"
REPO = Path(__file__).resolve().parents[1]
# Read by Python or a library as it loads: a run with other values must import afresh.
IMPORT_TIME_ENV = ("PYTHON", "LD_", "OMP_", "OPENBLAS_", "MKL_", "KMP_", "TORCH", "MALLOC_")
# What the runner imports: the flows (and so Prefect, pandas, pandera, pyarrow), and what a run
# imports on its way (flows.train.RUN_IMPORTS, Prefect's engines, the Delta writer).
PRELOAD = (
    "flows.train",
    "flows.score",
    "prefect.flow_engine",
    "prefect.task_engine",
    "fastapi.encoders",
    "pyarrow.dataset",
    "deltalake",
)
_HEADER = struct.Struct("!I")


def enabled() -> bool:
    off = ("off", "0", "false")
    return local_server.enabled() and os.environ.get("SALES_MODEL_WARM_RUNNER", "on") not in off


def hand_over(module: str) -> None:
    """Run this command (`python -m <module> ...`) in the warm runner and exit with its code,
    if a runner is up and takes it; else return, and the command runs here."""
    if not enabled():
        return
    try:
        conn = _connect()
        send(conn, _request(module), fds=[0, 1, 2])
        taken = receive(conn)
    except (OSError, ValueError):
        return  # no runner, or it refused before anything ran: run here
    if "pid" not in taken:
        conn.close()
        return
    _forward_signals(taken["pid"])
    conn.settimeout(None)  # a run takes as long as it takes
    try:
        result = receive(conn)
    except (OSError, ValueError):
        result = {"exit": 1, "pid": taken["pid"]}
        print(f"error: the run's process ({taken['pid']}) ended abruptly", file=sys.stderr)
    _report(result)
    sys.exit(result["exit"])


def _request(module: str) -> dict:
    streams = (sys.stdout, sys.stderr)
    return {
        "module": module,
        "argv": sys.argv,
        "cwd": str(Path.cwd()),
        "env": dict(os.environ),
        "prefix": sys.prefix,
        "checkout": str(REPO),
        "encoding": [s.encoding for s in streams] + [s.errors for s in streams],
    }


def _connect() -> socket.socket:
    """A connection to the runner of this environment's local server (OSError: none)."""
    state = local_server.LocalServer.of_environment().state
    fd = os.open(state, os.O_PATH | os.O_DIRECTORY)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(10)
        conn.connect(socket_path(fd))
    except OSError:
        conn.close()
        raise
    finally:
        os.close(fd)
    return conn


def socket_path(dir_fd: int) -> str:
    """The runner's socket, through its folder's descriptor: a Unix socket's path has at most
    107 bytes, and the state folder may be deep."""
    return f"/proc/self/fd/{dir_fd}/{SOCKET}"


def _forward_signals(pid: int) -> None:
    """Ctrl-C, a terminal hang-up or a TERM sent to the command reach the run's process."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, lambda number, _frame: _kill(pid, number))


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _report(result: dict) -> None:
    path = os.environ.get("SALES_MODEL_RUN_REPORT")
    if path:
        Path(path).write_text(json.dumps({**result, "warm": True}) + "\n")


def send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    header = _HEADER.pack(len(data))
    if fds:
        socket.send_fds(conn, [header], fds)
    else:
        conn.sendall(header)
    conn.sendall(data)


def receive(conn: socket.socket, max_fds: int = 0) -> dict:
    """One message (ValueError at the end of the stream); with `max_fds`, (message, fds)."""
    fds: list[int] = []
    if max_fds:
        header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, max_fds)
    else:
        header = conn.recv(_HEADER.size)
    if len(header) < _HEADER.size:
        raise ValueError("the connection ended")
    (size,) = _HEADER.unpack(header)
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("the connection ended")
        data += chunk
    message = json.loads(data)
    return (message, fds) if max_fds else message


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.warm")
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    from flows.warm_runner import serve

    return serve(args.state)


if __name__ == "__main__":
    sys.exit(main())
