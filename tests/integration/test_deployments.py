"""The deployments against a real `prefect server` and a real process worker.

One stack for the module: a copy of the checkout (so runs write to a temporary folder), its
prefect.yaml with the landing poll shortened from 60 s to 4 s, a server on a free 127.0.0.1 port
with its own PREFECT_HOME, the pool, `prefect deploy --all`, and a worker. The tests run in file
order and the last one stops everything.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
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
from tasks.ledger import ledger_rows
from tests.conftest import HEADER, REPO, sales_rows

POLL_SECONDS = 4
COPY = ["flows", "tasks", "schemas", "scripts", "prefect.yaml", "data/sales.csv"]


def copy_checkout(target: Path) -> None:
    for name in COPY:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / "data" / "landing").mkdir()
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
    copy_checkout(checkout)
    local = Stack(repo=checkout, state=base / "run", home=base / "prefect-home")
    info = start(
        local,
        port=free_port(),
        server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"},
        worker_env={"PREFECT_WORKER_QUERY_SECONDS": "1"},
    )
    yield local, info
    stop(local)


def prefect_cli(local: Stack, info: dict, *args: str, timeout: float = 180):
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=local.repo,
        env=local.env(info["api_url"]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_nightly(local: Stack, info: dict, *params: str, watch: bool = True):
    """`prefect deployment run train-sales-model/nightly --param k=v ... [--watch]`."""
    args = [arg for param in params for arg in ("--param", param)]
    if watch:
        args += ["--watch", "--watch-timeout", "150"]
    return prefect_cli(local, info, "deployment", "run", "train-sales-model/nightly", *args)


def flow_runs(info: dict, deployment: str, states: list[str] | None = None) -> list[dict]:
    flow_name, name = deployment.split("/")
    body: dict = {
        "deployments": {"name": {"any_": [name]}},
        "flows": {"name": {"any_": [flow_name]}},
        "limit": 200,
    }
    if states:
        body["flow_runs"] = {"state": {"type": {"any_": states}}}
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


def manifests(local: Stack) -> list[Path]:
    return sorted((local.repo / "output" / "manifests").glob("*.json"))


def land(local: Stack, name: str, content: str) -> Path:
    """Land a file the way a well-behaved producer does: write a dot-name, then rename."""
    landing = local.repo / "data" / "landing"
    tmp = landing / f".{name}.part"
    tmp.write_text(content)
    return tmp.rename(landing / name)


def test_nightly_deployment_run_completes_and_publishes(stack):
    local, info = stack
    result = run_nightly(local, info)
    assert result.returncode == 0, result.stdout + result.stderr
    (manifest,) = manifests(local)
    content = json.loads(manifest.read_text())
    assert content["status"] == "completed"
    assert content["rows"]["in"] == 300
    champion = json.loads((local.repo / "output" / "champion.json").read_text())
    assert champion["run_id"] == content["run_id"]
    for table in ("predictions", "weights", "metrics", "quarantine"):
        assert (local.repo / "output" / content["outputs"][table]).is_file()


def test_landed_file_is_recorded_and_leads_to_a_training_run(stack):
    local, _ = stack
    before = len(manifests(local))
    land(local, "2026-11-27.csv", "\n".join([HEADER, *sales_rows(40, seed=9)]) + "\n")
    ledger = local.repo / "data" / "ledger"

    def trained():
        rows = ledger_rows(ledger) if (ledger / "ledger.sqlite").exists() else []
        return [r for r in rows if r["name"] == "2026-11-27.csv" and r["run_status"]]

    (row,) = wait_for(trained, timeout=90, what="the landed file to be trained on")
    assert row["status"] == "accepted"
    assert (row["rows"], row["accepted"], row["quarantined"]) == (40, 40, 0)
    assert row["run_status"] == "completed"
    assert len(manifests(local)) == before + 1
    manifest = json.loads(
        (local.repo / "output" / "manifests" / f"{row['run_id']}.json").read_text()
    )
    assert manifest["rows"]["in"] == 340  # the base data plus the landed file
    assert manifest["promotion"]["reason"]


def test_same_content_under_another_name_is_not_trained_again(stack):
    local, info = stack
    before = len(manifests(local))
    land(local, "copy-of-2026-11-27.csv", "\n".join([HEADER, *sales_rows(40, seed=9)]) + "\n")
    ledger = local.repo / "data" / "ledger"

    def duplicate():
        return [r for r in ledger_rows(ledger) if r["name"] == "copy-of-2026-11-27.csv"]

    (row,) = wait_for(duplicate, timeout=60, what="the duplicate to be recorded")
    assert row["status"] == "duplicate"
    assert row["reason"] == "same content as 2026-11-27.csv"
    # Let the poll that saw it finish: it must not have started a training run.
    wait_for(
        lambda: not flow_runs(info, "watch-landing/retrain-on-new-data", ["RUNNING", "PENDING"]),
        timeout=60,
        what="the poll to finish",
    )
    assert len(manifests(local)) == before
    assert not flow_runs(info, "train-sales-model/nightly", ["RUNNING", "PENDING"])


def test_bad_parameter_is_refused_and_creates_no_run(stack):
    local, info = stack
    before = len(flow_runs(info, "train-sales-model/nightly"))
    result = run_nightly(local, info, "max_epochs=-5", watch=False)
    assert result.returncode != 0
    assert "max_epochs" in result.stdout + result.stderr
    assert "-5 is less than the minimum of 1" in " ".join((result.stdout + result.stderr).split())
    assert len(flow_runs(info, "train-sales-model/nightly")) == before


def test_path_parameter_outside_the_roots_is_refused_and_reads_nothing(stack):
    local, info = stack
    result = run_nightly(local, info, "data=/etc/passwd")
    assert result.returncode != 0
    (failed,) = flow_runs(info, "train-sales-model/nightly", ["FAILED"])
    assert (
        "parameter data: '/etc/passwd' is outside the allowed folders"
        in (failed["state"]["message"])
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


def test_run_left_running_by_a_killed_worker_is_recovered(stack):
    local, info = stack
    # A run that trains for a long time (tiny fixed step, no tolerance to reach).
    result = run_nightly(local, info, "lr=1e-7", "max_epochs=100000000", "tol=1e-15", watch=False)
    assert result.returncode == 0, result.stderr
    (running,) = wait_for(
        lambda: flow_runs(info, "train-sales-model/nightly", ["RUNNING"]),
        timeout=60,
        what="the long run to start",
    )
    # The worker and its flow-run process die without reporting: the run stays Running and
    # holds the deployment's only concurrency slot.
    worker = json.loads(local.info_file.read_text())["pids"]["worker"]
    victims = [worker, *_descendants(worker)]
    assert int(running["infrastructure_pid"]) in victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(map(pid_alive, victims)), timeout=10, what="the processes to die")
    assert flow_runs(info, "train-sales-model/nightly", ["RUNNING"])

    # Other runs the worker had going (a landing poll) are orphaned too.
    assert running["id"] in recover(info["api_url"])
    assert flow_runs(info, "train-sales-model/nightly", ["CRASHED"])[0]["id"] == running["id"]

    # The slot is free again: the next run completes on a new worker.
    start_worker(local, {"PREFECT_WORKER_QUERY_SECONDS": "1"})
    done = run_nightly(local, info)
    assert done.returncode == 0, done.stdout + done.stderr


def test_stop_leaves_no_process_behind(stack):
    local, info = stack
    pids = json.loads(local.info_file.read_text())["pids"]
    tree = [p for pid in pids.values() for p in [pid, *_descendants(pid)]]
    assert tree
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
