"""The command line's warm local server (flows/local_server.py): started by the first run that
finds no server, reused by the next, stopped when idle and by `make stop`; no test leaves one
running (each test stops what it started, whatever happens)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flows import local_server, warm
from flows.processes import command_line, pid_alive
from tasks.landing.slots import TRAINING_LIMIT
from tests.conftest import HEADER, REPO, sales_rows


@pytest.fixture
def server_env(tmp_path):
    """A command line environment with the local server on, its state and database in
    tmp_path, and no configured server."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {
        "SALES_MODEL_LOCAL_SERVER": "on",
        "SALES_MODEL_RUN_DIR": str(tmp_path / "run"),
        "SALES_MODEL_SERVER_IDLE_MINUTES": "0.5",  # gone soon even if a test fails mid-start
    }
    server = local_server.LocalServer(tmp_path / "run" / "local-server")
    yield env, server
    info = server.info()
    local_server.stop(server)  # the running one, or the one still starting
    if info is not None:
        assert not pid_alive(info["pid"])
    assert not runners(server), "the warm runner outlived its supervisor"


def runners(server):
    """The PIDs of this state's warm runners (flows/warm.py)."""
    found = []
    for entry in Path("/proc").iterdir():
        argv = command_line(int(entry.name)) if entry.name.isdigit() else []
        if b"flows.warm" in argv and str(server.state).encode() in argv:
            found.append(int(entry.name))
    return found


