"""The event that announces a landed file, and the three ways to raise it.

    event     sales-model.file.landed
    resource  prefect.resource.id = sales-model.landing.<file name>
              prefect.resource.name = <file name>, sales-model.path = <path in the landing folder>

prefect.yaml's trigger on `retrain-on-new-data` matches it: the first event of a burst starts a
landing check at once, and the events of the next DEBOUNCE_SECONDS are absorbed by that run,
which waits out the window before it reads the folder. Raise it with `make land FILE=...`
(flows/land.py: moves the file in, then emits), with `prefect event emit` from anywhere that
reaches the server, or let the local stack's watcher (scripts/landing_watcher.py) see the file
arrive. The event says when to look, not that a file is complete: the check decides that
(tasks/landing/check.py: the announced sha256 beside the file, or the settle time).
"""

from __future__ import annotations

import asyncio

from tasks.common.store import Location, name_of

LANDED_EVENT = "sales-model.file.landed"
RESOURCE_PREFIX = "sales-model.landing."
# The trigger's `within` in prefect.yaml (a test holds the two equal): one run per window.
DEBOUNCE_SECONDS = 5.0


def landed_resource(path: Location) -> dict[str, str]:
    """The event's resource for a file at the landing location (a path or an s3:// URI)."""
    return {
        "prefect.resource.id": f"{RESOURCE_PREFIX}{name_of(path)}",
        "prefect.resource.name": name_of(path),
        "sales-model.path": str(path),
    }


def emit_landed(paths: list[Location]) -> None:
    """Send one landed event per file to the Prefect API in use, and wait until it is sent
    (a short-lived process would otherwise exit with the events still queued)."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    async def send() -> None:
        async with get_events_client() as client:
            for path in paths:
                await client.emit(Event(event=LANDED_EVENT, resource=landed_resource(path)))

    asyncio.run(send())
