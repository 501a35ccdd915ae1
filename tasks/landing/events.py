"""The event that announces a landed file, and the three ways to raise it.

    event     sales-model.file.landed
    resource  prefect.resource.id = sales-model.landing.<file name>
              prefect.resource.name = <file name>,
              sales-model.path = <its path in the landing folder, or its s3:// URI>

prefect.yaml's trigger on `retrain-on-new-data` matches it: the first event of a burst starts a
landing check at once, and the events of the next DEBOUNCE_SECONDS are absorbed by that run,
which waits out the window before it reads the folder. Raise it with `make land FILE=...`
(flows/land.py: moves the file in, then emits), with `prefect event emit` from anywhere that
reaches the server, or let the local stack's watcher (scripts/landing_watcher.py) see the file
arrive (on a bucket, its sensor lists the prefix: tasks/landing/sensor.py). The event says when
to look, not that a file is complete: the check decides that (tasks/landing/check.py: the
announced sha256 beside the file, or the settle time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from tasks.common import store

LANDED_EVENT = "sales-model.file.landed"
RESOURCE_PREFIX = "sales-model.landing."
# The trigger's `within` in prefect.yaml (a test holds the two equal): one run per window.
DEBOUNCE_SECONDS = 5.0


def landed_resource(location: str | Path) -> dict[str, str]:
    """The event's resource for a landed file: a path in the landing folder or an object's
    s3:// URI."""
    name = store.name_of(location)
    return {
        "prefect.resource.id": f"{RESOURCE_PREFIX}{name}",
        "prefect.resource.name": name,
        "sales-model.path": str(location),
    }


def emit_landed(locations: Sequence[str | Path]) -> None:
    """Send one landed event per file to the Prefect API in use, and wait until it is sent
    (a short-lived process would otherwise exit with the events still queued)."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    async def send() -> None:
        async with get_events_client() as client:
            for location in locations:
                resource = landed_resource(location)
                await client.emit(Event(event=LANDED_EVENT, resource=resource))

    asyncio.run(send())
