"""The deployments against a real `prefect server` and a real process worker.

One stack for the module: a copy of the checkout (so runs write to a temporary folder), its
prefect.yaml with the landing poll shortened from 60 s to 4 s, a server on a free 127.0.0.1 port
with its own PREFECT_HOME, the pool, `prefect deploy --all`, and a worker. Each test finds its
own flow runs by id (or by what it landed), so the tests do not depend on their order; the
fixture's teardown stops the stack and checks that nothing is left running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from scripts.local_prefect import (
    Stack,
    _descendants,
    free_port,
    pid_alive,
    recover,
    start,
    start_worker,
    stop,
)
from tasks.ledger import LEDGER_DB, ledger_rows, open_ledger
from tests.conftest import HEADER, copy_checkout, sales_rows

POLL_SECONDS = 4
COPY = ["flows", "tasks", "schemas", "scripts", "prefect.yaml", "data/sales.csv"]


def stack_checkout(target: Path) -> None:
    """The checkout's copy the stack deploys from, its landing poll shortened."""
    copy_checkout(COPY, target)
    config = yaml.safe_load((target / "prefect.yaml").read_text())
    for deployment in config["deployments"]:
        if deployment["name"] == "retrain-on-new-data":
            deployment["schedules"] = [{"interval": POLL_SECONDS}]
            deployment["parameters"] = {"settle_seconds": 1}
    (target / "prefect.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    checkout = base / "checkout"
    stack_checkout(checkout)
    local = Stack(repo=checkout, state=base / "run", home=base / "prefect-home")
    said: list[str] = []
    info = start(
        local,
        port=free_port(),
        server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"},
        worker_env={"PREFECT_WORKER_QUERY_SECONDS": "1"},
        say=said.append,
    )
    yield local, {**info, "said": said}
    # Stopping leaves no process behind: not the server, the worker, nor a flow run.
    pids = json.loads(local.info_file.read_text())["pids"]
    tree = [p for pid in pids.values() for p in [pid, *_descendants(pid)]]
    stopped = stop(local)
    assert set(pids.values()) <= set(stopped)
    assert not [p for p in tree if pid_alive(p)]
    marker = f"PREFECT_HOME={local.home}".encode()
    leftovers = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0") and pid_alive(int(environ.parent.name)):
                leftovers.append(environ.parent.name)
        except OSError:
            continue
    assert leftovers == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{info['api_url']}/health", timeout=2)


def prefect_cli(local: Stack, info: dict, *args: str, timeout: float = 180):
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=local.repo,
        env=local.env(info["api_url"]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_deployment(local: Stack, info: dict, name: str, *params: str, watch: bool = True):
    """`prefect deployment run NAME --param k=v ... [--watch]` -> (result, flow run id)."""
    args = [arg for param in params for arg in ("--param", param)]
    if watch:
        args += ["--watch", "--watch-timeout", "150"]
    result = prefect_cli(local, info, "deployment", "run", name, *args)
    found = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout)
    return result, found.group(1) if found else None


def run_nightly(local: Stack, info: dict, *params: str, watch: bool = True):
    return run_deployment(local, info, "train-sales-model/nightly", *params, watch=watch)


def flow_run(info: dict, run_id: str) -> dict:
    response = httpx.get(f"{info['api_url']}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    return response.json()


def flow_runs(
    info: dict,
    flow_name: str,
    deployment: str | None = None,
    states: list[str] | None = None,
    started_after: datetime | None = None,
) -> list[dict]:
    """Flow runs of a flow (of one deployment, or any: subflows have none), optionally by state
    type and start time."""
    body: dict = {"flows": {"name": {"any_": [flow_name]}}, "limit": 200}
    if deployment:
        body["deployments"] = {"name": {"any_": [deployment]}}
    runs: dict = {}
    if states:
        runs["state"] = {"type": {"any_": states}}
    if started_after:
        runs["start_time"] = {"after_": started_after.isoformat(), "is_null_": False}
    if runs:
        body["flow_runs"] = runs
    response = httpx.post(f"{info['api_url']}/flow_runs/filter", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def state_of(info: dict, run_id: str) -> tuple[str, str]:
    state = flow_run(info, run_id)["state"]
    return state["type"], state["name"]


def wait_terminal(info: dict, run_id: str, timeout: float = 150) -> dict:
    terminal = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
    return wait_for(
        lambda: (run := flow_run(info, run_id))["state"]["type"] in terminal and run,
        timeout=timeout,
        what=f"flow run {run_id} to finish",
    )


def manifest_of(local: Stack, flow_run_id: str) -> dict:
    for path in (local.repo / "output" / "manifests").glob("*.json"):
        manifest = json.loads(path.read_text())
        if manifest["flow_run_id"] == flow_run_id:
            return manifest
    raise AssertionError(f"no manifest written by flow run {flow_run_id}")


def land(local: Stack, name: str, content: str) -> Path:
    """Land a file the way a well-behaved producer does: write a dot-name, then rename."""
    landing = local.repo / "data" / "landing"
    tmp = landing / f".{name}.part"
    tmp.write_text(content)
    return tmp.rename(landing / name)


# A nightly run that trains until it is stopped: tiny fixed step, no tolerance to reach.
ENDLESS = ("lr=1e-7", "max_epochs=100000000", "tol=1e-15")


def test_make_serve_says_what_it_is_doing(stack):
    _, info = stack
    said = info["said"]
    steps = ["starting the Prefect server", "server up after", "deploying", "starting a process"]
    assert [next(i for i, line in enumerate(said) if line.startswith(s)) for s in steps] == sorted(
        next(i for i, line in enumerate(said) if line.startswith(s)) for s in steps
    )
    assert info["ui_url"] in said[0]


def test_nightly_deployment_run_completes_and_publishes(stack):
    local, info = stack
    result, run_id = run_nightly(local, info)
    assert result.returncode == 0, result.stdout + result.stderr
    content = manifest_of(local, run_id)
    assert content["status"] == "completed"
    assert content["rows"]["in"] == 300
    for table in ("weights", "metrics", "quarantine"):
        assert (local.repo / "output" / content["outputs"][table]).is_file()
    assert list((local.repo / "output" / content["outputs"]["predictions"]).glob("part-*.parquet"))


def test_landed_file_is_recorded_and_leads_to_a_training_run(stack):
    local, _ = stack
    land(local, "2026-11-27.csv", "\n".join([HEADER, *sales_rows(40, seed=9)]) + "\n")
    ledger = local.repo / "data" / "ledger"

    def trained():
        rows = ledger_rows(ledger) if (ledger / LEDGER_DB).exists() else []
        return [r for r in rows if r["name"] == "2026-11-27.csv" and r["run_status"]]

    (row,) = wait_for(trained, timeout=90, what="the landed file to be trained on")
    assert row["status"] == "accepted"
    assert (row["rows"], row["accepted"], row["quarantined"]) == (40, 40, 0)
    assert row["run_status"] == "completed"
    manifest = json.loads(
        (local.repo / "output" / "manifests" / f"{row['run_id']}.json").read_text()
    )
    assert manifest["rows"]["in"] == 340  # the base data plus the landed file
    assert manifest["promotion"]["reason"]


def test_same_content_under_another_name_is_not_trained_again(stack):
    local, info = stack
    content = "\n".join([HEADER, *sales_rows(25, seed=13, start=700)]) + "\n"
    land(local, "first-name.csv", content)
    ledger = local.repo / "data" / "ledger"

    def recorded(name):
        return lambda: [r for r in ledger_rows(ledger) if r["name"] == name and r["status"]]

    wait_for(recorded("first-name.csv"), timeout=90, what="the first file to be recorded")
    wait_for(
        lambda: all(r["run_status"] for r in ledger_rows(ledger) if r["status"] == "accepted"),
        timeout=120,
        what="its training run to finish",
    )
    after = datetime.now(UTC)
    land(local, "second-name.csv", content)
    (row,) = wait_for(recorded("second-name.csv"), timeout=60, what="the duplicate")
    assert (row["status"], row["reason"]) == ("duplicate", "same content as first-name.csv")
    # Let the poll that saw it finish: it must not have started a training run, as a subflow
    # (which has no deployment) or otherwise.
    wait_for(
        lambda: not flow_runs(info, "watch-landing", states=["RUNNING", "PENDING"]),
        timeout=60,
        what="the poll to finish",
    )
    assert flow_runs(info, "train-sales-model", started_after=after) == []


def test_bad_parameter_is_refused_and_creates_no_run(stack):
    local, info = stack
    before = {r["id"] for r in flow_runs(info, "train-sales-model", "nightly")}
    result, run_id = run_nightly(local, info, "max_epochs=-5", watch=False)
    assert result.returncode != 0
    assert run_id is None
    assert "max_epochs" in result.stdout + result.stderr
    assert "-5 is less than the minimum of 1" in " ".join((result.stdout + result.stderr).split())
    assert {r["id"] for r in flow_runs(info, "train-sales-model", "nightly")} == before


def test_path_parameter_outside_the_roots_is_refused_and_reads_nothing(stack):
    local, info = stack
    result, run_id = run_nightly(local, info, "data=/etc/passwd")
    assert result.returncode != 0
    run = flow_run(info, run_id)
    assert run["state"]["type"] == "FAILED"
    assert (
        "parameter data: '/etc/passwd' is outside the allowed folders" in (run["state"]["message"])
    )
    assert not list((local.repo / "output").rglob("*passwd*"))


def test_server_listens_on_loopback_only(stack):
    _, info = stack
    port = int(info["api_url"].rsplit(":", 1)[1].split("/")[0])
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local_address, state = line.split()[1], line.split()[3]
            address, hex_port = local_address.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                listening.append(address)
    assert listening == ["0100007F"]  # 127.0.0.1, and nothing on 0.0.0.0 or ::


def test_a_second_nightly_run_waits_for_the_first_enqueue(stack):
    local, info = stack
    result, first = run_nightly(local, info, *ENDLESS, watch=False)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: state_of(info, first)[0] == "RUNNING", 60, "the first run to start")
    _, second = run_nightly(local, info, watch=False)
    wait_for(
        lambda: state_of(info, second) == ("SCHEDULED", "AwaitingConcurrencySlot"),
        timeout=60,
        what="the second run to wait for the slot",
    )
    time.sleep(5)  # several worker polls: the second run still waits, the first still runs
    assert state_of(info, second) == ("SCHEDULED", "AwaitingConcurrencySlot")
    assert state_of(info, first)[0] == "RUNNING"

    cancel = prefect_cli(local, info, "flow-run", "cancel", first)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    ended = wait_terminal(info, first)
    assert ended["state"]["type"] == "CANCELLED"
    done = wait_terminal(info, second)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["start_time"] >= ended["end_time"]


def test_a_poll_that_finds_the_previous_one_running_is_cancelled(stack):
    local, info = stack
    ledger = local.repo / "data" / "ledger"
    with open_ledger(ledger):
        pass
    # Hold the ledger's write lock: the next poll blocks on it, running, holding its slot.
    holder = sqlite3.connect(ledger / LEDGER_DB, timeout=1)
    holder.execute("begin exclusive")
    try:
        held = datetime.now(UTC)
        (blocked, *_) = wait_for(
            lambda: flow_runs(
                info, "watch-landing", "retrain-on-new-data", ["RUNNING"], started_after=held
            ),
            timeout=60,
            what="a poll to start and block on the ledger",
        )
        result, newer = run_deployment(
            local, info, "watch-landing/retrain-on-new-data", watch=False
        )
        assert result.returncode == 0, result.stderr
        assert wait_terminal(info, newer, timeout=60)["state"]["type"] == "CANCELLED"
        assert state_of(info, blocked["id"])[0] == "RUNNING"
    finally:
        holder.rollback()
        holder.close()
    assert wait_terminal(info, blocked["id"], timeout=60)["state"]["type"] == "COMPLETED"


def test_run_left_running_by_a_killed_worker_is_recovered(stack):
    local, info = stack
    result, long_run = run_nightly(local, info, *ENDLESS, watch=False)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: state_of(info, long_run)[0] == "RUNNING", 60, "the long run to start")
    running = flow_run(info, long_run)
    # The worker and its flow-run process die without reporting: the run stays Running and
    # holds the deployment's only concurrency slot.
    worker = json.loads(local.info_file.read_text())["pids"]["worker"]
    victims = [worker, *_descendants(worker)]
    assert int(running["infrastructure_pid"]) in victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(map(pid_alive, victims)), timeout=10, what="the processes to die")
    assert state_of(info, long_run)[0] == "RUNNING"

    # Other runs the worker had going (a landing poll) are orphaned too.
    assert long_run in recover(info["api_url"])
    assert state_of(info, long_run)[0] == "CRASHED"

    # The slot is free again: the next run completes on a new worker.
    start_worker(local, {"PREFECT_WORKER_QUERY_SECONDS": "1"})
    done, _ = run_nightly(local, info)
    assert done.returncode == 0, done.stdout + done.stderr
