"""The streaming path (two passes in blocks, bounded memory) gives the in-memory path's results:
the same quarantine records with the same messages and line numbers, the same accepted rows,
statistics, profile, predictions and metrics; blocks of a few rows make every row-level case
cross a block boundary (duplicates in another block, another hash partition)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tasks.scan
from schemas.sales import (
    DEFAULT_FEATURES,
    DEFAULT_TARGETS,
    ID_COLUMN,
    allowed_columns,
    required_columns,
)
from tasks.errors import DataQualityError, PipelineError
from tasks.evaluate import evaluate_model, metrics_from_sums, predictions_frame
from tasks.ingest import read_sales_csv
from tasks.paths import resolve_inputs
from tasks.prepare import prepare_file
from tasks.profile import profile_frame
from tasks.scan import (
    BottomK,
    StreamedData,
    emit_file,
    iter_quarantine,
    scan_file,
)
from tasks.train import fit_from_moments
from tasks.validate import QUARANTINE_COLUMNS, check_quality, validate_files
from tests.conftest import HEADER
from tests.unit.test_bad_inputs_catalogue import CASES, Case, quarantine_map

F, T = DEFAULT_FEATURES, DEFAULT_TARGETS
TOKENS = ["abc", "", "NA", "inf", "-inf", "-1", "1e400", " 5 ", "nan", "+3", "5.", "\x01x", "  "]


def messy_csv(path: Path, seed: int, rows: int = 300) -> Path:
    """Rows with every row-level problem: repeated ids (often far apart), blank lines, wrong
    field counts, bad numbers, padded ids, quoted fields."""
    rng = random.Random(seed)
    lines, ids = [HEADER], []
    for i in range(rows):
        r = rng.random()
        cid = f"C{i}" if rng.random() > 0.15 or not ids else rng.choice(ids)
        ids.append(cid)
        inc, price, tax = 20 + rng.random() * 100, 0.5 + rng.random() * 3, rng.random()
        units = 50 + 0.3 * inc - 4 * price - 9 * tax + rng.gauss(0, 1)
        cells = [cid, f"{inc:.3f}", f"{price:.3f}", f"{tax:.3f}", f"{units:.3f}"]
        if r < 0.03:
            lines.append("")
            continue
        if r < 0.06:
            cells.append("1")
        elif r < 0.08:
            cells = cells[:-1]
        elif r < 0.15:
            for _ in range(rng.randint(1, 2)):
                cells[rng.randint(0, 4)] = rng.choice(TOKENS)
        elif r < 0.17:
            cells[0] = f"  {cid} "
        elif r < 0.19:
            cells = [f'"{c}"' for c in cells]
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def normalised(quarantine: pd.DataFrame) -> pd.DataFrame:
    frame = quarantine[QUARANTINE_COLUMNS].astype(object)
    frame = frame.where(frame.notna(), None)
    return frame.sort_values(
        ["source_line", "column", "reason"], na_position="first", ignore_index=True
    )


def streamed_quarantine(scan, tmp_path: Path) -> pd.DataFrame:
    emit = emit_file(scan, F, T, tmp_path, None, {})
    parts = StreamedData([scan]).quarantine_parts([emit])[0]
    return pd.concat([*iter_quarantine(parts)], ignore_index=True) if parts else None


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("block_bytes", "suspect_rows"), [(64, 7), (1000, 50_000)])
def test_streamed_checks_and_statistics_match_the_whole_file(
    tmp_path, monkeypatch, seed, block_bytes, suspect_rows
):
    # suspect_rows: how many rows that may fail are gathered before check_rows runs on them
    monkeypatch.setattr(tasks.scan, "SUSPECT_ROWS", suspect_rows)
    path = messy_csv(tmp_path / "in.csv", seed)
    whole = prepare_file(path, F, T, 0.2, seed)
    scan = scan_file(
        path, 0, F, T, 0.2, seed, tmp_path / "stage", block_bytes=block_bytes, partition_bytes=2000
    )

    assert scan.report == whole.data.files[0]
    quarantine = streamed_quarantine(scan, tmp_path / "stage")
    pd.testing.assert_frame_equal(normalised(quarantine), normalised(whole.data.quarantine))
    assert quarantine["source_line"].is_monotonic_increasing  # merged in line order
    accepted_lines = whole.data.accepted["source_line"].to_numpy()
    np.testing.assert_array_equal(scan.accepted.accepted_lines(), accepted_lines)

    train = whole.data.accepted[~whole.is_holdout]
    assert scan.train.n == len(train)
    assert scan.holdout.n == int(whole.is_holdout.sum())
    for name in ("sum_x", "sum_y", "xtx", "xty", "yty"):
        np.testing.assert_allclose(getattr(scan.train, name), getattr(whole.moments, name), 1e-12)
    # fewer rows than the sample size: the streamed profile is exact
    expected = profile_frame(whole.data.accepted, [*F, *T])
    pd.testing.assert_frame_equal(scan.profile.frame(), expected, rtol=1e-12)


def test_streamed_predictions_and_metrics_match_the_in_memory_ones(tmp_path):
    path = messy_csv(tmp_path / "in.csv", 11, rows=600)
    whole = prepare_file(path, F, T, 0.2, 0)
    scan = scan_file(path, 0, F, T, 0.2, 0, tmp_path, block_bytes=500, partition_bytes=3000)
    streamed = StreamedData([scan])
    fit = fit_from_moments(streamed.moments, max_epochs=5000, tol=1e-12, seed=0)
    emit = emit_file(scan, F, T, tmp_path, streamed.scoring(fit), {b"k": b"v"})

    written = pd.read_parquet(emit.predictions)
    expected = predictions_frame(whole.data.accepted, whole.is_holdout, fit, F, T, ID_COLUMN)
    pd.testing.assert_frame_equal(
        written.astype({ID_COLUMN: object, "split": object, "source_file": object}),
        expected.astype({ID_COLUMN: object, "split": object, "source_file": object}),
        rtol=1e-12,
    )
    accepted = whole.data.accepted
    metrics = evaluate_model(
        accepted[list(F)].to_numpy(), accepted[list(T)].to_numpy(), whole.is_holdout, fit, T
    )
    streamed_metrics = metrics_from_sums(emit.sums, fit, T)
    pd.testing.assert_frame_equal(
        streamed_metrics.drop(columns="relative_gap"),
        metrics.drop(columns="relative_gap"),
        rtol=1e-9,
    )
    np.testing.assert_allclose(streamed_metrics["relative_gap"], metrics["relative_gap"], atol=1e-9)
    sample = emit.sample.rows
    assert len(sample) == len(written)  # below the sample size the sample is every row
    assert set(sample["source_line"]) == set(written["source_line"])


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


def run_streamed(data: str, roots: list[Path], max_bad_fraction: float, tmp: Path, check=True):
    scans = [
        scan_file(path, i, F, T, 0.2, 0, tmp / "stage", block_bytes=64, partition_bytes=64)
        for i, path in enumerate(resolve_inputs(data, roots))
    ]
    if check:
        check_quality([scan.report for scan in scans], max_bad_fraction)
    return scans


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_catalogue_case_streamed(case: Case, tmp_path: Path):
    """Every case of ../shared/BAD_INPUTS.md has the same outcome, message, line numbers and
    quarantine records when the file is streamed in blocks of a line or two."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if case.content is not None:
        (data_dir / "in.csv").write_bytes(case.content)
    if case is CASES["32 symlink outside the data root"]:
        (tmp_path / "secret.csv").write_bytes(b"x")
        (data_dir / "in.csv").symlink_to(tmp_path / "secret.csv")
    data = case.data.format(dir=data_dir)
    roots = [data_dir.resolve()]

    if case.outcome == "reject":
        with pytest.raises(PipelineError, match=case.message) as err:
            run_streamed(data, roots, case.max_bad_fraction, tmp_path)
        assert not isinstance(err.value, DataQualityError)
        return
    if case.outcome == "fail":
        with pytest.raises(DataQualityError, match=case.message):
            run_streamed(data, roots, case.max_bad_fraction, tmp_path)
    scans = run_streamed(data, roots, 1.0, tmp_path, check=False)
    assert sum(scan.report.accepted for scan in scans) == case.accepted
    quarantine = [streamed_quarantine(scan, tmp_path / "stage") for scan in scans]
    quarantine = [q for q in quarantine if q is not None]
    whole = validate_files(
        [
            read_sales_csv(path, required_columns(F, T), allowed_columns(F, T))
            for path in resolve_inputs(data, roots)
        ],
        F,
        T,
    )
    streamed = whole.__class__(whole.accepted, pd.concat(quarantine or [whole.quarantine[:0]]), [])
    assert quarantine_map(streamed) == case.quarantined
    if quarantine:
        pd.testing.assert_frame_equal(normalised(streamed.quarantine), normalised(whole.quarantine))
