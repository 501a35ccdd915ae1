"""Publishing: atomic files, metadata, temp sweeping, output schemas refusing bad tables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq
import pytest

from schemas.outputs import SCHEMA_VERSION, WeightsTable
from schemas.params import RUN_ID_PATTERN, _check_run_id
from tasks.common.errors import PublishError
from tasks.common.storage import (
    _RunClock,
    atomic_write,
    format_run_id,
    move_parts,
    new_run,
    remove_written,
    run_folder,
    sweep_temp_files,
    table_path,
    write_table,
)


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "t" / "file.parquet"

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(PublishError, match=r"file.parquet: could not write \(disk full\)"):
        atomic_write(target, broken)
    assert list((tmp_path / "t").iterdir()) == []


def test_atomic_write_replaces_the_previous_file(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(target, lambda tmp: tmp.write_text("old"))
    atomic_write(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_tables_carry_run_metadata_and_are_hive_partitioned(tmp_path):
    run = new_run(tmp_path, {"seed": 1, "features": ["x"]})
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    path = write_table(frame, tmp_path, "weights", run, "f" * 64)
    assert path == tmp_path / "weights" / f"run_id={run.run_id}" / "part-0.parquet"
    meta = pq.read_schema(path).metadata
    assert meta[b"run_id"].decode() == run.run_id
    assert meta[b"data_fingerprint"] == b"f" * 64
    assert meta[b"schema_version"].decode() == SCHEMA_VERSION
    assert json.loads(meta[b"parameters"]) == {"features": ["x"], "seed": 1}
    assert pd.read_parquet(path)["a"].tolist() == [1.0, 2.0]


def test_staged_parts_move_in_as_one_run_folder(tmp_path):
    staged = [tmp_path / ".staging" / folder / "predictions" for folder in ("a.1", "b.2")]
    parts = []
    for i, folder in enumerate(staged):
        folder.mkdir(parents=True)
        parts.append(folder / f"part-{i}.parquet")
        pq.write_table(pyarrow.table({"x": [float(i)]}), parts[-1])
    folder = move_parts(parts, tmp_path, "predictions", "r1")
    assert folder == run_folder(tmp_path, "predictions", "r1")
    assert sorted(p.name for p in folder.iterdir()) == ["part-0.parquet", "part-1.parquet"]
    assert sorted(pd.read_parquet(tmp_path / "predictions")["x"]) == [0.0, 1.0]
    with pytest.raises(PublishError, match=r"run_id=r1: could not move the staged files in"):
        move_parts([], tmp_path, "predictions", "r1")  # the run's folder is there already


def test_a_failed_publish_removes_what_it_listed_written_or_not(tmp_path):
    moved = run_folder(tmp_path, "predictions", "r1")
    moved.mkdir(parents=True)
    (moved / "part-0.parquet").write_bytes(b"x")
    unwritten = table_path(tmp_path, "weights", "r1")
    unwritten.parent.mkdir(parents=True)  # as a write that failed leaves it
    remove_written([moved, unwritten])
    assert not [p for p in tmp_path.rglob("*") if p.is_file() or p.name.startswith("run_id=")]


def test_sweep_removes_temp_files_of_dead_writers_only(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    (tmp_path / "t").mkdir()
    stale = tmp_path / "t" / f".part-0.parquet.{dead_pid}.tmp"
    live = tmp_path / "t" / f".part-0.parquet.{os.getpid()}.tmp"
    keep = tmp_path / "t" / "part-0.parquet"
    for p in (stale, live, keep):
        p.write_bytes(b"x")
    assert sweep_temp_files(tmp_path) == [stale]
    assert not stale.exists()
    assert live.exists()
    assert keep.exists()


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
