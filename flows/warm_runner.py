"""The warm runner's process (flows/warm.py says what it is for): import once, then fork a child
per command-line run and turn the child into that command.

Forking after the imports is safe because nothing has run yet: the runner starts no thread pool,
event loop or client of its own (OpenBLAS stops its threads around a fork; torch starts its own
at first use, in the child).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from pathlib import Path

from flows.warm import PRELOAD, REPO, import_time_env, receive, send, socket_path

_PEERCRED = struct.Struct("3i")  # pid, uid, gid
STALE = "its code changed"


def serve(state: Path) -> int:
    """Import, listen on the state folder's socket, fork a child for each run it takes. Returns
    0 once a Python file it imported has changed (the supervisor starts a fresh runner); in a
    child, ends as the command would."""
    _preload()
    files, env = _fingerprint(), import_time_env(dict(os.environ))
    runner = os.getpid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
    dir_fd = os.open(state, os.O_PATH | os.O_DIRECTORY)
    path = socket_path(dir_fd)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
        old = os.umask(0o177)  # the socket is this user's only
        try:
            listener.bind(path)
        finally:
            os.umask(old)
        listener.listen(16)
        print(f"warm runner {runner}: ready", flush=True)
        while True:
            conn, _ = listener.accept()
            taken = _take(conn, files, env)
            if isinstance(taken, tuple):
                break  # the child: it becomes the command, below
            conn.close()
            if taken == STALE:
                print(f"warm runner {runner}: {STALE}; exiting", flush=True)
                return 0
    finally:
        if os.getpid() == runner:
            with contextlib.suppress(FileNotFoundError):
                Path(path).unlink()
    listener.close()
    os.close(dir_fd)
    request, fds = taken
    _become(request, fds)
    return _run(conn, request)


def _preload() -> None:
    from flows.train import RUN_IMPORTS

    for name in (*PRELOAD, *RUN_IMPORTS):
        importlib.import_module(name)


def _fingerprint() -> dict[str, tuple[int, int]]:
    """Every imported Python file's modification time and size (about 3,000 files: ~10 ms)."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        with contextlib.suppress(OSError, TypeError):
            stat = Path(path).stat()
            files[path] = (stat.st_mtime_ns, stat.st_size)
    return files


def _take(conn: socket.socket, files: dict, env: dict) -> tuple[dict, list[int]] | str | None:
    """Read a run's request; refuse it (returns the reason) or fork: the child gets (request,
    the command's three standard streams), the runner None."""
    try:
        conn.settimeout(10)
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        if _PEERCRED.unpack(raw)[1] != os.getuid():
            return "another user"
        request, fds = receive(conn, max_fds=3)
    except (OSError, ValueError) as exc:
        return f"no request ({exc})"
    refusal = _refusal(request, fds, files, env)
    if refusal:
        with contextlib.suppress(OSError):
            send(conn, {"refused": refusal})
    elif os.fork() == 0:
        return request, fds
    for fd in fds:
        os.close(fd)
    return refusal


def _refusal(request: dict, fds: list[int], files: dict, env: dict) -> str | None:
    """Why this runner cannot run the request as the command would itself, or None."""
    if len(fds) != 3:
        return "no standard streams"
    if request.get("prefix") != sys.prefix or request.get("checkout") != str(REPO):
        return "another Python environment or checkout"
    if import_time_env(request.get("env", {})) != env:
        return "other import-time environment variables"
    if _fingerprint() != files:
        return STALE
    return None


def _become(request: dict, fds: list[int]) -> None:
    """Turn this child into the command: its signals, streams, folder, environment, arguments,
    and Prefect's settings and logging read again from that environment."""
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()  # not in the supervisor's group: stopping the runner does not stop runs
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    out_encoding, err_encoding, out_errors, err_errors = request["encoding"]
    sys.stdin = sys.__stdin__ = _text(0, "r", out_encoding, out_errors, False)
    sys.stdout = sys.__stdout__ = _text(1, "w", out_encoding, out_errors, os.isatty(1))
    sys.stderr = sys.__stderr__ = _text(2, "w", err_encoding, err_errors, True)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)


def _text(fd: int, mode: str, encoding: str, errors: str, line: bool) -> io.TextIOWrapper:
    binary = open(fd, mode + "b", closefd=False)  # noqa: SIM115 (the stream outlives this call)
    return io.TextIOWrapper(binary, encoding=encoding, errors=errors, line_buffering=line)


def _run(conn: socket.socket, request: dict) -> int:
    """Run the command's `main` and end as its process would, telling the command its exit
    code (and this process's peak RSS) last."""
    from flows.cli import exit_now

    conn.settimeout(None)
    send(conn, {"pid": os.getpid()})
    threading.Thread(target=_end_with, args=(conn,), daemon=True, name="command").start()
    try:
        code = importlib.import_module(request["module"]).main(request["argv"][1:])
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # a bug: its traceback, as the command would show it
        traceback.print_exc()
        code = 1
    exit_now(code, last=lambda: send(conn, {"exit": code, "pid": os.getpid(), **_peak()}))
    return code


def _end_with(conn: socket.socket) -> None:
    """The command sends nothing more: the connection ends when it is gone (killed, its
    terminal closed), and so does this run: interrupted, so that it gives back what it holds
    (the training slot), and killed if it has not ended a minute later."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)


def _peak() -> dict[str, int]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"peak_rss_kb": int(line.split()[1])}
    return {}
