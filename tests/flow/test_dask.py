"""Per-file work spread over a Dask cluster (in memory or streamed) gives the same model as the
default task runner."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flows.train import dask_task_runner, train_sales_model
from tests.conftest import HEADER, sales_rows


def test_dask_task_runner_gives_the_same_weights(write_csv, tmp_path):
    files = [
        str(
            write_csv(
                "\n".join([HEADER, *sales_rows(80, seed=i, start=100 * i)]) + "\n", f"{i}.csv"
            )
        )
        for i in range(3)
    ]
    on_threads = train_sales_model(data=files, output=str(tmp_path / "threads"), solver="moments")
    on_dask = train_sales_model.with_options(task_runner=dask_task_runner())(
        data=files, output=str(tmp_path / "dask"), solver="moments"
    )
    # streamed: both passes of every file run on the Dask workers, staged on the shared disk
    streamed = train_sales_model.with_options(task_runner=dask_task_runner())(
        data=files, output=str(tmp_path / "streamed"), solver="moments", stream_above_mb=0
    )
    assert on_dask["rows"] == on_threads["rows"] == {"in": 240, "accepted": 240, "quarantined": 0}
    assert streamed["rows"] == on_threads["rows"]
    assert [f["path"] for f in on_dask["inputs"]] == files
    weights = [
        pd.read_parquet(tmp_path / name / run["outputs"]["weights"])["weight"].to_numpy()
        for name, run in (("threads", on_threads), ("dask", on_dask), ("streamed", streamed))
    ]
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-12)
    np.testing.assert_allclose(weights[2], weights[0], rtol=1e-9)
    predictions = pd.read_parquet(tmp_path / "streamed" / streamed["outputs"]["predictions"])
    assert len(predictions) == 240
