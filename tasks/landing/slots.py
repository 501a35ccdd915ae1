"""One training at a time, whoever started it: every train-sales-model run (nightly, a landing
retrain, the command line, a manual deployment run) holds the one slot of a Prefect global
concurrency limit while it reads, trains and publishes; a second run waits for it.

The limit is created on first use on any server (and by `make serve`). The slot is a lease the
run renews while it holds it: a run that crashes or is killed without releasing it frees it
when the lease runs out (LEASE_SECONDS); a run that ends, fails or times out releases it at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

TRAINING_LIMIT = "sales-model-training"
LEASE_SECONDS = 60.0  # the least the server accepts


def ensure_training_limit() -> None:
    """Create the training limit (one slot) on the current Prefect server if it is missing."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(TRAINING_LIMIT)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=TRAINING_LIMIT, limit=1)
                )


@contextlib.contextmanager
def training_slot() -> Iterator[None]:
    """Hold the training slot for the duration of the block (waiting for it if taken)."""
    from prefect.concurrency.sync import concurrency

    ensure_training_limit()
    with concurrency(TRAINING_LIMIT, occupy=1, lease_duration=LEASE_SECONDS, strict=True):
        yield
