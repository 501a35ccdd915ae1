"""The pass-1 cache through the training flow: a cached run publishes what a `--no-cache` run on
the same files publishes (weights, metrics, quarantine, profile, predictions row for row) while
files are added, removed and replaced between runs, and its manifest and report say which files
it parsed."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd

from flows.train import train_sales_model
from tests.conftest import messy_csv

TEXT = ["country", "split", "source_file"]


def tables(output, manifest):
    """The run's published tables, in a stable row order."""
    read = {name: pd.read_parquet(output / manifest["outputs"][name]) for name in
            ("weights", "metrics", "profile", "quarantine")}  # fmt: skip
    predictions = pd.read_parquet(output / manifest["outputs"]["predictions"])
    read["predictions"] = predictions.sort_values(["source_file", "source_line"], ignore_index=True)
    return read


def assert_same_run(cached, fresh):
    np.testing.assert_allclose(cached["weights"]["weight"], fresh["weights"]["weight"], rtol=1e-12)
    pd.testing.assert_frame_equal(cached["weights"], fresh["weights"], rtol=1e-12)
    for name in ("metrics", "profile", "quarantine", "predictions"):
        pd.testing.assert_frame_equal(cached[name], fresh[name], check_exact=True, obj=name)


def test_cached_runs_publish_what_runs_from_scratch_publish_as_files_come_and_go(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for seed in range(3):
        messy_csv(data / f"f{seed}.csv", seed, rows=400)
    cached_root, fresh_root = tmp_path / "cached", tmp_path / "fresh"

    def both(expected_parsed):
        options = {"data": str(data), "max_bad_fraction": 0.5}
        cached = train_sales_model(**options, output=str(cached_root))
        fresh = train_sales_model(**options, output=str(fresh_root), use_cache=False)
        parsed = {f["path"].rsplit("/", 1)[1] for f in cached["inputs"] if f["pass1"] == "parsed"}
        assert parsed == expected_parsed
        assert {f["pass1"] for f in fresh["inputs"]} == {"parsed"}
        assert_same_run(tables(cached_root, cached), tables(fresh_root, fresh))
        return cached

    both({"f0.csv", "f1.csv", "f2.csv"})  # an empty cache: everything parsed (and kept)
    unchanged = both(set())  # nothing parsed
    report = (cached_root / unchanged["outputs"]["report"]).read_text()
    assert "| cached |" in report
    assert "| parsed |" not in report

    messy_csv(data / "f3.csv", 3, rows=400)  # added
    both({"f3.csv"})
    (data / "f0.csv").unlink()  # removed
    messy_csv(data / "f1.csv", 11, rows=350)  # replaced: same name, other content
    both({"f1.csv"})
    shutil.copy(data / "f2.csv", data / "f9.csv")  # the same content under a new name
    last = both(set())
    quarantine = pd.read_parquet(cached_root / last["outputs"]["quarantine"])
    assert quarantine["source_file"].str.endswith("f9.csv").any()  # named as this run read it
