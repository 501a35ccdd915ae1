"""The bucket sensor's announcement reaches the session's Prefect server as the landed event that
prefect.yaml's trigger matches, naming the object by its s3:// URI."""

from __future__ import annotations

import time

from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

from tasks.common import store
from tasks.landing import sensor
from tasks.landing.events import LANDED_EVENT, emit_landed


def landed_events(uri: str, wait_seconds: float = 30.0) -> list:
    """The landed events the server holds for `uri`, once it holds any (it stores events a
    moment after it receives them), or none after `wait_seconds`."""
    wanted = EventFilter(
        event=EventNameFilter(name=[LANDED_EVENT]),
        resource=EventResourceFilter(labels={"sales-model.path": uri}),
    )
    deadline = time.monotonic() + wait_seconds
    with get_client(sync_client=True) as client:
        while True:
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
