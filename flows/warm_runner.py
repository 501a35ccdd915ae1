"""The warm runner's process (flows/warm.py says what it is for): import once, then fork a child
per command-line run and turn the child into that command.

Forking after the imports is safe because nothing of the pipeline has run: no thread pool, event
loop or client of Prefect, torch or pyarrow exists yet (OpenBLAS stops its threads around a
fork; torch and Arrow start theirs at first use, in the child). The threads the runner has are
jemalloc's background purgers (Arrow's and deltalake's allocators), which a child goes without:
freed pages are then returned as allocations go on, not by a thread.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from flows.warm import (
    FORWARDED,
    GO,
    PRELOAD,
    REQUEST_SECONDS,
    import_time_env,
    interpreter,
    peer_uid,
    receive,
    send,
    socket_path,
)

STALE = "its code changed"
# How long a run whose command is gone (killed) may take to give back what it holds once
# interrupted, before it is killed: as soon after the command's end as a run can unwind.
GRACE_SECONDS = 5
# The runs under way: child pid -> the runner's end of the command's connection, kept so that a
# run killed outright (the kernel's out-of-memory killer) is still reported, by _reap.
_RUNS: dict[int, socket.socket] = {}


def serve(state: Path) -> int:
    """Import, listen on the state folder's socket, fork a child for each run it takes. Returns
    0 once a Python file it imported has changed (the supervisor starts a fresh runner); in a
    child, ends as the command would."""
    # what a command must share with it, taken before the imports (some extend sys.path)
    same = {**interpreter(), "env": import_time_env(dict(os.environ))}
    _preload()
    files = _fingerprint()
    runner = os.getpid()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGCHLD, _reap)
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
            taken = _take(conn, files, same)
            if isinstance(taken, tuple):
                break  # the child: it becomes the command, below
            if isinstance(taken, int):
                continue  # a run forked: its connection is kept until it ends (_reap)
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
    return _child(conn, request, fds)


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


def _take(conn: socket.socket, files: dict, same: dict) -> tuple[dict, list[int]] | str | int:
    """Read a run's request (within REQUEST_SECONDS); refuse it (returns the reason) or fork:
    the child gets (request, the command's three standard streams), the runner its pid."""
    try:
        if peer_uid(conn) != os.getuid():
            return "another user"
        request, fds = receive(conn, max_fds=3, seconds=REQUEST_SECONDS)
    except (OSError, ValueError) as exc:
        return f"no request ({exc})"
    refusal = _refusal(request, fds, files, same)
    if refusal:
        with contextlib.suppress(OSError):
            send(conn, {"refused": refusal})
        for fd in fds:
            os.close(fd)
        return refusal
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # kept before it can end
    child = os.fork()
    if child == 0:
        for other in _RUNS.values():  # the other runs' connections end with their runs only
            other.close()
        _RUNS.clear()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        return request, fds
    _RUNS[child] = conn
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    for fd in fds:
        os.close(fd)
    run = request.get("env", {}).get("PREFECT__FLOW_RUN_ID")
    served = f"{request['module']}" + (f" (flow run {run})" if run else "")
    print(f"warm runner {os.getpid()}: {served} in process {child}", flush=True)  # the log
    return child


def _reap(*_: object) -> None:
    """SIGCHLD: reap the runs that ended; tell the command of one killed by a signal before it
    could say how it ended (a run that ends tells it itself)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = _RUNS.pop(pid, None)
        if conn is None:
            continue
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            with contextlib.suppress(OSError):
                send(conn, {"exit": 128 + sig, "signal": sig, "pid": pid, "killed": True})
        conn.close()


def _refusal(request: dict, fds: list[int], files: dict, same: dict) -> str | None:
    """Why this runner cannot run the request as the command would itself, or None."""
    if len(fds) != 3:
        return "no standard streams"
    if import_time_env(request.get("env", {})) != same["env"]:
        return "other import-time environment variables"
    if any(request.get(key) != value for key, value in same.items() if key != "env"):
        return "another Python environment, checkout, import path or interpreter options"
    if _fingerprint() != files:
        return STALE
    return None


def _child(conn: socket.socket, request: dict, fds: list[int]) -> int:
    """Become the command; start once it says it waits (else it runs the command itself)."""
    try:
        _become(request, fds)
        send(conn, {"pid": os.getpid()})
        conn.settimeout(10)
        if conn.recv(1) != GO:
            os._exit(0)
    except Exception as exc:  # the command runs itself, and shows any error of its own
        with contextlib.suppress(OSError):
            send(conn, {"refused": f"{type(exc).__name__}: {exc}"})
        os._exit(0)
    conn.settimeout(None)
    return _run(conn, request)


def _become(request: dict, fds: list[int]) -> None:
    """Turn this child into the command: its signals, streams, folder, environment, arguments,
    and Prefect's settings and logging read again from that environment."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for sig in FORWARDED:
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        signal.signal(sig, signal.SIG_IGN if sig in request["ignored"] else default)
    os.setsid()  # not in the supervisor's group: stopping the runner does not stop runs
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    encodings = request["encoding"]
    sys.stdin = sys.__stdin__ = _text(0, "r", encodings[0], False)
    sys.stdout = sys.__stdout__ = _text(1, "w", encodings[1], os.isatty(1))
    sys.stderr = sys.__stderr__ = _text(2, "w", encodings[2], True)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)


def _text(fd: int, mode: str, encoding: list[str] | None, line: bool) -> io.TextIOWrapper:
    name, errors = encoding or ("utf-8", "strict")
    binary = open(fd, mode + "b", closefd=False)  # noqa: SIM115 (the stream outlives this call)
    return io.TextIOWrapper(binary, encoding=name, errors=errors, line_buffering=line)


def _run(conn: socket.socket, request: dict) -> int:
    """Run the command's `main` and end as its process would, telling the command last how it
    ended (and this process's peak RSS)."""
    from flows.cli import exit_now

    ending = threading.Event()
    threading.Thread(target=_end_with, args=(conn, ending), daemon=True, name="command").start()
    killed_by = None
    try:
        code = importlib.import_module(request["module"]).main(request["argv"][1:])
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:  # Python's own way: the traceback, then death by SIGINT
        traceback.print_exc()
        code, killed_by = 130, signal.SIGINT
    except BaseException:  # a bug: its traceback, as the command would show it
        traceback.print_exc()
        code = 1

    def last() -> None:
        ending.set()
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command may go as soon as it knows
        send(conn, {"exit": code, "signal": killed_by, "pid": os.getpid(), **_peak()})

    exit_now(code, last=last)
    return code


def _end_with(conn: socket.socket, ending: threading.Event) -> None:
    """The command sends nothing more: the connection ends when it is gone (killed, its
    terminal closed), and so does this run: interrupted, so that it gives back what it holds
    (the training slot), and killed if it has not ended GRACE_SECONDS later. Not once the run is
    telling the command how it ended (the command then goes, closing the connection)."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    if ending.is_set():
        return
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(GRACE_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def _peak() -> dict[str, int]:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return {"peak_rss_kb": int(line.split()[1])}
    return {}
