"""Promotion gate: better-or-equal on the same holdout rows and converged, or stays a candidate."""

from __future__ import annotations

import multiprocessing
import time

import numpy as np
import pandas as pd
import pytest

from tasks.errors import PipelineError
from tasks.evaluate import INTERCEPT
from tasks.promote import (
    LinearModel,
    decide_promotion,
    load_model,
    model_from_weights,
    output_lock,
    read_champion,
    write_champion,
)
from tasks.storage import new_run, write_table

F, T = ("a", "b"), ("y",)


def model(w, b):
    return LinearModel(F, T, np.array([w], float), np.array([b], float))


@pytest.fixture
def holdout():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    return pd.DataFrame({"a": a, "b": b, "y": 2 * a - b + 1 + rng.normal(0, 0.1, 50)})


def test_first_model_is_promoted(holdout):
    decision = decide_promotion(model([2, -1], 1), True, None, None, holdout, 0.0)
    assert decision["promoted"]
    assert decision["reason"] == "first model: no champion yet"


def test_better_model_is_promoted_and_worse_is_not(holdout):
    good, bad = model([2, -1], 1), model([1.5, -1], 1)
    up = decide_promotion(good, True, bad, "old", holdout, 0.0)
    assert up["promoted"]
    assert up["candidate_holdout_mse"]["y"] < up["champion_holdout_mse"]["y"]
    down = decide_promotion(bad, True, good, "old", holdout, 0.0)
    assert not down["promoted"]
    assert down["reason"].startswith("holdout MSE worse than champion old: y:")


def test_tolerance_lets_a_slightly_worse_model_through(holdout):
    champion, candidate = model([2, -1], 1), model([2.01, -1], 1)
    strict = decide_promotion(candidate, True, champion, "old", holdout, 0.0)
    ratio = strict["candidate_holdout_mse"]["y"] / strict["champion_holdout_mse"]["y"]
    assert not strict["promoted"]
    assert decide_promotion(candidate, True, champion, "old", holdout, ratio - 1 + 1e-9)["promoted"]


def test_unconverged_or_incomparable_models_are_not_promoted(holdout):
    assert decide_promotion(model([2, -1], 1), False, None, None, holdout, 0.0)["reason"] == (
        "training did not converge"
    )
    other = LinearModel(("a",), T, np.array([[2.0]]), np.array([1.0]))
    decision = decide_promotion(model([2, -1], 1), True, other, "old", holdout, 0.0)
    assert not decision["promoted"]
    assert "not comparable" in decision["reason"]
    empty = decide_promotion(model([2, -1], 1), True, model([1, 1], 0), "old", holdout[:0], 0.0)
    assert (empty["promoted"], empty["reason"]) == (False, "no holdout rows to compare on")


def test_champion_round_trips_through_parquet_and_pointer(tmp_path):
    weights = pd.DataFrame(
        {
            "target": ["y", "y", "y"],
            "feature": ["a", "b", INTERCEPT],
            "weight": [2.0, -1.0, 0.5],
            "standardized_weight": [1.0, 1.0, 1.0],
            "scaler_mean": [0.0, 0.0, np.nan],
            "scaler_std": [1.0, 1.0, np.nan],
        }
    )
    run = new_run(tmp_path, {})
    write_table(weights, tmp_path, "weights", run, "0" * 64)
    loaded = load_model(tmp_path, run.run_id)
    assert (loaded.features, loaded.targets) == (F, T)
    np.testing.assert_array_equal(loaded.W, [[2.0, -1.0]])
    np.testing.assert_array_equal(loaded.b, [0.5])
    assert model_from_weights(weights).features == F
    assert read_champion(tmp_path) is None
    write_champion(tmp_path, run.run_id, {"reason": "first", "candidate_holdout_mse": {"y": 1}})
    assert read_champion(tmp_path)["run_id"] == run.run_id
    with pytest.raises(PipelineError, match="weights of run nope not found"):
        load_model(tmp_path, "nope")


def _hold_lock(root, ready, seconds):
    with output_lock(root, timeout_seconds=5):
        ready.set()
        time.sleep(seconds)


def test_output_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(tmp_path, ready, 30))
    holder.start()
    assert ready.wait(60)
    with (
        pytest.raises(PipelineError, match="another training run is publishing"),
        output_lock(tmp_path, timeout_seconds=0.5),
    ):
        pass
    holder.kill()
    holder.join()
    with output_lock(tmp_path, timeout_seconds=5):
        pass
