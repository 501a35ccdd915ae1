"""The pass-1 cache through the training flow: a cached run publishes what a `--no-cache` run on
the same files publishes (weights, metrics, quarantine, profile, predictions row for row) while
files are added, removed and replaced between runs, and its manifest and report say which files
it parsed."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

import tasks.ingest.range_scan
import tasks.ingest.scan
from flows.train import train_sales_model
from tasks.common.errors import InputFileError
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


# Ranges of about 4 kB: the 400-row files here are read as 3 to 4 byte ranges each.
SPLIT_MB = 0.004


def test_files_cut_into_byte_ranges_publish_from_the_cache_what_they_publish_from_scratch(
    tmp_path,
):
    data = tmp_path / "data"
    data.mkdir()
    for seed in range(2):
        messy_csv(data / f"f{seed}.csv", seed, rows=400)
    options = {"data": str(data), "max_bad_fraction": 0.5, "split_mb": SPLIT_MB}
    fresh = train_sales_model(**options, output=str(tmp_path / "fresh"), use_cache=False)
    for expected in ("parsed", "cached"):  # kept by the first run, read back by the second
        cached = train_sales_model(**options, output=str(tmp_path / "cached"))
        assert {f["pass1"] for f in cached["inputs"]} == {expected}
        assert_same_run(tables(tmp_path / "cached", cached), tables(tmp_path / "fresh", fresh))


def same_size_other_rows(text: bytes) -> bytes:
    """Other figures in the same bytes: every digit 1 made a 2."""
    return text.replace(b"1", b"2")


def more_rows(text: bytes) -> bytes:
    """One row more, before the others."""
    header, rows = text.split(b"\n", 1)
    return header + b"\nX1,50,1,0.1,40\n" + rows


def fewer_rows(text: bytes) -> bytes:
    """The first half of the file."""
    return text[: len(text) // 2 + text[len(text) // 2 :].index(b"\n") + 1]


def rewrite_when(monkeypatch, module, name, path, rewrite):
    """Make the function `name` of `module` rewrite `path` (once) before it runs: another
    program writes to the file meanwhile."""
    real, original = getattr(module, name), path.read_bytes()

    def rewritten_first(*args, **kwargs):
        if path.read_bytes() == original:
            path.write_bytes(rewrite(original))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, rewritten_first)


@pytest.mark.parametrize(
    ("module", "name", "rewrite"),
    [
        # after the cache lookup hashed the file, before its byte ranges are read
        (tasks.ingest.range_scan, "scan_range", same_size_other_rows),
        (tasks.ingest.range_scan, "scan_range", more_rows),
        (tasks.ingest.range_scan, "scan_range", fewer_rows),
        # once they are read, before the lines of its repeated ids are read back
        (tasks.ingest.scan, "finish_file", same_size_other_rows),
    ],
)
def test_a_file_cut_into_ranges_and_rewritten_while_read_is_refused_and_never_cached(
    tmp_path, monkeypatch, module, name, rewrite
):
    data = tmp_path / "data"
    data.mkdir()
    path = messy_csv(data / "f.csv", 1, rows=400)
    original = path.read_bytes()
    options = {"data": str(data), "max_bad_fraction": 0.5, "split_mb": SPLIT_MB}
    rewrite_when(monkeypatch, module, name, path, rewrite)
    with pytest.raises(InputFileError, match=r"f\.csv: changed while it was read"):
        train_sales_model(**options, output=str(tmp_path / "cached"))
    monkeypatch.undo()
    path.write_bytes(original)
    cached = train_sales_model(**options, output=str(tmp_path / "cached"))
    assert [f["pass1"] for f in cached["inputs"]] == ["parsed"]  # nothing kept under its hash
    fresh = train_sales_model(**options, output=str(tmp_path / "fresh"), use_cache=False)
    assert_same_run(tables(tmp_path / "cached", cached), tables(tmp_path / "fresh", fresh))
