"""Landing on a bucket: an object put under the landing prefix is checked, kept in the ledger on
the same bucket and trained into the bucket's tables by the watch flow, with no local state but
the worker's scratch."""

from __future__ import annotations

from flows.watch import watch_landing
from tasks.common import store
from tasks.landing.ledger import files_to_train, ledger_rows
from tasks.outputs import tables
from tests.conftest import HEADER, sales_rows


def test_an_object_landed_in_a_bucket_is_trained_into_the_bucket_once(
    s3_env, s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the dataset's base file is data/sales.csv
    (tmp_path / "data").mkdir()
    base = tmp_path / "data" / "sales.csv"
    base.write_text("\n".join([HEADER, *sales_rows(60, seed=1)]) + "\n")
    monkeypatch.setenv("SALES_MODEL_DATA_ROOTS", f"{tmp_path / 'data'}:{s3_bucket}")
    monkeypatch.setenv("SALES_MODEL_OUTPUT_ROOTS", f"{s3_bucket}/model")
    monkeypatch.setenv("SALES_MODEL_CACHE_DIR", str(tmp_path / "worker"))
    landing, ledger, output = (f"{s3_bucket}/{name}" for name in ("landing", "ledger", "model"))
    kwargs = {"landing": landing, "ledger": ledger, "output": output}

    store.write(
        f"{landing}/march.csv", ("\n".join([HEADER, *sales_rows(30, seed=2)]) + "\n").encode()
    )
    first = watch_landing(**kwargs)
    assert first["found"]["accepted"] == ["march.csv"]
    assert first["trained"]["rows"]["in"] == 90
    run_id = first["trained"]["run_id"]
    assert tables.run_ids(output, "runs") == {run_id}
    sources = set(tables.read(output, "predictions")["source_file"].to_pylist())
    (stored,) = [source for source in sources if source.startswith(f"{ledger}/files/")]
    assert len(sources) == 2  # the base file and the checked copy in the bucket
    assert store.read(stored) == store.read(f"{landing}/march.csv")
    assert files_to_train(ledger) == []
    assert [row["name"] for row in ledger_rows(ledger)] == ["march.csv"]

    again = watch_landing(**kwargs)  # the same object, still there: nothing new
    assert again["found"]["accepted"] == []
    assert again["trained"] is None
