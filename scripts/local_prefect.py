"""A local Prefect stack: server on 127.0.0.1, the process work pool, the training concurrency
limit and the zombie-run automation (scripts/server_setup.py), every deployment in
prefect.yaml, a warm runner (flows/warm.py: the worker's flow runs start in its pre-imported
process, flows/engine.py), a process worker, and the landing watcher
(scripts/landing_watcher.py: inotify on a landing folder, or a sensor listing an s3:// landing
prefix). Used by `make serve` / `make stop` and by the integration tests.

    python -m scripts.local_prefect start [--port 4200] [--landing s3://bucket/landing]
    python -m scripts.local_prefect stop
    python -m scripts.local_prefect recover               # crash runs whose process is gone

State (SQLite database, logs, PIDs) lives under .prefect/ and .run/ in the checkout, both ignored
by git.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flows import local_server, warm
from flows.local_server import OFFLINE_ENV
from flows.processes import pid_alive
from flows.server import STACK_INFO
from schemas.params import DEFAULT_LANDING as LANDING
from scripts.landing_watcher import READY
from scripts.server_setup import LOG_STREAM_ENV, recover
from tasks.common import store
from tasks.common.errors import PipelineError

# The deployment a landed file starts (prefect.yaml).
LANDING_DEPLOYMENT = "retrain-on-new-data"

REPO = Path(__file__).resolve().parents[1]
POOL = "sales-pool"
HOST = "127.0.0.1"
# The worker looks for runs to start every second (Prefect's default is 10 s: a landed file's
# check would wait for it; a query a second is nothing to a local server), and its flow runs
# send a heartbeat every 30 s, which the zombie automation watches.
WORKER_SETTINGS = {
    "MALLOC_ARENA_MAX": "2",  # its flow runs' memory, as the command line caps it (memory.py)
    "PREFECT_WORKER_QUERY_SECONDS": "1",
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}


@dataclass(frozen=True)
class Stack:
    """Where a local stack keeps its state, and the checkout its deployments run from."""

    repo: Path = REPO
    state: Path = STACK_INFO.parent
    home: Path = REPO / ".prefect"

    @property
    def info_file(self) -> Path:
        return self.state / "stack.json"

    def env(self, api_url: str | None = None, extra: dict[str, str] | None = None) -> dict:
        env = {
            **os.environ,
            **OFFLINE_ENV,
            "PREFECT_HOME": str(self.home),
            "SALES_MODEL_HOME": str(self.repo),
            "PREFECT_SERVER_API_HOST": HOST,
            **(extra or {}),
        }
        if api_url:
            env["PREFECT_API_URL"] = api_url
        return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def _spawn(cmd: list[str], log: Path, env: dict, cwd: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        # Own session: `stop` ends the process and everything it started, by process group.
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def wait_healthy(api_url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}; see {log}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{api_url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"prefect server not healthy after {timeout:g} s; see {log}")


def _run(cmd: list[str], env: dict, cwd: Path) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _quiet(message: str) -> None:
    pass


def start(
    stack: Stack = Stack(),
    port: int = 4200,
    server_env: dict[str, str] | None = None,
    worker_env: dict[str, str] | None = None,
    say: Callable[[str], None] = _quiet,
    landing: str = LANDING,
) -> dict:
    """Start server, create the pool, recover orphaned runs, deploy, start a worker and the
    watcher of `landing` (a folder of the checkout, or an s3:// prefix); `say` reports each step
    as it starts."""
    if stack.info_file.exists():
        pids = json.loads(stack.info_file.read_text())["pids"].values()
        if any(map(pid_alive, pids)):
            raise RuntimeError(f"a stack is already running ({stack.info_file}); run stop first")
        stack.info_file.unlink()  # left by a stack that died without `stop`
    try:
        store.check_reachable(landing)  # a wrong bucket or endpoint: said before anything starts
    except PipelineError as exc:
        raise RuntimeError(str(exc)) from None
    stack.state.mkdir(parents=True, exist_ok=True)
    stack.home.mkdir(parents=True, exist_ok=True)
    # the command line's own server keeps the same database: one server at a time on it
    cli_server = local_server.LocalServer(stack.state / "local-server")
    if runs := local_server.live_clients(cli_server):
        raise RuntimeError(
            f"command-line run(s) {', '.join(map(str, runs))} use the local Prefect server on "
            "this checkout's database; start the stack once they finish"
        )
    local_server.stop(cli_server)
    api_url = f"http://{HOST}:{port}/api"
    info = {"api_url": api_url, "ui_url": f"http://{HOST}:{port}", "pids": {}}
    server_log = stack.state / "server.log"
    began = time.monotonic()
    say(f"starting the Prefect server on {info['ui_url']} (log: {server_log}) ...")
    # The UI asks the API it was told (PREFECT_UI_API_URL), by default 127.0.0.1:4200: on any
    # other port it would show another server's runs.
    ui_env = {"PREFECT_UI_API_URL": api_url, **LOG_STREAM_ENV, **(server_env or {})}
    server = _spawn(
        _prefect("server", "start", "--host", HOST, "--port", str(port)),
        server_log,
        stack.env(extra=ui_env),
        stack.repo,
    )
    info["pids"]["server"] = server.pid
    _write_info(stack, info)
    try:
        wait_healthy(api_url, server, server_log, timeout=90)
        say(f"server up after {time.monotonic() - began:.0f} s; creating work pool {POOL} ...")
        env = stack.env(api_url)
        template = _write_pool_template(stack)
        create = ("work-pool", "create", POOL, "--type", "process", "--overwrite")
        _run(_prefect(*create, "--base-job-template", str(template)), env, stack.repo)
        crashed = recover(api_url)
        if crashed:
            say(f"marked {len(crashed)} orphaned run(s) of an earlier stack Crashed")
        say("creating the training concurrency limit and the zombie-run automation ...")
        _run([sys.executable, "-m", "scripts.server_setup"], env, stack.repo)
        say(f"deploying {stack.repo / 'prefect.yaml'} ...")
        _run(_prefect("deploy", "--all", "--no-prompt"), env, stack.repo)
        if landing != LANDING:  # the retrain checks where the watcher looks
            say(f"pointing {LANDING_DEPLOYMENT} at {landing} ...")
            deploy = _prefect("deploy", "-n", LANDING_DEPLOYMENT, "--no-prompt")
            _run([*deploy, "--params", json.dumps({"landing": landing})], env, stack.repo)
        say(f"starting a process worker on {POOL} (log: {stack.state / 'worker.log'}) ...")
        start_runner(stack, worker_env)
        start_worker(stack, worker_env)
        watched = landing if store.is_remote(landing) else stack.repo / landing
        say(f"watching {watched} (log: {stack.state / 'watcher.log'}) ...")
        start_watcher(stack, landing)
    except BaseException:
        stop(stack)
        raise
    return json.loads(stack.info_file.read_text())


def _write_pool_template(stack: Stack) -> Path:
    """The pool's base job template: Prefect's, but its flow runs start in the checkout with
    `python -m flows.engine` (Prefect's engine, in the warm runner when it takes the run)."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    variables = template["variables"]["properties"]
    variables["command"]["default"] = shlex.join([sys.executable, "-m", "flows.engine"])
    variables["working_dir"]["default"] = str(stack.repo)  # the runner's import path: same
    path = stack.state / "pool-template.json"
    path.write_text(json.dumps(template, indent=2) + "\n")
    return path


def _worker_env(stack: Stack, info: dict, worker_env: dict[str, str] | None) -> dict:
    """The worker's environment, and so its flow runs' (and the warm runner's: it serves only
    runs whose import-time variables are its own)."""
    env = stack.env(info["api_url"], {**WORKER_SETTINGS, **(worker_env or {})})
    if warm.wanted(env):
        env["SALES_MODEL_WARM_RUNNER_DIR"] = str(_runner_dir(stack))
    return env


def _runner_dir(stack: Stack) -> Path:
    return stack.state / "warm-runner"


def start_runner(stack: Stack, worker_env: dict[str, str] | None = None) -> int | None:
    """Start the warm runner of the worker's flow runs, kept up by its supervisor
    (flows/supervisor.py); returns the supervisor's PID (None: SALES_MODEL_WARM_RUNNER=off)."""
    info = json.loads(stack.info_file.read_text())
    env = _worker_env(stack, info, worker_env)
    if not warm.wanted(env):
        return None
    folder = _runner_dir(stack)
    folder.mkdir(mode=0o700, exist_ok=True)
    folder.chmod(0o700)  # a runner is trusted only in a folder nobody else may write
    command = [sys.executable, "-m", "flows.supervisor", "--state", str(folder)]
    runner = _spawn(command, stack.state / "runner.log", env, stack.repo)
    info["pids"]["runner"] = runner.pid
    _write_info(stack, info)
    return runner.pid


def start_worker(stack: Stack, worker_env: dict[str, str] | None = None) -> int:
    """Start a process worker on the pool (again, e.g. after it was killed); returns its PID."""
    info = json.loads(stack.info_file.read_text())
    worker = _spawn(
        _prefect("worker", "start", "--pool", POOL, "--type", "process"),
        stack.state / "worker.log",
        _worker_env(stack, info, worker_env),
        stack.repo,
    )
    info["pids"]["worker"] = worker.pid
    _write_info(stack, info)
    return worker.pid


def start_watcher(stack: Stack, landing: str = LANDING) -> int:
    """Start the landing watcher of the stack's checkout (a sensor when `landing` is an s3://
    prefix); returns its PID."""
    info = json.loads(stack.info_file.read_text())
    if not store.is_remote(landing):
        (stack.repo / landing).mkdir(parents=True, exist_ok=True)
    command = ["-m", "scripts.landing_watcher", "--landing", landing, "--api-url", info["api_url"]]
    log = stack.state / "watcher.log"
    offset = log.stat().st_size if log.exists() else 0
    watcher = _spawn([sys.executable, *command], log, stack.env(info["api_url"]), stack.repo)
    info["pids"]["watcher"] = watcher.pid
    _write_info(stack, info)
    wait_for_line(log, offset, READY, watcher, timeout=90)
    return watcher.pid


def wait_for_line(
    log: Path, offset: float, prefix: str, proc: subprocess.Popen, timeout: float
) -> None:
    """Wait until `proc` has written a line starting with `prefix` to `log` past `offset`: the
    watcher's word that it sees every change (a file landed before that would be missed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with log.open("rb") as text:
            text.seek(offset)
            if any(line.startswith(prefix.encode()) for line in text):
                return
        if proc.poll() is not None:
            raise RuntimeError(f"the landing watcher exited with {proc.returncode}; see {log}")
        time.sleep(0.2)
    raise RuntimeError(f"the landing watcher not ready after {timeout:g} s; see {log}")


def _write_info(stack: Stack, info: dict) -> None:
    stack.info_file.write_text(json.dumps(info, indent=2) + "\n")


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (the worker starts flow runs in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(stat.read_text().rsplit(") ", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal_groups(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), sig)


def stop(stack: Stack = Stack(), timeout: float = 20.0) -> list[int]:
    """Stop the worker with the flow runs it started, the warm runner with those it forked,
    then the server: SIGTERM to each process group (flow runs end Crashed, not Running), SIGKILL
    after `timeout`. Returns the PIDs."""
    if not stack.info_file.exists():
        return []
    pids = json.loads(stack.info_file.read_text())["pids"]
    stopped = []
    for name in ("watcher", "worker", "runner", "server"):
        pid = pids.get(name)
        if pid is not None and pid_alive(pid):
            stopped += _end_group([pid, *_descendants(pid)], timeout)
    # A run forked by a runner that exited since (its code changed) is nobody's child any more:
    # found by the runner's folder in the environment it inherited.
    if orphans := _with_env(f"SALES_MODEL_WARM_RUNNER_DIR={_runner_dir(stack)}"):
        stopped += _end_group(orphans, timeout)
    stack.info_file.unlink(missing_ok=True)
    return stopped


def _end_group(group: list[int], timeout: float) -> list[int]:
    """SIGTERM to each process's group, SIGKILL to those left after `timeout`; returns them."""
    _signal_groups(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in group) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_groups([p for p in group if pid_alive(p)], signal.SIGKILL)
    return group


def _with_env(entry: str) -> list[int]:
    """The live processes of this user started with `entry` (NAME=value) in their environment."""
    found, wanted = [], entry.encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(environ.parent.name)
            if pid != os.getpid() and wanted in environ.read_bytes().split(b"\0"):
                found.append(pid)
    return [pid for pid in found if pid_alive(pid)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.local_prefect")
    sub = parser.add_subparsers(dest="command", required=True)
    start_cmd = sub.add_parser("start", help="server, pool, deployments, worker")
    start_cmd.add_argument("--port", type=int, default=4200)
    start_cmd.add_argument(
        "--landing", default=LANDING, help=f"folder or s3://bucket/prefix (default {LANDING})"
    )
    sub.add_parser("stop", help="stop worker and server by PID")
    recover_cmd = sub.add_parser("recover", help="crash runs whose process is gone")
    recover_cmd.add_argument("--api-url", default=os.environ.get("PREFECT_API_URL"))
    args = parser.parse_args(argv)
    if args.command == "start":
        try:
            info = start(
                port=args.port,
                say=lambda message: print(message, flush=True),
                landing=args.landing,
            )
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"Prefect UI: {info['ui_url']}")
        print(f"export PREFECT_API_URL={info['api_url']}")
        print(f"logs: {Stack().state}/server.log, {Stack().state}/worker.log")
    elif args.command == "stop":
        stopped = stop()
        print(f"stopped {len(stopped)} process group(s)" if stopped else "no stack running")
        if local_server.stop(local_server.LocalServer.of_environment()):
            print("stopped the command line's local Prefect server")
    else:
        if not args.api_url:
            print("error: set PREFECT_API_URL or pass --api-url", file=sys.stderr)
            return 2
        crashed = recover(args.api_url)
        print(f"marked {len(crashed)} orphaned run(s) Crashed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
