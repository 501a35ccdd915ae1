"""Landing on a bucket through the deployments: `make serve LANDING=s3://...` against the suite's
S3 server (a stack of its own: a copy of the checkout, a server, the pool, the deployments, a
worker and the bucket sensor). An object put under the landing prefix is announced by the
sensor, checked by the `retrain-on-new-data` deployment (pointed at the prefix) and trained on.
The latency from the put to the training run's start is printed (pytest -s shows it)."""

from __future__ import annotations

import json
import time

import pytest

from scripts.local_prefect import Stack, free_port, start, stop
from tasks.common import store
from tests.conftest import HEADER, copy_checkout, sales_rows
from tests.integration.test_deployments import (
    COPY,
    LANDING_TO_START_SECONDS,
    started,
    trained_row,
)


@pytest.fixture(scope="module")
def bucket_stack(tmp_path_factory, s3_server):
    bucket = s3_server.create_bucket(f"landing-{time.monotonic_ns() % 10**9}")
    base = tmp_path_factory.mktemp("bucket-stack")
    copy_checkout(COPY, base / "checkout")
    local = Stack(repo=base / "checkout", state=base / "run", home=base / "prefect-home")
    landing = f"{bucket}/landing"
    with pytest.MonkeyPatch.context() as patch:  # the stack's processes inherit this environment
        for key, value in s3_server.environment().items():
            patch.setenv(key, value)
        patch.setenv("SALES_MODEL_DATA_ROOTS", f"data:{bucket}")
        store.forget_clients()
        info = start(local, port=free_port(), landing=landing)
        try:
            yield local, info, landing
        finally:
            stop(local)
            store.forget_clients()


def test_an_object_put_under_the_landing_prefix_starts_its_training_run(bucket_stack, tmp_path):
    local, info, landing = bucket_stack
    name = "bucket-landed.csv"
    landed = time.time()
    store.write(f"{landing}/{name}", ("\n".join([HEADER, *sales_rows(40, seed=5)]) + "\n").encode())
    row = trained_row(local, name)
    assert (row["status"], row["run_status"]) == ("accepted", "completed")
    assert (row["rows"], row["accepted"]) == (40, 40)
    manifest = json.loads(
        (local.repo / "output" / "manifests" / f"{row['run_id']}.json").read_text()
    )
    assert manifest["rows"]["in"] == 300 + 40
    latency = started(info, manifest["flow_run_id"]) - landed
    print(f"\nbucket landing: training run started {latency:.1f} s after the put")
    assert latency <= LANDING_TO_START_SECONDS
    watcher = (local.state / "watcher.log").read_text()
    assert f"announced {name}" in watcher
