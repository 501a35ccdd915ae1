"""The output tables on an S3 API server (moto_server, its own process): a run's rows commit on
the bucket with conditional writes, uncommitted parts stay invisible, the champion moves by
compare-and-swap, and pandas, polars and DuckDB read the committed rows back."""

from __future__ import annotations

import threading

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from tasks.outputs import tables


def part(server, uri: str, rows: pa.Table) -> str:
    """Write one Parquet part at an s3:// URI with pyarrow's S3 filesystem."""
    pq.write_table(rows, uri.removeprefix("s3://"), filesystem=server.filesystem())
    return uri


def test_a_run_commits_on_the_bucket_and_every_reader_sees_it_whole(s3_server, s3_bucket):
    root, options = f"{s3_bucket}/model", s3_server.storage_options()
    tables.append(root, "weights", pa.table({"w": [1.0, 2.0]}), "r1", storage_options=options)
    rows = pa.table({"y": [1.0, 2.0, 3.0]})
    first = part(s3_server, tables.part_path(root, "predictions", "r1"), rows.slice(0, 2))
    second = part(s3_server, tables.part_path(root, "predictions", "r1"), rows.slice(2))
    pending = part(s3_server, tables.part_path(root, "predictions", "r2"), rows)
    assert tables.version_of(root, "predictions", storage_options=options) is None
    tables.commit_parts(
        root, "predictions", "r1", [first, second], rows.schema, storage_options=options
    )

    uri = tables.table_uri(root, "predictions")
    by_pandas = DeltaTable(uri, storage_options=options).to_pandas()
    by_polars = pl.read_delta(uri, storage_options=options)
    con = duckdb.connect()
    con.register("predictions", DeltaTable(uri, storage_options=options).to_pyarrow_dataset())
    by_duckdb = con.sql("select run_id, y from predictions order by y").fetchall()
    assert sorted(by_pandas["y"]) == sorted(by_polars["y"].to_list()) == [1.0, 2.0, 3.0]
    assert by_duckdb == [("r1", 1.0), ("r1", 2.0), ("r1", 3.0)]
    assert pending not in tables.committed_files(root, "predictions", storage_options=options)
    assert tables.run_ids(root, "predictions", storage_options=options) == {"r1"}


def test_two_runs_swapping_the_champion_on_the_bucket_from_one_version_one_wins(
    s3_server, s3_bucket
):
    root, options = f"{s3_bucket}/model", s3_server.storage_options()
    row = {"run_id": "r0", "reason": "first", "holdout_mse": {"y": 1.0}}
    assert tables.swap_champion(root, None, row, storage_options=options)
    version, _ = tables.current_champion(root, storage_options=options)
    barrier, won = threading.Barrier(2), {}

    def swap(run_id: str) -> None:
        barrier.wait()
        row = {"run_id": run_id, "reason": "better", "holdout_mse": {"y": 0.5}}
        won[run_id] = tables.swap_champion(root, version, row, storage_options=options)

    threads = [threading.Thread(target=swap, args=(r,)) for r in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won.values()) == [False, True]
    _, champion = tables.current_champion(root, storage_options=options)
    assert champion["run_id"] == next(r for r, ok in won.items() if ok)
    assert champion["previous"] == "r0"
