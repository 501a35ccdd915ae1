"""Outputs on a bucket (the S3 API server of tests/s3.py): a training from
`s3://bucket/in/sales.csv` into `s3://bucket/model` commits every table there, read back by
pandas, polars and DuckDB with exact row accounting; its manifest and report are objects of the
bucket and hold no secret; its scratch stays on the worker's disk and is gone when it ends; a
second run on the same worker reads pass 1 from the cache; scoring writes its table there; an
output in a missing bucket is one error line naming it; retention prunes on the bucket as on a
disk."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl
import pytest
from deltalake import DeltaTable

from flows.outputs import main as outputs_main
from flows.score import main as score_main
from flows.train import main as train_main
from flows.train import train_sales_model
from schemas.outputs import RUNS
from scripts.local_prefect import HOST, free_port
from tasks.common import store
from tasks.outputs import tables
from tasks.outputs.maintenance import vacuum_outputs
from tests.conftest import HEADER, REPO, messy_csv, sales_rows

TABLES = ("predictions", "weights", "metrics", "profile", "quarantine", RUNS, "champions")
# Moto takes any key; this one is easy to find in whatever the run writes.
SECRET = "s3cr3t-Zq8wX1-never-written"


@pytest.fixture
def root(s3_env, s3_bucket, tmp_path, monkeypatch):
    """`s3://<fresh bucket>/model`, the only output root allowed; the worker's local folder
    (SALES_MODEL_CACHE_DIR) under tmp_path."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    store.forget_clients()
    uri = f"{s3_bucket}/model"
    monkeypatch.setenv("SALES_MODEL_OUTPUT_ROOTS", uri)
    monkeypatch.setenv("SALES_MODEL_CACHE_DIR", str(tmp_path / "worker"))
    return uri


def read_back(server, root, table):
    """`table`'s rows read by pandas, polars and DuckDB (as docs/analysts.md does), checked to be
    the same rows; the pandas frame."""
    uri, options = tables.table_uri(root, table), server.storage_options()
    by_pandas = DeltaTable(uri, storage_options=options).to_pandas()
    by_polars = pl.read_delta(uri, storage_options=options)
    con = duckdb.connect()
    con.register(table, DeltaTable(uri, storage_options=options).to_pyarrow_dataset())
    by_duckdb = con.sql(f"SELECT * FROM {table}").df()
    columns = sorted(by_pandas.columns)
    assert sorted(by_polars.columns) == sorted(by_duckdb.columns) == columns, table
    assert len(by_pandas) == len(by_polars) == len(by_duckdb), table
    key = [c for c in ("source_file", "source_line", "target", "split", "feature") if c in columns]
    if key:
        ordered = by_pandas.sort_values(key, ignore_index=True)
        polars_rows = by_polars.to_pandas().sort_values(key, ignore_index=True)
        assert ordered["run_id"].tolist() == polars_rows["run_id"].tolist(), table
    return by_pandas


def objects(root):
    """Every object under `root`: location -> bytes."""
    return {entry.location: store.read(entry.location) for entry in store.list_files(root)}


def scratch_left(worker: Path) -> list[Path]:
    """Files left in the worker's staging folder, and any local folder a URI became by mistake."""
    staged = list((worker / "staging").rglob("*")) if (worker / "staging").exists() else []
    return staged + [p for p in (REPO / "s3:", Path.cwd() / "s3:") if p.exists()]


def test_a_training_from_and_into_a_bucket_commits_every_table_there_and_reruns_from_the_cache(
    root, s3_server, s3_bucket, tmp_path, capsys, monkeypatch
):
    data = f"{s3_bucket}/in/sales.csv"
    store.write(data, messy_csv(tmp_path / "sales.csv", seed=1).read_bytes())
    monkeypatch.setenv("SALES_MODEL_DATA_ROOTS", f"{s3_bucket}/in")
    first = train_sales_model(data=data, output=root, max_bad_fraction=0.5)
    run_id = first["run_id"]

    read = {table: read_back(s3_server, root, table) for table in TABLES}
    predictions, quarantine = read["predictions"], read["quarantine"]
    quarantined = quarantine[["source_file", "source_line"]].drop_duplicates()
    assert len(predictions) + len(quarantined) == first["rows"]["in"] == 300
    assert set(predictions["source_file"]) == set(quarantined["source_file"]) == {data}
    assert set(predictions["source_line"]).isdisjoint(quarantined["source_line"])
    assert len(quarantined) == first["rows"]["quarantined"] > 0
    assert read[RUNS]["run_id"].tolist() == [run_id]
    assert read["champions"]["run_id"].tolist() == [run_id]
    for table in TABLES:
        assert set(read[table]["run_id"]) == {run_id}, table

    written = objects(root)
    for name in (f"manifests/{run_id}.json", f"reports/{run_id}/report.md", "champion.json"):
        assert f"{root}/{name}" in written, name
    assert f"{root}/reports/{run_id}/history.png" in written
    assert [key for key, data in written.items() if SECRET.encode() in data] == []
    assert not [key for key in written if "staging" in key or "/.cache/" in key]
    worker = tmp_path / "worker"
    assert scratch_left(worker) == []
    assert list((worker / "pass1" / "entries").iterdir())  # the pass-1 cache: on this worker

    # Again through the command line, on the same data: pass 1 comes from the worker's cache.
    capsys.readouterr()
    assert train_main(["--data", str(data), "--output", root, "--max-bad-fraction", "0.5"]) == 0
    out = capsys.readouterr().out
    (second,) = tables.run_ids(root, RUNS) - {run_id}
    assert f"manifest: {root}/manifests/{second}.json" in out
    assert f"outputs: {root}\n" in out
    report = store.read(f"{root}/reports/{second}/report.md").decode()
    assert "| cached |" in report
    assert "| parsed |" not in report
    rows = read_back(s3_server, root, "predictions")
    assert (rows["run_id"] == second).sum() == len(predictions)
    assert scratch_left(worker) == []


