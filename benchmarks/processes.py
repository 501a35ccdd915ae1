"""Whole processes measured from outside (wall seconds, peak RSS from wait4), the checkout they
run in, and the Prefect servers they leave. Standard library only: a child's peak RSS (wait4)
starts from its parent's at fork, so the measuring process stays small.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
HOST = "127.0.0.1"
# Every Prefect process stays offline (the Makefile exports these too).
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
# A run that takes longer than this is stuck: its process group is killed.
TIMEOUT = 1800


def data_file(rows: int) -> Path:
    """The cached input of `rows` rows, generated on first use in a process of its own."""
    path = HERE / ".data" / f"sales_{rows}.csv"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        command = ["-m", "benchmarks.generate", "--rows", str(rows), "--out", str(path)]
        subprocess.run([sys.executable, *command], cwd=REPO, check=True)
    return path


def timed(command: list[str], env: dict[str, str], cwd: Path) -> dict:
    """`python COMMAND` in `cwd` as a fresh process in its own session: wall seconds, peak RSS
    in MB, exit code, and on failure the last lines it wrote. The peak RSS is wait4's (the
    process and the children it waited for), or, when the warm runner ran the command
    (flows/warm.py: `warm` is true), that of the runner's child that did the work; the
    command's own is then `command_rss_mb`."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "run.json"
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, *command],
            cwd=cwd,
            env={**env, "SALES_MODEL_RUN_REPORT": str(report)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        status, usage = _wait(proc)
        seconds = time.perf_counter() - started
        out.seek(0)
        tail = out.read().decode(errors="replace").strip().splitlines()[-5:]
        warm = json.loads(report.read_text()) if report.exists() else None
    code = os.waitstatus_to_exitcode(status)
    result = {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "exit": code}
    result["warm"] = warm is not None
    if warm is not None:
        result["command_rss_mb"] = result["peak_rss_mb"]
        result["peak_rss_mb"] = warm.get("peak_rss_kb", float("nan")) / 1024
    if code != 0:
        result["error"] = " / ".join(tail)
    return result


def wait_for_runner(checkout: Path, timeout: float = 120) -> bool:
    """Wait until the warm runner of `checkout`'s local server listens (flows/warm.py)."""
    listening = checkout / ".run" / "local-server" / "runner.sock"
    deadline = time.monotonic() + timeout
    while not listening.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return listening.exists()


def _wait(proc: subprocess.Popen) -> tuple[int, os.struct_rusage]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, usage
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.02)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load_average() -> str:
    return "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def clean_clone(source: Path, dest: Path) -> Path:
    """A fresh `git clone` of `source`'s HEAD at `dest`: no .prefect/, .run/ or outputs."""
    subprocess.run(["git", "clone", "--quiet", str(source), str(dest)], check=True)
    return dest


def prefect_processes(under: Path) -> list[int]:
    """PIDs of Prefect processes (a server, a worker), and of the command line's local server
    supervisor and warm runner, running in `under` or with their PREFECT_HOME there."""
    found = []
    kinds = (b"prefect", b"flows.local_server", b"flows.warm", b"flows.supervisor", b"flows.engine")
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().split(b"\0")
            ours = any(kind in part for part in command for kind in kinds)
            if not ours or int(entry.name) == os.getpid():
                continue
            cwd = (entry / "cwd").readlink()
            environ = (entry / "environ").read_bytes().split(b"\0")
            homes = [v[len(b"PREFECT_HOME=") :] for v in environ if v.startswith(b"PREFECT_HOME=")]
            if cwd.is_relative_to(under) or any(
                Path(os.fsdecode(home)).is_relative_to(under) for home in homes
            ):
                found.append(int(entry.name))
    return found


def peak_rss_mb(pid: int) -> float:
    """A running process's peak RSS (VmHWM), in MB; NaN when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stop_servers(checkout: Path, env: dict[str, str]) -> list[int]:
    """`make stop` in `checkout`, then end any Prefect process still running there (by its
    process group). Returns the PIDs `make stop` left behind."""
    subprocess.run(
        [sys.executable, "-m", "scripts.local_prefect", "stop"],
        cwd=checkout,
        env=env,
        capture_output=True,
        check=False,
    )
    left = prefect_processes(checkout)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in prefect_processes(checkout):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), sig)
        deadline = time.monotonic() + 15
        while prefect_processes(checkout) and time.monotonic() < deadline:
            time.sleep(0.2)
    return left


@contextlib.contextmanager
def prefect_server(home: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A `prefect server` on 127.0.0.1 with its state under `home`, in its own process group
    (as benchmarks/server.py, without importing Prefect here); yields `env` pointed at it."""
    home.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    url = f"http://{HOST}:{port}/api"
    env = {**env, **OFFLINE_ENV, "PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    command = ["-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)]
    with (home / "server.log").open("ab") as log:
        server = subprocess.Popen(
            [sys.executable, *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_healthy(url, server, timeout=90)
        yield env
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with {server.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2):
            return
        time.sleep(0.3)
    raise RuntimeError(f"prefect server not healthy after {timeout:g} s")
