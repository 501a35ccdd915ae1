"""Profile numbers equal pandas' own; drift flags a shifted sample and not a resample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.generate_sales import COLUMNS, generate
from schemas.outputs import ProfileTable
from tasks.ingest.profile import ProfileSketch, compare_profiles, profile_table, sample_keys
from tasks.ingest.stats import moments_of

NUMERIC = COLUMNS[1:]


def profile_frame(frame: pd.DataFrame, columns: list[str], pieces: int = 3) -> pd.DataFrame:
    """The pipeline's profile of a frame: sketches of a few pieces merged, and the statistics
    of all rows (the first column as the feature, the others as targets)."""
    values = frame[columns].to_numpy(np.float64)
    keys = sample_keys(np.arange(len(frame), dtype=np.uint64))
    sketch = ProfileSketch(tuple(columns))
    for part in np.array_split(np.arange(len(frame)), pieces):
        piece = ProfileSketch(tuple(columns))
        piece.add(values[part], keys[part])
        sketch = sketch.merge(piece)
    return profile_table(sketch, moments_of(values[:, :1], values[:, 1:]))


def sample(rows: int, seed: int) -> pd.DataFrame:
    frame = pd.DataFrame(generate(rows, seed), columns=COLUMNS)
    return frame.astype(dict.fromkeys(NUMERIC, "float64"))


def test_profile_equals_pandas_describe():
    frame = sample(300, seed=7)
    profile = profile_frame(frame, NUMERIC).set_index("column")
    ProfileTable.validate(profile.reset_index())
    described = frame[NUMERIC].describe(percentiles=[0.05, 0.25, 0.5, 0.75, 0.95]).T
    for ours, theirs in [
        ("count", "count"),
        ("mean", "mean"),
        ("std", "std"),
        ("min", "min"),
        ("p05", "5%"),
        ("p25", "25%"),
        ("p50", "50%"),
        ("p75", "75%"),
        ("p95", "95%"),
        ("max", "max"),
    ]:
        np.testing.assert_allclose(profile[ours], described[theirs], rtol=1e-12, err_msg=ours)


def test_drift_is_flagged_on_a_shifted_sample_and_not_on_a_resample():
    reference = profile_frame(sample(300, seed=7), NUMERIC)
    resample = profile_frame(sample(300, seed=8), NUMERIC)
    shifted_frame = sample(300, seed=9)
    shifted_frame["avg_income_k"] *= 1.6  # richer countries than the champion has seen
    shifted = profile_frame(shifted_frame, NUMERIC)

    same = compare_profiles(resample, reference, threshold=0.5)
    assert not same["drifted"].any(), same
    moved = compare_profiles(shifted, reference, threshold=0.5).set_index("column")
    assert moved.loc["avg_income_k", "drifted"]
    assert moved.loc["avg_income_k", "mean_shift"] > 0.5
    assert not moved.loc[["price_k", "tax_k"], "drifted"].any()


def test_drift_shift_is_the_standardized_mean_difference():
    new = pd.DataFrame({"column": ["x"], "mean": [12.0], "std": [9.0]})
    reference = pd.DataFrame({"column": ["x"], "mean": [10.0], "std": [4.0]})
    row = compare_profiles(new, reference, threshold=0.4).iloc[0]
    assert row["mean_shift"] == pytest.approx(0.5)
    assert bool(row["drifted"])
    assert not compare_profiles(new, reference, threshold=0.6)["drifted"].iloc[0]
