"""The deployments against a real `prefect server` and a real process worker.

One stack for the module, as `make serve` starts it: a copy of the checkout (so runs write to a
temporary folder) with its prefect.yaml as it is (the fallback poll every 10 minutes never
fires here: every landing below is event-driven), a server on a free 127.0.0.1 port with its
own PREFECT_HOME, the pool, the training limit and the zombie-run automation, `prefect deploy
--all`, a worker and the landing watcher. Each test finds its own flow runs by id (or by what
it landed), so the tests do not depend on their order; the fixture's teardown stops the stack,
checks that nothing is left running and that the server never hit "database is locked".
Measured latencies are printed (pytest -s shows them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from scripts.local_prefect import (
    Stack,
    _descendants,
    free_port,
    pid_alive,
    start,
    start_worker,
    stop,
)
from tasks.landing.ledger import ledger_rows
from tasks.landing.slots import TRAINING_LIMIT
from tasks.outputs import tables
from tests.conftest import HEADER, copy_checkout, sales_rows

COPY = ["flows", "tasks", "schemas", "scripts", "prefect.yaml", "data/sales.csv"]
# The event path, not the 600 s poll, started the run: well under the poll's interval. (How
# fast is measured by make bench, not here: this machine's load decides the seconds.)
LANDING_TO_START_SECONDS = 60.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    checkout = base / "checkout"
    copy_checkout(COPY, checkout)
    local = Stack(repo=checkout, state=base / "run", home=base / "prefect-home")
    said: list[str] = []
    info = start(
        local,
        port=free_port(),
        server_env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"},
        say=said.append,
    )
    # What the watcher had said when `start` returned (a file landed then must not be missed).
    watcher_said = (local.state / "watcher.log").read_text()
    yield local, {**info, "said": said, "watcher_said": watcher_said}
    assert locked_database_errors(local.state / "server.log") == []
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


# Prefect 3.9's server persists a worker's channel heartbeat with a read, then a write; on SQLite
# in WAL mode that write fails at once ("database is locked") when another write came between.
# The worker's next heartbeat, 30 s later, records it: nothing is lost, so only that one is let be.
HARMLESS_LOCK = "Worker channel heartbeat persistence failed"


def locked_database_errors(log: Path) -> list[str]:
    """The server log's records (a timestamped line and what follows it) that hit "database is
    locked", except the harmless one above."""
    records = re.split(r"\n(?=\d\d:\d\d:\d\d\.\d+ \|)", log.read_text())
    return [
        record.splitlines()[0]
        for record in records
        if "database is locked" in record and HARMLESS_LOCK not in record.splitlines()[0]
    ]


def prefect_cli(local: Stack, info: dict, *args: str, timeout: float = 180):
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=local.repo,
        env=local.env(info["api_url"]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_deployment(
    local: Stack,
    info: dict,
    name: str,
    *params: str,
    watch: bool = True,
    job_variables: tuple[str, ...] | list[str] = (),
    run_name: str | None = None,
):
    """`prefect deployment run NAME --param k=v ... [--job-variable k=v ...] [--flow-run-name
    RUN_NAME] [--watch]` -> (result, flow run id)."""
    args = [arg for param in params for arg in ("--param", param)]
    args += ["--flow-run-name", run_name] if run_name else []
    args += [arg for variable in job_variables for arg in ("--job-variable", variable)]
    if watch:
        args += ["--watch", "--watch-timeout", "150"]
    result = prefect_cli(local, info, "deployment", "run", name, *args)
    found = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout)
    return result, found.group(1) if found else None


def run_nightly(local: Stack, info: dict, *params: str, watch: bool = True, **options):
    return run_deployment(local, info, "train-sales-model/nightly", *params, watch=watch, **options)


