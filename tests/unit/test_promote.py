"""Promotion gate: better-or-equal on the same holdout rows and converged, or stays a candidate."""

from __future__ import annotations

import multiprocessing
import os
import time

import numpy as np
import pandas as pd
import pytest

from tasks.common.errors import PipelineError
from tasks.common.storage import new_run, write_table
from tasks.ingest.stats import Moments, moments_mse, moments_of
from tasks.model.evaluate import INTERCEPT
from tasks.outputs.promote import (
    LinearModel,
    decide_promotion,
    holdout_mse,
    load_model,
    model_from_weights,
    output_lock,
    read_champion,
    write_champion,
)

F, T = ("a", "b"), ("y",)


def model(w, b):
    return LinearModel(F, T, np.array([w], float), np.array([b], float))


@pytest.fixture
def holdout():
    """The statistics of 50 holdout rows (what the gate compares on)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2))
    y = X @ [2.0, -1.0] + 1 + rng.normal(0, 0.1, 50)
    return moments_of(X, y[:, None])


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
    champion, candidate = model([2, -1], 1), model([2.2, -1], 1)
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
    none = Moments.zero(2, 1)
    empty = decide_promotion(model([2, -1], 1), True, model([1, 1], 0), "old", none, 0.0)
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


def _hold_and_tell(root, ready, queue):
    with output_lock(root, timeout_seconds=5):
        queue.put(os.getpid())
        ready.set()
        time.sleep(30)


def test_output_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    queue = ctx.Queue()
    holder = ctx.Process(target=_hold_and_tell, args=(tmp_path, ready, queue))
    holder.start()
    assert ready.wait(60)
    pid = queue.get(timeout=10)
    heard = []
    with (
        pytest.raises(PipelineError, match=rf"another training run \(pid {pid}\) is publishing"),
        output_lock(tmp_path, timeout_seconds=0.5, on_wait=heard.append),
    ):
        pass
    assert heard == [
        f"waiting for the publish lock on {tmp_path}: another run (pid {pid}) is publishing "
        "there; giving up after 0.5 s"
    ]
    holder.kill()
    holder.join()
    with output_lock(tmp_path, timeout_seconds=5):
        pass


def test_holdout_mse_from_statistics_equals_the_mse_over_the_rows():
    # The gate compares models on the holdout statistics: the same MSE, per target.
    rng = np.random.default_rng(3)
    X = rng.normal(50, 10, (400, 3))
    Y = X @ rng.normal(size=(3, 2)) + rng.normal(0, 2, (400, 2))
    for _ in range(5):
        W, b = rng.normal(size=(2, 3)), rng.normal(size=2) * 10
        by_rows = ((X @ W.T + b - Y) ** 2).mean(axis=0)
        np.testing.assert_allclose(moments_mse(moments_of(X, Y), W, b), by_rows, rtol=1e-9)
        candidate = LinearModel(("a", "b", "c"), ("y", "z"), W, b)
        np.testing.assert_allclose(holdout_mse(candidate, moments_of(X, Y)), by_rows, rtol=1e-9)


def test_the_gate_holds_for_every_target():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 2))
    Y = np.column_stack([X @ [2.0, -1.0] + 1, X @ [0.5, 0.5] - 2]) + rng.normal(0, 0.1, (200, 2))
    exact = LinearModel(F, ("y", "z"), np.array([[2.0, -1.0], [0.5, 0.5]]), np.array([1.0, -2.0]))
    # Better on y, worse on z: not promoted, and the reason names z only.
    mixed = LinearModel(F, ("y", "z"), np.array([[2.0, -1.0], [0.9, 0.5]]), np.array([1.0, -2.0]))
    stats = moments_of(X, Y)
    decision = decide_promotion(mixed, True, exact, "old", stats, 0.0)
    assert not decision["promoted"]
    assert "z:" in decision["reason"]
    assert "y:" not in decision["reason"]
    assert set(decision["candidate_holdout_mse"]) == {"y", "z"}
    assert decide_promotion(exact, True, mixed, "old", stats, 0.0)["promoted"]
