"""The same byte ranges spread over a Dask cluster: one file cut into ranges, each pass-1 task on
a worker, gives what the default runner gives (one range, its blocks on threads). On a bucket
the workers share no disk: the run's working files are staged in the bucket, and gone when it
ends."""

from __future__ import annotations

import logging

import duckdb
import numpy as np
import pandas as pd

from flows.train import dask_task_runner, train_sales_model
from tasks.common import store
from tasks.outputs import tables
from tests.conftest import messy_csv

TABLES = ("quarantine", "predictions", "profile")


def read(output, table, run_id):
    return duckdb.sql(
        f"select * exclude (run_id) from read_parquet('{output}/{table}/*/*.parquet', "
        f"hive_partitioning=true) where run_id = '{run_id}' order by all"
    ).df()


def test_a_file_cut_into_byte_ranges_on_dask_equals_the_local_run(tmp_path):
    data = messy_csv(tmp_path / "messy.csv", seed=8, rows=3000)
    output = tmp_path / "out"
    common = {"data": str(data), "output": str(output), "max_bad_fraction": 0.5}
    common |= {"solver": "moments", "use_cache": False}  # both runs parse: the cluster too
    local = train_sales_model(**common)
    spread = train_sales_model.with_options(task_runner=dask_task_runner())(
        **common,
        split_mb=0.01,  # ranges of about 10 kB: 9 tasks on the cluster
    )
    assert spread["rows"] == local["rows"]
    assert spread["inputs"] == local["inputs"]
    predictions = output / spread["outputs"]["predictions"]
    assert len(list(predictions.glob("*.parquet"))) >= 5  # one part per range
    ids = local["run_id"], spread["run_id"]
    for table in TABLES:
        a, b = (read(output, table, run_id) for run_id in ids)
        pd.testing.assert_frame_equal(b, a, check_dtype=False, rtol=1e-12)
    a, b = (read(output, "weights", run_id) for run_id in ids)
    np.testing.assert_allclose(b["weight"], a["weight"], rtol=1e-12)


class Lines(logging.Handler):
    """The flow runs' log lines, as their text."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def read_back(server, root, table, run_id):
    """One run's rows of `table`, read from the bucket, in the order `read` gives."""
    rows = tables.read(  # noqa: F841 (DuckDB reads the local by its name)
        root, table, filters=[("run_id", "=", run_id)], storage_options=server.storage_options()
    )
    return duckdb.sql("select * exclude (run_id) from rows order by all").df()


def test_a_cluster_on_a_bucket_stages_there_and_equals_the_thread_run(
    s3_env, s3_server, s3_bucket, tmp_path, monkeypatch
):
    data, root = f"{s3_bucket}/in/messy.csv", f"{s3_bucket}/model"
    store.write(data, messy_csv(tmp_path / "messy.csv", seed=8, rows=3000).read_bytes())
    # Before the cluster starts: its worker processes take this environment.
    monkeypatch.setenv("SALES_MODEL_DATA_ROOTS", f"{s3_bucket}/in")
    monkeypatch.setenv("SALES_MODEL_OUTPUT_ROOTS", root)
    # The local folder of a run on a bucket is a file here: no process of the cluster run can
    # stage anything on its disk.
    blocked = tmp_path / "no-local-staging"
    blocked.write_text("")
    monkeypatch.setenv("SALES_MODEL_CACHE_DIR", str(blocked))
    common = {"data": data, "output": root, "max_bad_fraction": 0.5}
    common |= {"solver": "moments", "use_cache": False}
    logged = Lines()
    logging.getLogger("prefect.flow_runs").addHandler(logged)
    try:
        spread = train_sales_model.with_options(task_runner=dask_task_runner())(
            **common, split_mb=0.01
        )
    finally:
        logging.getLogger("prefect.flow_runs").removeHandler(logged)
    assert len(store.list_files(f"{root}/{spread['outputs']['predictions']}")) >= 5
    staged = f"{root}/.staging/{spread['run_id']}"
    assert f"working files staged under {staged}" in logged.lines
    assert store.list_files(f"{root}/.staging") == []

    monkeypatch.setenv("SALES_MODEL_CACHE_DIR", str(tmp_path / "worker"))
    local = train_sales_model(**common)
    assert spread["rows"] == local["rows"]
    assert spread["inputs"] == local["inputs"]
    ids = local["run_id"], spread["run_id"]
    for table in TABLES:
        a, b = (read_back(s3_server, root, table, run_id) for run_id in ids)
        pd.testing.assert_frame_equal(b, a, check_dtype=False, rtol=1e-12)
    a, b = (read_back(s3_server, root, "weights", run_id) for run_id in ids)
    np.testing.assert_allclose(b["weight"], a["weight"], rtol=1e-12)
    assert len(b) > 0
    assert store.list_files(f"{root}/.staging") == []