def test_scoring_writes_its_table_to_the_bucket(root, s3_server, write_csv, capsys):
    data = write_csv("\n".join([HEADER, *sales_rows(60)]) + "\n")
    trained = train_sales_model(data=str(data), output=root)
    features = [",".join(line.split(",")[:4]) for line in sales_rows(30, seed=9)]
    rows = write_csv("\n".join(["country,avg_income_k,price_k,tax_k", *features]) + "\n", "x.csv")
    capsys.readouterr()
    assert score_main(["--data", str(rows), "--output", root]) == 0
    (scoring,) = tables.run_ids(root, RUNS) - {trained["run_id"]}
    assert f"scores: {root}/scores/run_id={scoring}" in capsys.readouterr().out
    scores = read_back(s3_server, root, "scores")
    assert len(scores) == 30
    assert set(scores["model_run_id"]) == {trained["run_id"]}
    assert store.exists(f"{root}/manifests/{scoring}.json")


@pytest.mark.parametrize("command", ["train", "score", "vacuum"])
@pytest.mark.parametrize("problem", ["no such bucket", "cannot reach the object store"])
def test_an_output_the_store_cannot_take_is_one_error_line_naming_it_and_nothing_is_written(
    s3_env, s3_bucket, write_csv, tmp_path, monkeypatch, capsys, command, problem
):
    uri = "s3://no-such-bucket-here/model"
    if problem != "no such bucket":  # the bucket exists; its endpoint does not answer
        uri = f"{s3_bucket}/model"
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{HOST}:{free_port()}")
        monkeypatch.setenv("SALES_MODEL_STORE_RETRY_SECONDS", "0.5")
        store.forget_clients()
    monkeypatch.setenv("SALES_MODEL_OUTPUT_ROOTS", uri)
    monkeypatch.setenv("SALES_MODEL_CACHE_DIR", str(tmp_path / "worker"))
    data = write_csv("\n".join([HEADER, *sales_rows(40)]) + "\n")
    run = {
        "train": lambda: train_main(["--data", str(data), "--output", uri]),
        "score": lambda: score_main(["--data", str(data), "--output", uri]),
        "vacuum": lambda: outputs_main(["vacuum", "--output", uri]),
    }[command]
    assert run() == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {uri}: {problem}")
    assert not (tmp_path / "worker").exists()
    for key, value in s3_env.items():  # the server again, to look
        monkeypatch.setenv(key, value)
    store.forget_clients()
    assert store.list_files(s3_bucket) == []


def test_keeping_one_run_prunes_the_bucket_as_it_prunes_a_disk(root, s3_server, write_csv):
    data = write_csv("\n".join([HEADER, *sales_rows(60, seed=4)]) + "\n")
    champion = train_sales_model(data=str(data), output=root, keep_runs=1)["run_id"]
    # Two runs the gate refuses (not converged): the champion stays the first.
    later = [
        train_sales_model(data=str(data), output=root, keep_runs=1, max_epochs=1, lr=1e-3)["run_id"]
        for _ in range(2)
    ]
    assert tables.run_ids(root, "predictions") == {champion, later[1]}
    assert tables.run_ids(root, "weights") == {champion, *later}
    pruned = f"{root}/predictions/run_id={later[0]}"
    assert store.list_files(pruned)  # kept for readers in flight until the window has passed
    vacuum_outputs(root, hours=0)
    assert store.list_files(pruned) == []
    kept = read_back(s3_server, root, "predictions")
    assert set(kept["run_id"]) == {champion, later[1]}
