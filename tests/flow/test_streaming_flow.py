"""The train-sales-model flow streamed (stream_above_mb=0) publishes what the in-memory run
publishes, read back with DuckDB: same accounting, quarantine, predictions, weights, metrics,
profile; a refused run keeps the cross-block duplicates; the staging area is cleaned up."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

import tasks.scan
from flows.train import train_sales_model
from tasks.errors import DataQualityError
from tests.unit.test_streaming import messy_csv


def read(output, table, run_id):
    return duckdb.sql(
        f"select * exclude (run_id) from read_parquet('{output}/{table}/*/*.parquet', "
        f"hive_partitioning=true) where run_id = '{run_id}' order by all"
    ).df()


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of about ten rows, so the streamed run crosses many block boundaries; yields the
    number of blocks read so far."""
    read_blocks = tasks.scan.iter_text_batches
    count = [0]

    def small(path, required, allowed, block_bytes=None):
        for batch in read_blocks(path, required, allowed, 400):
            count[0] += 1
            yield batch

    monkeypatch.setattr(tasks.scan, "iter_text_batches", small)
    return count


@pytest.mark.parametrize("solver", ["moments", "direct"])
def test_streamed_run_publishes_what_the_in_memory_run_does(tmp_path, small_blocks, solver):
    data = messy_csv(tmp_path / "messy.csv", seed=3, rows=400)
    output = tmp_path / "out"
    common = {"data": str(data), "output": str(output), "max_bad_fraction": 0.5}
    common |= {"solver": solver, "dtype": "float64", "seed": 2}
    whole = train_sales_model(**common)
    streamed = train_sales_model(**common, stream_above_mb=0)
    assert small_blocks[0] >= 2 * 30  # both passes read the file in blocks of ~10 rows

    assert streamed["rows"] == whole["rows"]
    assert streamed["inputs"] == whole["inputs"]
    ids = whole["run_id"], streamed["run_id"]
    for table in ("quarantine", "predictions", "profile"):
        a, b = (read(output, table, run_id) for run_id in ids)
        pd.testing.assert_frame_equal(b, a, check_dtype=False, rtol=1e-9)
    a, b = (read(output, "weights", run_id) for run_id in ids)
    np.testing.assert_allclose(b["weight"], a["weight"], rtol=1e-9)
    a, b = (read(output, "metrics", run_id) for run_id in ids)
    np.testing.assert_allclose(b["mse"], a["mse"], rtol=1e-9)
    np.testing.assert_allclose(b["optimum_mse"], a["optimum_mse"], rtol=1e-9)
    assert (b["rows"] == a["rows"]).all()
    assert (output / "reports" / streamed["run_id"] / "holdout.png").exists()
    assert not (output / ".staging").exists()  # staged files moved in, staging removed
    assert streamed["promotion"]["holdout_rows"] == whole["promotion"]["holdout_rows"]


def test_refused_streamed_run_keeps_every_quarantine_record(tmp_path, small_blocks):
    data = messy_csv(tmp_path / "messy.csv", seed=4, rows=300)
    output = tmp_path / "out"
    manifests = []
    for stream in (1e9, 0):
        before = set((output / "manifests").glob("*.json"))
        with pytest.raises(DataQualityError, match=r"above max_bad_fraction=0\.05"):
            train_sales_model(
                data=str(data), output=str(output), max_bad_fraction=0.05, stream_above_mb=stream
            )
        (new,) = set((output / "manifests").glob("*.json")) - before
        manifests.append(new.stem)
    whole, streamed = (read(output, "quarantine", run_id) for run_id in manifests)
    assert "duplicate key" in set(streamed["reason"])
    pd.testing.assert_frame_equal(streamed, whole, check_dtype=False)
    assert not (output / "predictions").exists()


def test_streamed_folder_of_files_matches_the_in_memory_run(tmp_path, small_blocks):
    """Two files: each is a task per pass; an id may repeat across files, not within one."""
    folder = tmp_path / "in"
    folder.mkdir()
    messy_csv(folder / "a.csv", seed=5, rows=200)
    messy_csv(folder / "b.csv", seed=6, rows=200)  # the same ids C0..C199 again: allowed
    output = tmp_path / "out"
    common = {"data": str(folder), "output": str(output), "max_bad_fraction": 0.5}
    common |= {"dtype": "float64"}  # float32 training rounds differently on the two paths
    whole = train_sales_model(**common)
    streamed = train_sales_model(**common, stream_above_mb=0)
    assert streamed["rows"] == whole["rows"]
    assert [f["path"] for f in streamed["inputs"]] == [f["path"] for f in whole["inputs"]]
    predictions = output / "predictions" / f"run_id={streamed['run_id']}"
    assert sorted(p.name for p in predictions.iterdir()) == ["part-0.parquet", "part-1.parquet"]
    for table in ("quarantine", "predictions"):
        a, b = (read(output, table, m["run_id"]) for m in (whole, streamed))
        pd.testing.assert_frame_equal(b, a, check_dtype=False, rtol=1e-9)