def flow_run(info: dict, run_id: str) -> dict:
    response = httpx.get(f"{info['api_url']}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    return response.json()


def events_of(info: dict, flow_run_id: str) -> list[dict]:
    """The events of a flow run itself (not of its tasks), oldest first."""
    body = {
        "filter": {"resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}, "order": "ASC"},
        "limit": 50,
    }
    response = httpx.post(f"{info['api_url']}/events/filter", json=body, timeout=10)
    response.raise_for_status()
    return response.json()["events"]


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
    steps = [
        "starting the Prefect server",
        "server up after",
        "creating the training concurrency limit",
        "deploying",
        "starting a process",
        "watching",
    ]
    assert [next(i for i, line in enumerate(said) if line.startswith(s)) for s in steps] == sorted(
        next(i for i, line in enumerate(said) if line.startswith(s)) for s in steps
    )
    assert info["ui_url"] in said[0]


def test_make_serve_returns_once_the_watcher_sees_the_landing_folder(stack):
    local, info = stack
    assert f"watching {local.repo / 'data' / 'landing'}" in info["watcher_said"]


def test_the_ui_reads_this_stack_s_own_api_and_serves_offline(stack):
    # The fixture's port is a free one, never Prefect's default 4200: a UI left on its default
    # API would show another server's runs.
    _, info = stack
    settings = httpx.get(f"{info['ui_url']}/ui-settings", timeout=10)
    assert settings.status_code == 200
    assert settings.json()["api_url"] == info["api_url"]
    page = httpx.get(f"{info['ui_url']}/", timeout=10)
    assert page.status_code == 200
    # Its scripts come from the server itself (no internet here).
    scripts = re.findall(r'src="(/[^"]+\.js)"', page.text)
    assert scripts, page.text[:500]
    assert httpx.get(f"{info['ui_url']}{scripts[0]}", timeout=10).status_code == 200


def test_nightly_deployment_run_completes_and_publishes(stack):
    local, info = stack
    # As the docs spell it: --flow-run-name "train-dataset-$(date -u +%Y%m%dT%H%M%S)"
    name = f"train-dataset-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    runner_log = local.state / "runner.log"
    offset = runner_log.stat().st_size
    result, run_id = run_nightly(local, info, run_name=name)
    assert result.returncode == 0, result.stdout + result.stderr
    content = manifest_of(local, run_id)
    # The worker's flow run started in the warm runner's pre-imported process (flows/engine.py).
    assert (
        f"flows.engine (flow run {run_id}) in process".encode() in runner_log.read_bytes()[offset:]
    )
    # Named from its creation on (every event of it says so), and it keeps that name.
    assert f"Created flow run '{name}'" in result.stdout
    assert flow_run(info, run_id)["name"] == name
    events = [
        (e["event"], e["resource"].get("prefect.resource.name")) for e in events_of(info, run_id)
    ]
    assert events[0] == ("prefect.flow-run.Scheduled", name), events
    assert {said for _, said in events} - {None} == {name}, events
    # `--watch` ends with the run's result, then Prefect's closing lines.
    shown = " ".join(result.stdout.split())  # the console wraps long lines
    outcome = f"run {content['run_id']} completed: 300 rows in, "
    assert outcome in shown, result.stdout[-3000:]
    assert "; holdout MSE units_sold_k=" in shown.split(outcome)[1]
    assert re.search(r"; (promoted to champion|not promoted): ", shown.split(outcome)[1])
    assert shown.index(outcome) < shown.rindex("Finished in state Completed")
    assert shown.rindex("Finished in state Completed") < shown.rindex("finished successfully")
    assert content["status"] == "completed"
    assert content["rows"]["in"] == 300
    for table in ("weights", "metrics", "quarantine", "predictions", "runs"):
        only = [("run_id", "=", content["run_id"])]  # the training run's id, not the flow run's
        rows = tables.read(local.repo / "output", table, filters=only)
        assert rows.num_rows, table


def test_scheduled_runs_are_named_for_what_they_will_do_and_when(stack):
    # The schedules create their runs ahead of time with Prefect's random names; the stack's
    # watcher names them within seconds: what they will do, and when they are due.
    _, info = stack

    def named_and_expected(flow, deployment, action):
        runs = flow_runs(info, flow, deployment, states=["SCHEDULED"])
        return [
            (run["name"], f"{action}-{due:%Y%m%dT%H%M%S}")
            for run in runs
            if (due := datetime.fromisoformat(run["expected_start_time"]).astimezone(UTC))
        ]

    def all_named():
        nightly = named_and_expected("train-sales-model", "nightly", "train-dataset")
        polls = named_and_expected("watch-landing", "retrain-on-new-data", "check-landing")
        pairs = nightly + polls
        return nightly and polls and all(name == want for name, want in pairs) and pairs

    pairs = wait_for(all_named, timeout=30, what="the scheduled runs to be named")
    print(f"\nscheduled runs named: {', '.join(name for name, _ in pairs)}")


def ledger_row(local: Stack, name: str) -> dict | None:
    ledger = local.repo / "data" / "ledger"
    return next((r for r in ledger_rows(ledger) if r["name"] == name), None)


def trained_row(local: Stack, name: str, timeout: float = 120) -> dict:
    """The landed file's ledger row once the training run that used it has ended."""
    return wait_for(
        lambda: (row := ledger_row(local, name)) is not None and row["run_status"] and row,
        timeout=timeout,
        what=f"{name} to be trained on",
    )


def started(info: dict, flow_run_id: str) -> float:
    return datetime.fromisoformat(flow_run(info, flow_run_id)["start_time"]).timestamp()


def make_land(local: Stack, info: dict, *args: str) -> subprocess.CompletedProcess:
    """`make land FILE=...`: flows.land moves the files in, emits their events and waits."""
    return subprocess.run(
        [sys.executable, "-m", "flows.land", *args],
        cwd=local.repo,
        env=local.env(info["api_url"]),
        capture_output=True,
        text=True,
        timeout=600,
    )


def land_by_make_land(local: Stack, info: dict, *sources: Path) -> None:
    """`make land FILE=...`, waiting: it says what became of each file."""
    result = make_land(local, info, *map(str, sources))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "announced to" in result.stdout, result.stdout
    for source in sources:
        (said,) = [line for line in result.stdout.splitlines() if line.startswith(source.name)]
        assert said.startswith(f"{source.name}: accepted ("), said
        assert "; trained by run " in said
        assert ": promoted to champion: " in said or ": not promoted: " in said


def test_make_land_says_a_file_was_rejected_and_why_and_exits_1(stack, tmp_path):
    local, info = stack
    bad = tmp_path / "semicolons.csv"
    bad.write_text("country;price_k\nA;1\n")
    result = make_land(local, info, str(bad))
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith(
        "semicolons.csv: rejected: header does not match the expected columns"
    )


def land_by_prefect_event_emit(local: Stack, info: dict, source: Path) -> None:
    """A remote producer: copy the file in under a hidden name, rename it, `prefect event
    emit` (the watcher sees the rename too: the trigger takes the two events as one burst)."""
    target = local.repo / "data" / "landing" / source.name
    hidden = target.with_name(f".{source.name}.part")
    hidden.write_bytes(source.read_bytes())
    hidden.rename(target)
    resource = json.dumps({"prefect.resource.id": f"sales-model.landing.{source.name}"})
    emitted = prefect_cli(
        local, info, "event", "emit", "sales-model.file.landed", "--resource", resource
    )
    assert emitted.returncode == 0, emitted.stdout + emitted.stderr


def land_by_copying_in(local: Stack, info: dict, source: Path) -> None:
    """A producer that only copies the file in, no announcement: the stack's watcher sees it."""
    (local.repo / "data" / "landing" / source.name).write_bytes(source.read_bytes())


@pytest.mark.parametrize(
    "land_file", [land_by_make_land, land_by_prefect_event_emit, land_by_copying_in]
)
def test_a_landed_file_starts_its_training_run_within_seconds(stack, tmp_path, land_file):
    local, info = stack
    name = f"{land_file.__name__}.csv"
    source = tmp_path / name
    source.write_text("\n".join([HEADER, *sales_rows(40, seed=len(name), start=1000)]) + "\n")
    landed = time.time()
    land_file(local, info, source)
    row = trained_row(local, name)
    assert (row["status"], row["run_status"]) == ("accepted", "completed")
    assert (row["rows"], row["accepted"], row["quarantined"]) == (40, 40, 0)
    manifest = json.loads(
        (local.repo / "output" / "manifests" / f"{row['run_id']}.json").read_text()
    )
    latency = started(info, manifest["flow_run_id"]) - landed
    print(f"\n{land_file.__name__}: training run started {latency:.1f} s after landing")
    assert latency <= LANDING_TO_START_SECONDS
    # It trained on the dataset: the base data plus every file accepted so far.
    accepted = [r for r in ledger_rows(local.repo / "data" / "ledger") if r["status"] == "accepted"]
    used = [r for r in accepted if r["recorded_at"] <= row["recorded_at"]]
    assert manifest["rows"]["in"] == 300 + sum(r["rows"] for r in used)


def test_a_burst_of_files_gives_one_or_two_retrains_each_file_once(stack, tmp_path):
    local, info = stack
    sources = []
    for i in range(50):
        source = tmp_path / f"burst-{i:02d}.csv"
        source.write_text(
            "\n".join([HEADER, *sales_rows(5, seed=100 + i, start=2000 + 5 * i)]) + "\n"
        )
        sources.append(source)
    after = datetime.now(UTC)
    land_by_make_land(local, info, *sources)
    rows = [trained_row(local, s.name, timeout=180) for s in sources]
    assert [r["status"] for r in rows] == ["accepted"] * 50
    names = [r["name"] for r in ledger_rows(local.repo / "data" / "ledger")]
    assert all(names.count(s.name) == 1 for s in sources)  # each recorded once
    retrains = {r["run_id"] for r in rows}
    assert 1 <= len(retrains) <= 2, retrains

    def checks_going():
        going = flow_runs(info, "watch-landing", states=["RUNNING", "PENDING", "SCHEDULED"])
        # Scheduled polls wait for their time; a queued check waits for the running one.
        return [r for r in going if r["state"]["name"] != "Scheduled"]

    wait_for(lambda: not checks_going(), timeout=60, what="the checks the burst started to end")
    checks = flow_runs(info, "watch-landing", started_after=after)
    trainings = flow_runs(info, "train-sales-model", started_after=after)
    print(f"\nburst of 50: {len(checks)} landing checks, {len(trainings)} training runs")
    assert len(trainings) == len(retrains)
    assert all(run["state"]["type"] == "COMPLETED" for run in checks)
    # The trigger's checks and the retrains they started, each named for what it did.
    assert all(re.fullmatch(r"check-landing-\d{8}T\d{6}", run["name"]) for run in checks)
    assert all(re.fullmatch(r"train-dataset-\d{8}T\d{6}", run["name"]) for run in trainings)


def test_a_file_still_being_written_is_taken_whole_once_its_writer_closes_it(stack):
    # A producer that writes the file in place, slowly: the watcher waits for it to be closed
    # (not only quiet), then announces its content beside it, which the check takes at once.
    local, _ = stack
    lines = [HEADER, *sales_rows(40, seed=31, start=4000)]
    target = local.repo / "data" / "landing" / "slow-writer.csv"
    with target.open("w") as out:
        out.write("\n".join(lines[:21]) + "\n")
        out.flush()
        time.sleep(3)  # quiet for longer than the watcher waits, but still open
        assert not target.with_name("slow-writer.csv.sha256").exists()
        assert ledger_row(local, "slow-writer.csv") is None
        out.write("\n".join(lines[21:]) + "\n")
    row = trained_row(local, "slow-writer.csv")
    assert (row["status"], row["rows"], row["accepted"]) == ("accepted", 40, 40)
    announced = target.with_name("slow-writer.csv.sha256").read_text().split()
    assert announced == [hashlib.sha256(target.read_bytes()).hexdigest(), "slow-writer.csv"]


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
    # Run without --flow-run-name: named all the same, for what it did.
    assert re.fullmatch(r"train-dataset-\d{8}T\d{6}", done["name"]), done["name"]


def test_a_check_that_finds_the_previous_one_running_waits_for_it(stack):
    local, info = stack
    # A landing folder and ledger of this test's own: the watcher does not see them, and the
    # dataset of the other tests stays as it is.
    landing = local.repo / "data" / "held-landing"
    landing.mkdir()
    held = landing / "held.csv"
    held.write_text("\n".join([HEADER, *sales_rows(20, seed=7, start=700)]) + "\n")
    old = time.time() - 60
    os.utime(held, (old, old))
    params = ("landing=data/held-landing", "ledger=data/held-ledger")
    # The training slot taken: the check accepts the file, then its training waits for the
    # slot, the check still running and holding its own slot.
    taken = prefect_cli(local, info, "gcl", "update", TRAINING_LIMIT, "--active-slots", "1")
    assert taken.returncode == 0, taken.stdout + taken.stderr
    try:
        run = ("watch-landing/retrain-on-new-data", *params)
        _, blocked = run_deployment(local, info, *run, watch=False)
        wait_for(
            lambda: ledger_rows(local.repo / "data" / "held-ledger"), 90, "the check to record"
        )
        assert state_of(info, blocked)[0] == "RUNNING"
        _, newer = run_deployment(local, info, *run, watch=False)
        wait_for(
            lambda: state_of(info, newer) == ("SCHEDULED", "AwaitingConcurrencySlot"),
            timeout=60,
            what="the next check to wait for the slot",
        )
        assert state_of(info, blocked)[0] == "RUNNING"
    finally:
        prefect_cli(local, info, "gcl", "update", TRAINING_LIMIT, "--active-slots", "0")
    first = wait_terminal(info, blocked, timeout=150)
    assert first["state"]["type"] == "COMPLETED"
    second = wait_terminal(info, newer, timeout=60)
    assert second["state"]["type"] == "COMPLETED"  # queued, not dropped
    assert second["start_time"] >= first["end_time"]


def training_slot_holders(info: dict) -> int:
    response = httpx.get(
        f"{info['api_url']}/v2/concurrency_limits/sales-model-training", timeout=10
    )
    response.raise_for_status()
    return response.json()["active_slots"]


def test_a_landing_retrain_waits_for_a_nightly_run_one_training_at_a_time(stack, tmp_path):
    local, info = stack
    _, nightly = run_nightly(local, info, *ENDLESS, watch=False)
    wait_for(lambda: training_slot_holders(info) == 1, 60, "the nightly run to take the slot")
    after = datetime.now(UTC)
    source = tmp_path / "while-training.csv"
    source.write_text("\n".join([HEADER, *sales_rows(30, seed=21, start=3000)]) + "\n")
    landed = make_land(local, info, "--no-wait", str(source))  # its retrain will wait
    assert landed.returncode == 0, landed.stdout + landed.stderr
    assert not any(line.startswith("while-training.csv:") for line in landed.stdout.splitlines())
    (retrain, *_) = wait_for(
        lambda: flow_runs(info, "train-sales-model", states=["RUNNING"], started_after=after),
        timeout=60,
        what="the landing retrain to start",
    )
    time.sleep(5)  # the retrain runs, but waits for the slot: no run of it is published
    assert training_slot_holders(info) == 1
    assert state_of(info, retrain["id"])[0] == "RUNNING"
    assert ledger_row(local, "while-training.csv")["run_status"] is None
    assert state_of(info, nightly)[0] == "RUNNING"

    cancelled = datetime.now(UTC)
    cancel = prefect_cli(local, info, "flow-run", "cancel", nightly)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert wait_terminal(info, nightly)["state"]["type"] == "CANCELLED"
    row = trained_row(local, "while-training.csv")
    assert row["run_status"] == "completed"
    # The retrain's run began (its id and started_at are made inside the slot) only after
    # the nightly run was stopped and gave the slot back.
    manifest = json.loads(
        (local.repo / "output" / "manifests" / f"{row['run_id']}.json").read_text()
    )
    assert datetime.fromisoformat(manifest["started_at"]) >= cancelled


def test_a_run_past_its_timeout_ends_and_frees_the_training_slot(stack):
    local, info = stack
    timeout = json.dumps({"SALES_MODEL_TRAIN_TIMEOUT_SECONDS": "8"})
    _, slow = run_nightly(local, info, *ENDLESS, watch=False, job_variables=[f"env={timeout}"])
    ended = wait_terminal(info, slow, timeout=90)
    assert ended["state"]["type"] == "FAILED"
    assert (
        "timed out" in ended["state"]["message"].lower()
        or "timeout" in ended["state"]["message"].lower()
    ), ended["state"]["message"]
    assert training_slot_holders(info) == 0
    began = time.monotonic()
    done, _ = run_nightly(local, info)  # the next training does not wait for a lease to expire
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - began < 45


def test_run_left_running_by_a_killed_worker_is_recovered_while_the_stack_runs(stack):
    local, info = stack
    result, long_run = run_nightly(local, info, *ENDLESS, watch=False)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: state_of(info, long_run)[0] == "RUNNING", 60, "the long run to start")
    running = flow_run(info, long_run)
    # The worker and its flow-run process die without reporting: the run stays Running.
    worker = json.loads(local.info_file.read_text())["pids"]["worker"]
    victims = [worker, *_descendants(worker)]
    assert int(running["infrastructure_pid"]) in victims
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(map(pid_alive, victims)), timeout=10, what="the processes to die")
    assert state_of(info, long_run)[0] == "RUNNING"

    # Nobody calls recover: the stack's watcher finds the run's process gone (or the
    # heartbeat automation sees its heartbeats stop) and marks it Crashed.
    killed = time.monotonic()
    wait_for(lambda: state_of(info, long_run)[0] == "CRASHED", 100, "the run to be recovered")
    print(f"\nkilled run marked Crashed {time.monotonic() - killed:.0f} s after the kill")

    # Its slots are free again: the next run completes on a new worker.
    start_worker(local)
    done, _ = run_nightly(local, info)
    assert done.returncode == 0, done.stdout + done.stderr
