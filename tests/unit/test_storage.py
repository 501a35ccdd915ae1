"""Publishing: atomic files, metadata, temp sweeping, output schemas refusing bad tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow.parquet as pq
import pytest

from schemas.outputs import SCHEMA_VERSION, WeightsTable
from tasks.errors import PublishError
from tasks.storage import atomic_write, new_run, sweep_temp_files, write_table


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


def test_run_ids_sort_by_time_and_are_unique(tmp_path):
    ids = [new_run(tmp_path, {}).run_id for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(len(i) == len(ids[0]) for i in ids)


def test_weights_schema_refuses_non_finite_weights():
    bad = pd.DataFrame(
        {
            "target": ["y"],
            "feature": ["x"],
            "weight": [np.nan],
            "standardized_weight": [1.0],
            "scaler_mean": [0.0],
            "scaler_std": [1.0],
        }
    )
    with pytest.raises(pa.errors.SchemaErrors):
        WeightsTable.validate(bad, lazy=True)
