"""The same byte ranges spread over a Dask cluster: one file cut into ranges, each pass-1 task on
a worker, gives what the default runner gives (one range, its blocks on threads)."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd

from flows.train import dask_task_runner, train_sales_model
from tests.conftest import messy_csv


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
    for table in ("quarantine", "predictions", "profile"):
        a, b = (read(output, table, run_id) for run_id in ids)
        pd.testing.assert_frame_equal(b, a, check_dtype=False, rtol=1e-12)
    a, b = (read(output, "weights", run_id) for run_id in ids)
    np.testing.assert_allclose(b["weight"], a["weight"], rtol=1e-12)