def train(env, data, output):
    return subprocess.run(
        [sys.executable, "-m", "flows.train", "--data", str(data), "--output", str(output)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def flow_run_names(api_url):
    request = urllib.request.Request(
        f"{api_url}/flow_runs/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return sorted(run["name"] for run in json.load(response))


def test_the_first_run_starts_the_server_the_next_reuses_it_and_it_stops_when_idle(
    server_env, write_csv, tmp_path
):
    env, server = server_env
    env["SALES_MODEL_SERVER_IDLE_MINUTES"] = "0.1"
    data = write_csv("\n".join([HEADER, *sales_rows(30)]) + "\n")

    first = train(env, data, tmp_path / "out")
    assert first.returncode == 0, first.stderr
    assert "note: starting a local Prefect server" in first.stderr
    info = server.info()
    assert info is not None
    assert info["api_url"].startswith("http://127.0.0.1:")

    second = train(env, data, tmp_path / "out")
    assert second.returncode == 0, second.stderr
    assert "note:" not in second.stderr  # nothing started
    assert server.info() == info  # the same server, the same supervisor
    lines = (first.stdout + second.stdout).splitlines()
    run_ids = [line.split()[1] for line in lines if line.startswith("run ")]
    names = flow_run_names(info["api_url"])  # both runs, named for what they did
    assert len(names) == len(run_ids) == 2
    assert all(re.fullmatch(rf"train-{re.escape(data.name)}-\d{{8}}T\d{{6}}", n) for n in names)

    deadline = time.monotonic() + 60
    while pid_alive(info["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not pid_alive(info["pid"]), "the server did not stop after its idle minutes"
    assert server.info() is None


def test_make_stop_stops_the_local_server(server_env):
    env, server = server_env
    started = subprocess.run(
        [sys.executable, "-c", "from flows import local_server as s; "
         "x = s.LocalServer.of_environment(); s.warm_up(x); print(s.wait_ready(x))"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    info = server.info()
    assert info is not None
    assert started.stdout.strip() == info["api_url"]

    stopped = subprocess.run(
        [sys.executable, "-m", "scripts.local_prefect", "stop"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped the command line's local Prefect server" in stopped.stdout
    assert not pid_alive(info["pid"])
    assert server.info() is None


def test_a_refused_run_starts_no_server(server_env, tmp_path):
    env, server = server_env
    refused = train(env, "/etc/passwd", tmp_path / "out")
    assert refused.returncode == 2
    (line,) = refused.stderr.splitlines()  # the error, and no note of a server starting
    assert line.startswith("error: parameter data: '/etc/passwd' is outside the allowed folders")
    assert server.info() is None
    assert not server.lock.exists()


def test_a_configured_server_is_used_and_no_local_one_starts(
    server_env, write_csv, tmp_path, prefect_api_url
):
    env, server = server_env
    env["PREFECT_API_URL"] = prefect_api_url
    data = write_csv("\n".join([HEADER, *sales_rows(30)]) + "\n")
    result = train(env, data, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "note:" not in result.stderr
    assert server.info() is None
    assert not server.lock.exists()


def started(server, env, data, output, ignore=None):
    """A command-line run started in the background, once the run's process has registered
    with the server: (the command, the run's process id)."""
    command = [sys.executable, "-m", "flows.train", "--data", str(data), "--output", str(output)]
    before = set(server.clients.iterdir())
    ignoring = None if ignore is None else (lambda: signal.signal(ignore, signal.SIG_IGN))
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stderr=subprocess.PIPE, preexec_fn=ignoring
    )
    wait_for(lambda: set(server.clients.iterdir()) - before, 60, "the run did not start")
    (child,) = {int(path.name) for path in set(server.clients.iterdir()) - before}
    return process, child


@contextlib.contextmanager
def training_slot_taken(api_url):
    """The training slot (tasks/landing/slots.py) held by this test: a run waits for it."""

    def post(path, body):
        request = urllib.request.Request(
            f"{api_url}/v2/concurrency_limits/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    lease = post(
        "increment-with-lease",
        {"names": [TRAINING_LIMIT], "slots": 1, "mode": "concurrency", "lease_duration": 60},
    )
    try:
        yield
    finally:
        post("decrement-with-lease", {"lease_id": lease["lease_id"]})


def stall(server):
    """A connection to the runner that sends two bytes of a request and then nothing."""
    folder = os.open(server.state, os.O_PATH | os.O_DIRECTORY)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(warm.socket_path(folder))
    os.close(folder)
    client.sendall(b"\0\0")
    return client


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_runs_after_the_first_are_forked_from_the_warm_runner_as_the_command_itself(
    server_env, write_csv, tmp_path
):
    env, server = server_env
    data = write_csv("\n".join([HEADER, *sales_rows(30)]) + "\n")
    assert train(env, data, tmp_path / "out").returncode == 0  # starts the server, the runner
    wait_for((server.state / "runner.sock").exists, 90, "no warm runner")
    (runner,) = runners(server)
    report = tmp_path / "report.json"
    env["SALES_MODEL_RUN_REPORT"] = str(report)

    # a client that stalls mid-request is dropped: it does not keep the next run waiting
    stalled = stall(server)
    warm = train(env, data, tmp_path / "out")
    stalled.close()
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout.startswith("run ")  # its summary, through the command's own streams
    taken = json.loads(report.read_text())
    assert taken["warm"]
    assert taken["exit"] == 0
    assert taken["pid"] != runner

    # nothing after the run has told the command it ended (the command goes at once: quick
    # runs show a race)
    for _ in range(10):
        helped = subprocess.run(
            [sys.executable, "-m", "flows.train", "--help"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert helped.returncode == 0
        assert "Traceback" not in helped.stderr

    # the command's environment, not the runner's: this one allows no output there
    refused = train({**env, "SALES_MODEL_OUTPUT_ROOTS": str(tmp_path / "else")}, data, tmp_path)
    assert refused.returncode == 2
    assert "error: parameter output:" in refused.stderr
    assert json.loads(report.read_text())["exit"] == 2

    # signals reach the run, and the command ends as the run did (as Python itself would)
    for sig, ends in ((signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, -signal.SIGTERM)):
        command, child = started(server, env, data, tmp_path / "out")
        command.send_signal(sig)
        assert command.wait(timeout=60) == ends
        assert child != command.pid
        wait_for(lambda child=child: not pid_alive(child), 30, "the run outlived its command")
    # a command killed outright (as a worker kills its flow run's process) takes its run with
    # it: the run, waiting for the training slot this test holds, is interrupted at once
    with training_slot_taken(server.info()["api_url"]):
        command, child = started(server, env, data, tmp_path / "out")
        command.kill()
        assert command.wait(timeout=60) == -signal.SIGKILL
        wait_for(lambda child=child: not pid_alive(child), 15, "the run outlived its command")
        # and a run killed outright (the out-of-memory killer) ends its command the same way
        command, child = started(server, env, data, tmp_path / "out")
        os.kill(child, signal.SIGKILL)
        assert command.wait(timeout=60) == -signal.SIGKILL
        said = command.stderr.read().decode()
        assert f"error: the run's process ({child}) was killed by SIGKILL" in said
    # a signal the command ignores (nohup) the run ignores too
    command, _ = started(server, env, data, tmp_path / "out", ignore=signal.SIGHUP)
    command.send_signal(signal.SIGHUP)
    assert command.wait(timeout=120) == 0

    # changed code: this run is the command's own, and a fresh runner replaces the old one
    module = REPO / "flows" / "score.py"
    times = module.stat()
    report.unlink()
    try:
        os.utime(module, ns=(times.st_atime_ns, times.st_mtime_ns + 1_000_000_000))
        cold = train(env, data, tmp_path / "out")
    finally:
        os.utime(module, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert cold.returncode == 0, cold.stderr
    assert not report.exists()
    wait_for(lambda: runners(server) not in ([], [runner]), 90, "no fresh runner")
