"""The warm runner: a process that has imported the pipeline once (Prefect, torch, pandas,
pandera, pyarrow, scipy, matplotlib: about 3 s here) and forks one child per command-line run,
so a run pays none of it.

The local server's supervisor (flows/supervisor.py) starts it beside the server, starts it
again when it exits, and stops it with the server; `make serve` starts one beside its worker the
same way (scripts/local_prefect.py), for the worker's flow runs (flows/engine.py).
`python -m flows.train ...` first offers itself here (`hand_over`, standard library only): the
child takes the command's arguments, working folder, environment and terminal (its three
standard streams, passed over a Unix socket), runs exactly what the command would have run, and
sends back how it ended; the command forwards the signals it receives and ends the same way. The
runner refuses a run, which then runs in its own process as before, when:
- a Python file it imported changed since (it exits, and the supervisor starts a fresh one),
- the command runs another Python, checkout, import path or interpreter options (`-W`, `-X`,
  `-O`, `-u`), or an environment variable read as modules load differs (IMPORT_TIME_ENV);
- SALES_MODEL_WARM_RUNNER=off, or (the command line's runs) the local server is off
  (SALES_MODEL_LOCAL_SERVER=off).

Only a runner of this user, in a folder of this user that nobody else may write, is trusted
with the command's environment.

SALES_MODEL_RUN_REPORT=FILE makes the command write the run's process id, exit status and peak
RSS there (`make bench` measures the process that ran the pipeline, not the command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import stat
import struct
import sys
import time
from pathlib import Path
from typing import NoReturn

from flows import local_server

SOCKET = "runner.sock"
REPO = Path(__file__).resolve().parents[1]
# Read by Python, a library or this project as modules load (the training flow's timeout,
# Prefect's task and flow defaults, thread counts, allocators, locale and time zone): a run with
# other values must import afresh.
IMPORT_TIME_ENV = (
    *("PYTHON", "LD_", "OMP_", "OPENBLAS_", "MKL_", "KMP_", "TORCH", "PYTORCH", "MALLOC_"),
    *("_RJEM_", "JE_", "ARROW_", "MPL", "LANG", "LC_", "TZ", "PREFECT_FLOW", "PREFECT_TASK"),
    "SALES_MODEL_TRAIN_TIMEOUT_SECONDS",
)
# Set by the pipeline's own imports unless the user did (tasks/__init__.py): the same in a
# command that has not imported them yet as in the runner that has.
SET_BY_IMPORTS = {"ARROW_DEFAULT_MEMORY_POOL": "jemalloc"}
# What the runner imports: the flows (and so Prefect, pandas, pandera, pyarrow), and what a run
# imports on its way (flows.train.RUN_IMPORTS, Prefect's engines and deployment steps, the Delta
# writer).
PRELOAD = (
    "flows.train",
    "flows.score",
    "flows.watch",
    "flows.engine",
    "prefect.deployments.steps",
    "prefect.flow_engine",
    "prefect.task_engine",
    "fastapi.encoders",
    "pyarrow.dataset",
    "deltalake",
)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
GO = b"g"  # the command's word that it waits for the run: the child starts only then
REQUEST_SECONDS = 2.0  # the runner reads a request within this, or drops it
MAX_MESSAGE = 16 * 2**20
_HEADER = struct.Struct("!I")
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


def wanted(env: dict[str, str] | None = None) -> bool:
    """SALES_MODEL_WARM_RUNNER of `env` (this process's by default)."""
    return local_server.switched_on("SALES_MODEL_WARM_RUNNER", env)


def enabled() -> bool:
    """Whether the command line's runs go through the local server's runner."""
    return local_server.enabled() and wanted()


def hand_over(module: str, state: Path | None = None) -> str:
    """Run this command (`python -m <module> ...`) in the warm runner and end as the run ended,
    if a runner is up and takes it; else return why not, and the command runs here. `state`:
    the runner's folder (flows/engine.py: the stack's); by default the local server's."""
    if state is None:
        if not enabled():
            return "the warm runner or the local server is off"
        state = local_server.LocalServer.of_environment().state
    elif not wanted():
        return "SALES_MODEL_WARM_RUNNER is off"
    try:
        conn = _connect(state)
        send(conn, _request(module), fds=[0, 1, 2])
        taken = receive(conn)
        if "pid" not in taken:
            conn.close()
            return taken.get("refused", "refused")
        conn.sendall(GO)  # from here on the run is the child's: never run it here too
    except (OSError, ValueError, AttributeError) as exc:  # AttributeError: not Linux
        return f"no runner ({exc})"
    forwarded = _forward_signals(taken["pid"])
    conn.settimeout(None)  # a run takes as long as it takes
    try:
        result = receive(conn)
        if "exit" not in result:  # the child gave up waiting for GO just as it came
            raise ValueError("no result")
        if result.get("killed") and result["signal"] not in forwarded:
            name = signal.Signals(result["signal"]).name
            print(
                f"error: the run's process ({taken['pid']}) was killed by {name}", file=sys.stderr
            )
    except (OSError, ValueError):
        result = {"pid": taken["pid"], "exit": 1, "signal": forwarded[-1] if forwarded else None}
        if not forwarded:
            print(f"error: the run's process ({taken['pid']}) ended abruptly", file=sys.stderr)
    conn.close()
    _report(result)
    return _end(result)  # never returns: this process ends as the run did


def _end(result: dict) -> NoReturn:
    """Exit as the run's process did: with its code, or killed by its signal."""
    sig = result.get("signal")
    if sig:
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two keep their action anyway
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(1)  # the signal ends this process here
    sys.exit(result["exit"])


def _request(module: str) -> dict:
    streams = (sys.stdin, sys.stdout, sys.stderr)
    return {
        "module": module,
        "argv": sys.argv,
        "cwd": str(Path.cwd()),
        "env": dict(os.environ),
        **interpreter(),
        "encoding": [[s.encoding, s.errors] if s else None for s in streams],
        "ignored": [sig for sig in FORWARDED if signal.getsignal(sig) == signal.SIG_IGN],
    }


def interpreter() -> dict:
    """What must be the same in the runner and the command, beside the environment."""
    return {
        "prefix": sys.prefix,
        "checkout": str(REPO),
        "path": sys.path,
        "flags": list(sys.flags),
        "warnoptions": sys.warnoptions,
        "xoptions": {k: str(v) for k, v in sys._xoptions.items()},
    }


def _connect(state: Path) -> socket.socket:
    """A connection to the runner in `state`; OSError when there is none, or when it is not
    this user's in a folder only this user writes."""
    fd = os.open(state, os.O_PATH | os.O_DIRECTORY)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        folder = os.fstat(fd)
        if folder.st_uid != os.getuid() or folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise PermissionError(f"{state} is not this user's own")
        conn.settimeout(10)
        conn.connect(socket_path(fd))
        if peer_uid(conn) != os.getuid():
            raise PermissionError("the runner is another user's")
    except OSError:
        conn.close()
        raise
    finally:
        os.close(fd)
    return conn


def peer_uid(conn: socket.socket) -> int:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)[1]


