"""Storage plumbing: atomic files, run ids, the runs' staging folders (on a disk, and on a bucket
for a cluster) removed when the run ends and swept by age, output schemas refusing bad
tables."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from schemas.outputs import WeightsTable
from schemas.params import RUN_ID_PATTERN, RUN_TIMEOUT_SECONDS, _check_run_id
from tasks.common import store
from tasks.common.storage import (
    STAGING,
    STAGING_MAX_AGE,
    _RunClock,
    format_run_id,
    new_run,
    staging_area,
    sweep_staging,
    sweep_store_staging,
)


def age(path, seconds):
    """Set a folder's last change `seconds` back."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_staging_folders_are_swept_by_age_alone(tmp_path):
    # No PID: a run on another host shares the store, not the process table.
    staging = tmp_path / STAGING
    old, young = staging / "20261201T000000.000Z-0dead0ff", staging / "20261201T010000.000Z-a1"
    for folder in (old, young):
        (folder / "spill").mkdir(parents=True)
        (folder / "spill" / "0.arrow").write_bytes(b"x")
    age(old, RUN_TIMEOUT_SECONDS + 3600 + 60)
    age(young, RUN_TIMEOUT_SECONDS)  # as long as a run may take: it may still be running
    sweep_staging(staging)
    assert sorted(p.name for p in staging.iterdir()) == [young.name]


def test_a_runs_staging_area_is_removed_when_it_ends_and_sweeps_dead_ones(tmp_path):
    dead = tmp_path / STAGING / "20261201T000000.000Z-0dead0ff"
    dead.mkdir(parents=True)
    age(dead, RUN_TIMEOUT_SECONDS + 3600 + 60)
    with staging_area(tmp_path, "20261201T020000.000Z-b2") as folder:
        assert not dead.exists()
        (folder / "kept.arrow").write_bytes(b"x")
    assert not (tmp_path / STAGING).exists()
    with pytest.raises(RuntimeError), staging_area(tmp_path, "20261201T020000.000Z-b3") as folder:
        raise RuntimeError("the run failed")
    assert not folder.exists()


def test_a_cluster_runs_staging_on_a_bucket_is_there_and_removed_when_it_ends(
    s3_env, s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.setenv("SALES_MODEL_CACHE_DIR", str(tmp_path / "worker"))
    root = f"{s3_bucket}/model"
    with staging_area(root, "20261201T020000.000Z-b2", shared=True) as folder:
        assert folder == f"{root}/{STAGING}/20261201T020000.000Z-b2"
        store.write(store.join(folder, "00000-0000", "spill-0000.arrow"), b"x")
    assert store.list_files(s3_bucket) == []

    def failing_run() -> None:
        with staging_area(root, "20261201T020000.000Z-b3", shared=True) as folder:
            store.write(store.join(folder, "duplicates-00000.parquet"), b"x")
            raise RuntimeError("the run failed")

    with pytest.raises(RuntimeError):
        failing_run()
    assert store.list_files(s3_bucket) == []
    # A run whose tasks share this machine stages on its disk, as always.
    with staging_area(root, "20261201T020000.000Z-b4") as folder:
        assert Path(folder).parent == tmp_path / "worker" / "staging"
    assert not (tmp_path / "worker" / "staging").exists()


def test_staging_on_a_bucket_is_swept_by_age_alone(s3_env, s3_bucket):
    # No PID: a run on another host shares the bucket, not the process table.
    root = f"{s3_bucket}/model"
    staging = f"{root}/{STAGING}"
    left = [f"{staging}/20261201T000000.000Z-0dead0ff/{name}" for name in ("a/keys.bin", "b")]
    table = f"{root}/predictions/run_id=20261201T000000.000Z-0dead0ff/part-0.parquet"
    for location in (*left, table):
        store.write(location, b"x")
    written = max(entry.modified for entry in store.list_files(staging))
    assert sweep_store_staging(staging) == 0  # just written: a run may be writing it
    # As long as a run may take (and an hour more): it may still be running.
    assert sweep_store_staging(staging, now=written + timedelta(seconds=STAGING_MAX_AGE - 60)) == 0
    assert [entry.location for entry in store.list_files(staging)] == left
    assert sweep_store_staging(staging, now=written + timedelta(seconds=STAGING_MAX_AGE + 60)) == 2
    assert [entry.location for entry in store.list_files(root)] == [table]


def test_run_ids_sort_in_the_order_they_were_made_and_say_when(tmp_path):
    runs = [new_run(tmp_path, {}) for _ in range(200)]  # many within one millisecond
    ids = [run.run_id for run in runs]
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(RUN_ID_PATTERN, i) for i in ids)
    assert _check_run_id(ids[0]) == ids[0]
    for run in (runs[0], runs[-1]):
        stamp = datetime.strptime(run.run_id.split("-")[0], "%Y%m%dT%H%M%S.%fZ")
        assert stamp.replace(tzinfo=UTC) == datetime.fromisoformat(run.started_at)
    assert abs(datetime.fromisoformat(runs[0].started_at) - datetime.now(UTC)) < timedelta(
        seconds=60
    )


def test_run_ids_keep_sorting_when_the_clock_steps_back():
    # A clock of its own: the process's clock has seen the real time of earlier tests.
    clock = _RunClock()
    later = datetime(2026, 12, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    first = format_run_id(clock.next(later), "a")
    earlier = format_run_id(clock.next(later - timedelta(seconds=5)), "b")
    assert (first, earlier) == ("20261201T120000.500Z-a", "20261201T120000.501Z-b")


@pytest.mark.parametrize("column", ["weight", "standardized_weight"])
@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_weights_schema_refuses_infinite_weights(column, value):
    # inf, not NaN: a NaN also fails the not-null check, which would hide a broken finite check
    good = {
        "target": ["y"],
        "feature": ["x"],
        "weight": [2.0],
        "standardized_weight": [1.0],
        "scaler_mean": [0.0],
        "scaler_std": [1.0],
        "ls_weight": [2.0],
        **{name: [0.1] for name in ("std_error", "t_stat", "p_value", "ci_low", "ci_high")},
        "robust_std_error": [0.1],
        "confidence": [0.95],
        "dof": [10],
        "residual_variance": [1.0],
        "covariance": [[0.01]],
        "note": pd.Series([None], dtype=object),
    }
    WeightsTable.validate(pd.DataFrame(good), lazy=True)
    with pytest.raises(pa.errors.SchemaErrors) as err:
        WeightsTable.validate(pd.DataFrame({**good, column: [value]}), lazy=True)
    assert set(err.value.failure_cases["check"]) == {"weights must be finite"}
