"""The watch-landing flow: new files train once, duplicates and failures do not retrain."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd

from flows.train import train_sales_model
from flows.watch import watch_landing
from tasks.landing.ledger import ledger_rows
from tasks.outputs.promote import load_model
from tests.conftest import HEADER, sales_rows


def land(landing, name, lines):
    path = landing / name
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    old = time.time() - 60
    os.utime(path, (old, old))


def test_watch_trains_once_per_new_content_on_all_accepted_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the dataset's base file is data/sales.csv
    landing, ledger, output = tmp_path / "landing", tmp_path / "ledger", tmp_path / "out"
    landing.mkdir()
    (tmp_path / "data").mkdir()
    base = tmp_path / "data" / "sales.csv"
    base.write_text("\n".join([HEADER, *sales_rows(60, seed=1)]) + "\n")
    kwargs = {"landing": str(landing), "ledger": str(ledger), "output": str(output)}

    nothing = watch_landing(**kwargs)
    assert nothing["trained"] is None  # nothing landed yet
    assert nothing["found"] == {
        "accepted": [],
        "failed": {},
        "duplicate": {},
        "in_progress": [],
        "waiting": [],
    }

    land(landing, "a.csv", sales_rows(30, seed=2, start=100))
    land(landing, "broken.csv", ["not,enough"])
    first = watch_landing(**kwargs)
    assert first["found"]["accepted"] == ["a.csv"]
    assert list(first["found"]["failed"]) == ["broken.csv"]
    assert "no valid rows: all 1 data rows of broken.csv" in first["found"]["failed"]["broken.csv"]
    assert first["trained"]["rows"]["in"] == 90

    land(landing, "a-copy.csv", sales_rows(30, seed=2, start=100))
    second = watch_landing(**kwargs)
    assert second["found"]["duplicate"] == {"a-copy.csv": "same content as a.csv"}
    assert second["trained"] is None

    # After acceptance the landed a.csv is overwritten with bad rows, then deleted: training
    # reads the checked copy in the ledger's store.
    (landing / "a.csv").write_text("\n".join([HEADER, "A1,x,1,1,1"]) + "\n")
    (landing / "a.csv").unlink()
    land(landing, "b.csv", sales_rows(20, seed=3, start=200))
    third = watch_landing(**kwargs)
    assert third["trained"]["rows"] == {"in": 110, "accepted": 110, "quarantined": 0}
    predictions = pd.read_parquet(output / third["trained"]["outputs"]["predictions"])
    landed_a = predictions[predictions["source_file"].str.endswith("_a.csv")]
    expected = pd.DataFrame([r.split(",") for r in sales_rows(30, seed=2, start=100)])
    assert sorted(landed_a["country"]) == sorted(expected[0])
    np.testing.assert_allclose(
        landed_a.sort_values("country")["avg_income_k"], expected.sort_values(0)[1].astype(float)
    )
    rows = {r["name"]: r for r in ledger_rows(ledger)}
    assert rows["a.csv"]["run_id"] == first["trained"]["run_id"]
    assert rows["b.csv"]["run_id"] == third["trained"]["run_id"]
    assert rows["broken.csv"]["status"] == "failed"
    assert len(list((output / "manifests").glob("*.json"))) == 2
    # The gate: the third run replaces the first as champion only if its holdout MSE is not
    # worse than the first model's on the third run's holdout rows.
    holdout = predictions[predictions["split"] == "holdout"]
    candidate_mse = (holdout["residual_units_sold_k"] ** 2).mean()
    first_model = load_model(output, first["trained"]["run_id"])
    features = holdout[list(first_model.features)].to_numpy()
    first_predicted = features @ first_model.W[0] + first_model.b[0]
    champion_mse = ((holdout["units_sold_k"] - first_predicted) ** 2).mean()
    assert candidate_mse < champion_mse  # more data, a better model on these rows
    champion = json.loads((output / "champion.json").read_text())
    assert champion["run_id"] == third["trained"]["run_id"]


def test_nightly_and_the_landing_retrain_read_the_same_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    landing, ledger, output = tmp_path / "landing", tmp_path / "ledger", tmp_path / "out"
    landing.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sales.csv").write_text("\n".join([HEADER, *sales_rows(40)]) + "\n")
    before = train_sales_model(ledger=str(ledger), output=str(output))  # nightly: the defaults
    assert before["rows"]["in"] == 40  # no ledger yet: the base file only, and none created
    assert not ledger.exists()
    land(landing, "a.csv", sales_rows(25, seed=2, start=100))
    retrain = watch_landing(landing=str(landing), ledger=str(ledger), output=str(output))
    nightly = train_sales_model(ledger=str(ledger), output=str(output))
    assert retrain["trained"]["rows"]["in"] == nightly["rows"]["in"] == 65
    assert retrain["trained"]["data_fingerprint"] == nightly["data_fingerprint"]
    assert nightly["data_fingerprint"] != before["data_fingerprint"]
    for manifest in (retrain["trained"], nightly):
        predictions = pd.read_parquet(output / manifest["outputs"]["predictions"])
        assert sorted(predictions["country"]) == sorted(
            [line.split(",")[0] for line in [*sales_rows(40), *sales_rows(25, seed=2, start=100)]]
        )


def artifacts_of(state) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )


def test_a_check_that_finds_nothing_new_leaves_no_artifacts(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    kwargs = {"landing": str(landing), "ledger": str(tmp_path / "ledger"), "output": str(tmp_path)}
    quiet = watch_landing(**kwargs, return_state=True)
    assert quiet.is_completed()
    assert quiet.result()["trained"] is None
    assert artifacts_of(quiet) == []
    land(landing, "broken.csv", ["not,enough"])  # something new (rejected): its progress shows
    found = watch_landing(**kwargs, return_state=True)
    assert found.result()["found"]["failed"]
    assert [a.type for a in artifacts_of(found)] == ["progress"]


def test_a_missing_landing_folder_is_an_error_and_creates_nothing(tmp_path, capsys):
    from flows.watch import main

    code = main(["--landing", str(tmp_path / "incoming"), "--ledger", str(tmp_path / "ledger")])
    assert code == 2  # a parameter refused
    assert (
        capsys.readouterr().err
        == f"error: parameter landing: folder '{tmp_path}/incoming' not found\n"
    )
    assert not (tmp_path / "ledger").exists()


def test_a_resent_file_replaces_its_earlier_version_in_the_next_training(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    landing, ledger, output = tmp_path / "landing", tmp_path / "ledger", tmp_path / "out"
    landing.mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sales.csv").write_text("\n".join([HEADER, *sales_rows(40)]) + "\n")
    kwargs = {"landing": str(landing), "ledger": str(ledger), "output": str(output)}
    land(landing, "jan.csv", sales_rows(10, seed=2, start=100))
    assert watch_landing(**kwargs)["trained"]["rows"]["in"] == 50
    # A corrected re-send: the same ten rows and two more, under the same name.
    land(landing, "jan.csv", sales_rows(10, seed=2, start=100) + sales_rows(2, seed=3, start=110))
    resent = watch_landing(**kwargs)
    assert resent["found"]["accepted"] == ["jan.csv"]
    assert resent["trained"]["rows"]["in"] == 52
    predictions = pd.read_parquet(output / resent["trained"]["outputs"]["predictions"])
    assert predictions["source_file"].str.endswith("_jan.csv").sum() == 12
    versions = [(r["rows"], r["in_dataset"], r["run_id"]) for r in ledger_rows(ledger)]
    assert versions[1] == (12, True, resent["trained"]["run_id"])
    assert versions[0][:2] == (10, False)