def socket_path(dir_fd: int) -> str:
    """The runner's socket, through its folder's descriptor: a Unix socket's path has at most
    107 bytes, and the state folder may be deep."""
    return f"/proc/self/fd/{dir_fd}/{SOCKET}"


def _forward_signals(pid: int) -> list[int]:
    """Ctrl-C, a terminal hang-up or a TERM sent to the command reach the run's process (not
    those the command ignores: the run ignores them too). Returns the list of those forwarded,
    filled as they come."""
    forwarded: list[int] = []

    def forward(number: int, _frame: object) -> None:
        forwarded.append(number)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, number)

    for sig in FORWARDED:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, forward)
    return forwarded


def _report(result: dict) -> None:
    path = os.environ.get("SALES_MODEL_RUN_REPORT")
    if path:
        with contextlib.suppress(OSError):
            Path(path).write_text(json.dumps({**result, "warm": True}) + "\n")


def send(conn: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    header = _HEADER.pack(len(data))
    if fds:
        socket.send_fds(conn, [header], fds)
    else:
        conn.sendall(header)
    conn.sendall(data)


def receive(conn: socket.socket, max_fds: int = 0, seconds: float | None = None):
    """One message (ValueError when the stream ends first or it is too big); with `max_fds`,
    (message, fds), the fds closed again if the message does not arrive whole. `seconds`: the
    whole message's deadline."""
    deadline = None if seconds is None else time.monotonic() + seconds
    fds: list[int] = []
    try:
        if max_fds:
            _wait(conn, deadline)
            header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, max_fds)
        else:
            header = _exactly(conn, _HEADER.size, deadline)
        if len(header) < _HEADER.size:
            header += _exactly(conn, _HEADER.size - len(header), deadline)
        (size,) = _HEADER.unpack(header)
        if size > MAX_MESSAGE:
            raise ValueError(f"a message of {size} bytes")
        message = json.loads(_exactly(conn, size, deadline))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return (message, fds) if max_fds else message


def _exactly(conn: socket.socket, size: int, deadline: float | None) -> bytes:
    data = b""
    while len(data) < size:
        _wait(conn, deadline)
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ValueError("the connection ended")
        data += chunk
    return data


def _wait(conn: socket.socket, deadline: float | None) -> None:
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request took too long")
        conn.settimeout(left)


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The variables of `env` read as modules load, as they are once the pipeline is imported."""
    return {k: v for k, v in {**SET_BY_IMPORTS, **env}.items() if k.startswith(IMPORT_TIME_ENV)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.warm")
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    from flows.warm_runner import serve

    return serve(args.state)


if __name__ == "__main__":
    sys.exit(main())
