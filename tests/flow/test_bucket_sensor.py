"""The bucket sensor's announcement reaches the session's Prefect server as the landed event that
prefect.yaml's trigger matches, naming the object by its s3:// URI."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from tasks.common import store
from tasks.landing import sensor
from tasks.landing.events import LANDED_EVENT, emit_landed
from tests.conftest import REPO


def landed_events(uri: str, wait_seconds: float = 30.0) -> list:
    """The landed events the server holds for `uri`, once it holds any (it stores events a
    moment after it receives them), or none after `wait_seconds`."""
    deadline = time.monotonic() + wait_seconds
    with get_client(sync_client=True) as client:
        while True:
            # Made anew each time: a filter ends, by default, at the time it was made.
            wanted = EventFilter(
                event=EventNameFilter(name=[LANDED_EVENT]),
                resource=EventResourceFilter(labels={"sales-model.path": uri}),
            )
            events = client.read_events(filter=wanted, limit=50).events
            if events or time.monotonic() > deadline:
                return events
            time.sleep(0.5)


def test_an_object_landed_in_a_bucket_is_announced_to_the_server_by_its_uri(s3_env, s3_bucket):
    landing = f"{s3_bucket}/landing"
    uri = f"{landing}/2026-12-01.csv"
    store.write(uri, b"country,avg_income_k,price_k,tax_k,units_sold_k\n")
    fresh, _ = sensor.poll(landing, sensor.cursor_location(f"{s3_bucket}/ledger"), emit_landed)
    assert fresh == [uri]
    [event] = landed_events(uri)
    assert event.resource.id == "sales-model.landing.2026-12-01.csv"
    assert event.resource["sales-model.path"] == uri


def start_sensor(landing: str, ledger: str, env: dict, api_url: str, log) -> subprocess.Popen:
    """The stack's watcher on a bucket, as `make serve LANDING=...` starts it."""
    command = [sys.executable, "-m", "scripts.landing_watcher", "--landing", landing]
    command += ["--ledger", ledger, "--api-url", api_url, "--interval", "0.5"]
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **env, "PREFECT_API_URL": api_url},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_sensor(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=30)


def test_the_sensor_process_announces_what_lands_and_after_a_restart_only_what_is_new(
    s3_env, s3_bucket, prefect_api_url, tmp_path
):
    landing, ledger, log = f"{s3_bucket}/landing", f"{s3_bucket}/ledger", tmp_path / "sensor.log"
    first = start_sensor(landing, ledger, s3_env, prefect_api_url, log)
    try:
        store.write(f"{landing}/b.csv", b"x\n")
        assert landed_events(f"{landing}/b.csv"), log.read_text()
    finally:
        stop_sensor(first)
    store.write(f"{landing}/a.csv", b"x\n")  # while no sensor runs, and before b.csv by key
    second = start_sensor(landing, ledger, s3_env, prefect_api_url, log)
    try:
        assert landed_events(f"{landing}/a.csv")
    finally:
        stop_sensor(second)
    announced = [line for line in log.read_text().splitlines() if line.startswith("announced")]
    assert announced == ["announced b.csv", "announced a.csv"]
