"""The watch-landing flow: new files train once, duplicates and failures do not retrain."""

from __future__ import annotations

import json
import os
import time

from flows.watch import watch_landing
from tasks.ledger import ledger_rows
from tests.conftest import HEADER, sales_rows


def land(landing, name, lines):
    path = landing / name
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    old = time.time() - 60
    os.utime(path, (old, old))


def test_watch_trains_once_per_new_content_on_all_accepted_data(tmp_path):
    landing, ledger, output = tmp_path / "landing", tmp_path / "ledger", tmp_path / "out"
    landing.mkdir()
    base = tmp_path / "base.csv"
    base.write_text("\n".join([HEADER, *sales_rows(60, seed=1)]) + "\n")
    kwargs = {
        "landing": str(landing),
        "ledger": str(ledger),
        "base_data": str(base),
        "output": str(output),
    }

    assert watch_landing(**kwargs)["trained"] is None  # nothing landed yet

    land(landing, "a.csv", sales_rows(30, seed=2, start=100))
    land(landing, "broken.csv", ["not,enough"])
    first = watch_landing(**kwargs)
    assert first["found"]["accepted"] == ["a.csv"]
    assert first["found"]["failed"] == ["broken.csv"]
    assert first["trained"]["rows"]["in"] == 90

    land(landing, "a-copy.csv", sales_rows(30, seed=2, start=100))
    second = watch_landing(**kwargs)
    assert second["found"]["duplicate"] == ["a-copy.csv"]
    assert second["trained"] is None

    land(landing, "b.csv", sales_rows(20, seed=3, start=200))
    third = watch_landing(**kwargs)
    assert third["trained"]["rows"]["in"] == 110  # base + a + b, the copy not twice
    rows = {r["name"]: r for r in ledger_rows(ledger)}
    assert rows["a.csv"]["run_id"] == first["trained"]["run_id"]
    assert rows["b.csv"]["run_id"] == third["trained"]["run_id"]
    assert rows["broken.csv"]["status"] == "failed"
    assert len(list((output / "manifests").glob("*.json"))) == 2
    champion = json.loads((output / "champion.json").read_text())
    assert champion["run_id"] in {first["trained"]["run_id"], third["trained"]["run_id"]}
