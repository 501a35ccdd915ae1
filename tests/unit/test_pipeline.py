"""The block pipeline against the whole-file reference (tests/reference.py): the same records
with the same messages and line numbers, the same accepted rows, statistics, profile,
predictions and metrics, however the file is cut (one block, blocks of a line or two, byte
ranges of a few lines, one thread or two, one duplicate-key partition or dozens)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tasks.ingest.dedup
import tasks.ingest.range_scan
from schemas.sales import ID_COLUMN
from tasks.ingest.profile import BottomK, sample_keys
from tasks.ingest.split import hash_text
from tasks.model.descent import fit_from_moments
from tasks.model.evaluate import fit_inference, metrics_from_sums
from tasks.outputs.plots import report_sample
from tasks.outputs.predict import Scoring, predict_parts
from tests.conftest import messy_csv
from tests.pipeline import LAYOUTS, F, T, config, kept_rows, quarantine, scan_paths
from tests.reference import (
    evaluate_model,
    normalised,
    predictions_frame,
    profile_frame,
    train_moments,
    whole_file,
)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("layout", [*LAYOUTS, "one thread", "many key partitions"])
def test_pass_one_matches_the_whole_file(tmp_path, monkeypatch, seed, layout):
    if layout == "one thread":
        run = config("tiny blocks", seed=seed, threads=1)
    elif layout == "many key partitions":
        run = config("tiny ranges", seed=seed)
        monkeypatch.setattr(tasks.ingest.dedup, "PARTITION_BYTES", 100)
    else:
        run = config(layout, seed=seed)
    # many checks, each of a few rows
    monkeypatch.setattr(tasks.ingest.range_scan, "SUSPECT_ROWS", 7)
    path = messy_csv(tmp_path / "in.csv", seed)
    if layout == "many key partitions":
        assert tasks.ingest.dedup.partitions_for(path.stat().st_size) > 8
    whole = whole_file(path, F, T, 0.2, seed)
    scan = scan_paths([path], run, tmp_path / "stage")

    (report,) = scan.files
    assert (report.rows, report.accepted, report.quarantined) == (
        whole.rows,
        len(whole.accepted),
        whole.quarantined,
    )
    records = quarantine(scan)
    pd.testing.assert_frame_equal(normalised(records), normalised(whole.quarantine))
    assert records["source_line"].is_monotonic_increasing  # merged in line order
    kept = kept_rows(scan)
    np.testing.assert_array_equal(kept["line"], whole.accepted["source_line"])
    np.testing.assert_array_equal(kept["holdout"], whole.is_holdout)
    expected = train_moments(whole, F, T)
    assert scan.train.n == expected.n
    assert scan.holdout.n == int(whole.is_holdout.sum())
    for name in ("mean_x", "mean_y", "sxx", "sxy", "syy"):
        np.testing.assert_allclose(getattr(scan.train, name), getattr(expected, name), 1e-12)
    keys = sample_keys(hash_text(whole.accepted[ID_COLUMN], seed))
    profile = profile_frame(whole.accepted, [*F, *T], keys)
    pd.testing.assert_frame_equal(scan.profile_table(), profile, rtol=1e-10)


def test_pass_two_predictions_and_metrics_match_the_whole_file(tmp_path):
    path = messy_csv(tmp_path / "in.csv", 11, rows=600)
    whole = whole_file(path, F, T, 0.2, 0)
    run = config("tiny ranges")
    scan = scan_paths([path], run, tmp_path / "stage")
    fit = fit_from_moments(scan.train, max_epochs=5000, tol=1e-12, seed=0)
    emitted = predict_parts(scan.parts, Scoring.of(fit, scan), run, tmp_path / "p", "r1")

    # the parts hold the table's types (text, not the dictionaries pass 2 builds them with)
    assert all(pq.read_schema(p).equals(emitted.schema) for p in emitted.parts)
    written = pd.concat([pd.read_parquet(p) for p in emitted.parts], ignore_index=True)
    written = written.sort_values("source_line", ignore_index=True)
    expected = predictions_frame(whole.accepted, whole.is_holdout, fit, F, T, ID_COLUMN)
    text = {ID_COLUMN: object, "split": object, "source_file": object}
    pd.testing.assert_frame_equal(written.astype(text), expected.astype(text), rtol=1e-12)
    accepted = whole.accepted
    X, y = accepted[list(F)].to_numpy(), accepted[list(T)].to_numpy()
    reference = evaluate_model(X, y, whole.is_holdout, fit, T)
    metrics = metrics_from_sums(emitted.sums, fit, T, fit_inference(scan.train, emitted.sums, run))
    metrics = metrics[reference.columns]  # the fit statistics: tests/unit/test_inference.py
    pd.testing.assert_frame_equal(
        metrics.drop(columns="relative_gap"), reference.drop(columns="relative_gap"), rtol=1e-9
    )
    np.testing.assert_allclose(metrics["relative_gap"], reference["relative_gap"], atol=1e-9)
    # below its size, the report's sample is every accepted row, with the same predictions
    order = ["units_sold_k", "predicted_units_sold_k"]
    sample = report_sample(scan, fit.W, fit.b, F, T).sort_values(order, ignore_index=True)
    assert len(sample) == len(written)
    by_value = written.sort_values(order, ignore_index=True)
    np.testing.assert_allclose(sample["predicted_units_sold_k"], by_value["predicted_units_sold_k"])
    assert (sample["split"] == by_value["split"]).all()


def test_results_do_not_depend_on_threads_or_where_the_rows_are_kept(tmp_path):
    path = messy_csv(tmp_path / "in.csv", 7, rows=2000)
    runs = [
        config("tiny blocks", threads=1),
        config("tiny blocks", threads=2),
        config("tiny blocks", threads=2),
    ]
    scans = [scan_paths([path], run, tmp_path / f"s{i}") for i, run in enumerate(runs)]
    first = scans[0]
    for scan in scans[1:]:
        assert scan.files == first.files
        pd.testing.assert_frame_equal(quarantine(scan), quarantine(first))
        pd.testing.assert_frame_equal(kept_rows(scan), kept_rows(first))
        np.testing.assert_array_equal(scan.train.sxx, first.train.sxx)  # bit for bit
        pd.testing.assert_frame_equal(scan.profile_table(), first.profile_table())


def test_a_row_longer_than_a_block_is_read_whole(tmp_path):
    long_id = "C" + "x" * 5000
    path = tmp_path / "long.csv"
    path.write_text(
        f"country,avg_income_k,price_k,tax_k,units_sold_k\nA,1,1,1,1\n{long_id},2,2,2,2\nB,3,3,3,3\n"
    )
    scan = scan_paths([path], config(block_bytes=64), tmp_path / "s")
    assert kept_rows(scan)["country"].tolist() == ["A", long_id, "B"]
    assert kept_rows(scan)["line"].tolist() == [2, 3, 4]


def test_bottom_k_sample_does_not_depend_on_order_or_grouping():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 5000, dtype=np.uint64)
    values = rng.normal(size=(5000, 2))
    whole = BottomK(300)
    whole.add(keys, values)
    parts = [BottomK(300), BottomK(300)]
    order = rng.permutation(5000)
    for i, chunk in enumerate(np.array_split(order, 17)):
        parts[i % 2].add(keys[chunk], values[chunk])
    merged = parts[0].merge(parts[1])
    assert sorted(merged.keys.tolist()) == sorted(whole.keys.tolist())
    assert sorted(merged.keys.tolist()) == sorted(np.sort(keys)[:300].tolist())


def test_kept_rows_are_arrow_batches_with_the_spill_schema(tmp_path):
    path = messy_csv(tmp_path / "in.csv", 3, rows=50)
    scan = scan_paths([path], config(), tmp_path / "s")
    part = scan.parts[0]
    (batch, *_) = part.batches(part.chunks()[0])
    assert isinstance(batch, pa.RecordBatch)
    assert batch.schema.names == [ID_COLUMN, *F, *T, "line", "holdout"]
