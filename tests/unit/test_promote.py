"""Promotion gate: better-or-equal on the same holdout rows and converged, or stays a candidate;
the champion moves by compare-and-swap, deciding again when another run was crowned meanwhile."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from schemas.outputs import RUNS, RUNS_ARROW
from tasks.common.errors import PipelineError
from tasks.ingest.stats import Moments, moments_mse, moments_of
from tasks.model.evaluate import INTERCEPT
from tasks.outputs import tables
from tasks.outputs.promote import (
    LinearModel,
    Promotion,
    crown,
    decide_promotion,
    holdout_mse,
    judge,
    load_model,
    read_champion,
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


def test_the_champions_own_model_again_does_not_replace_it_whatever_the_tolerance(holdout):
    champion = model([2, -1], 1)
    for tolerance in (0.0, 1e6):
        again = decide_promotion(model([2, -1], 1), True, champion, "old", holdout, tolerance)
        assert not again["promoted"]
        assert again["reason"] == (
            "holdout MSE equal to champion old's on 50 rows (the same model): the champion stays"
        )
    # the last digits of the sums differ between re-runs: still the same model
    nudged = model([2 * (1 + 1e-15), -1], 1)
    assert not decide_promotion(nudged, True, champion, "old", holdout, 0.0)["promoted"]
    better = decide_promotion(model([2, -1], 1), True, model([2, -1], 1.5), "old", holdout, 0.0)
    assert better["promoted"]


def test_exact_fits_are_one_model_and_a_non_finite_mse_promotes_nothing():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 2))
    exact = moments_of(X, (X @ [2.0, -1.0] + 1)[:, None])  # no noise: MSEs are rounding
    champion, nudged = model([2, -1], 1), model([2 * (1 + 1e-15), -1], 1)
    again = decide_promotion(nudged, True, champion, "old", exact, 0.0)
    assert again["candidate_holdout_mse"]["y"] != again["champion_holdout_mse"]["y"]
    assert not again["promoted"]
    assert "(the same model)" in again["reason"]
    assert not decide_promotion(champion, True, nudged, "old", exact, 0.0)["promoted"]
    broken = model([np.nan, -1], 1)
    for candidate, incumbent in ((broken, champion), (champion, broken)):
        decision = decide_promotion(candidate, True, incumbent, "old", exact, 1e6)
        assert not decision["promoted"]
        assert decision["reason"] == "a holdout MSE is not finite: nothing to compare"


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


def append_weights(root, run_id, candidate):
    """A run's weights table (target, feature, weight), committed as the pipeline does."""
    terms = [*candidate.features, INTERCEPT]
    rows = [
        (target, term, float(value))
        for j, target in enumerate(candidate.targets)
        for term, value in zip(terms, [*candidate.W[j], candidate.b[j]], strict=True)
    ]
    frame = pd.DataFrame(rows, columns=["target", "feature", "weight"])
    tables.append(root, "weights", pa.Table.from_pandas(frame, preserve_index=False), run_id)


def commit_run(root, run_id):
    """A run's row of `runs` (its commit), as the pipeline appends it last."""
    row = pa.Table.from_pylist([{"kind": "train", "status": "completed"}], schema=RUNS_ARROW)
    tables.append(root, RUNS, row, run_id)


def crown_row(run_id):
    return {"run_id": run_id, "reason": "test", "holdout_mse": {"y": 1.0}}


def test_a_committed_models_weights_load_back_from_the_weights_table(tmp_path):
    with pytest.raises(PipelineError, match="no weights of run r1"):
        load_model(tmp_path, "r1")  # no weights table yet
    append_weights(tmp_path, "r1", model([2, -1], 0.5))
    append_weights(tmp_path, "r2", model([1, 1], 0))
    loaded = load_model(tmp_path, "r1")
    assert (loaded.features, loaded.targets) == (F, T)
    np.testing.assert_array_equal(loaded.W, [[2.0, -1.0]])
    np.testing.assert_array_equal(loaded.b, [0.5])
    with pytest.raises(PipelineError, match="no weights of run nope"):
        load_model(tmp_path, "nope")


def test_the_champion_is_the_last_promotion_that_swapped_from_the_version_it_read(tmp_path):
    assert read_champion(tmp_path) is None
    for run_id in ("r1", "r2", "r3"):
        commit_run(tmp_path, run_id)
    assert tables.swap_champion(tmp_path, None, crown_row("r1"))
    assert read_champion(tmp_path)["run_id"] == "r1"
    assert tables.swap_champion(tmp_path, 0, crown_row("r2"))
    assert not tables.swap_champion(tmp_path, 0, crown_row("r3"))  # read before r2's promotion
    champion = read_champion(tmp_path)
    assert (champion["run_id"], champion["previous"], champion["version"]) == ("r2", "r1", 1)


@pytest.fixture
def champion_r1(tmp_path):
    """An output root whose champion is run r1, the worst of the models below."""
    append_weights(tmp_path, "r1", model([1, -1], 1))
    commit_run(tmp_path, "r1")
    assert tables.swap_champion(tmp_path, None, crown_row("r1"))
    return tmp_path


def crowned_meanwhile(root, holdout, candidate, rival):
    """`candidate` (run c) judged against r1; then `rival` (run r2) crowned before c's crown;
    then c's crown. Returns c's decision and the champions table's rows, oldest first."""
    judged = judge(root, candidate, True, holdout, 0.0)
    assert judged[0]["promoted"]
    assert judged[0]["champion_before"] == "r1"
    append_weights(root, "c", candidate)
    append_weights(root, "r2", rival)
    commit_run(root, "r2")
    assert tables.swap_champion(root, judged[1], crown_row("r2"))
    decision = crown(root, "c", candidate, True, holdout, 0.0, Promotion(*judged, None))
    history = tables.read(root, tables.CHAMPIONS).select(["run_id", "previous", "version"])
    return decision, sorted(history.to_pylist(), key=lambda row: row["version"])


def test_crown_decides_again_against_a_champion_crowned_meanwhile_and_beats_it(
    champion_r1, holdout
):
    best, better = model([2, -1], 1), model([1.5, -1], 1)
    decision, history = crowned_meanwhile(champion_r1, holdout, best, better)
    assert decision["promoted"]
    assert decision["champion_before"] == "r2"  # decided again, against r2
    assert history == [
        {"run_id": "r1", "previous": None, "version": 0},
        {"run_id": "r2", "previous": "r1", "version": 1},
        {"run_id": "c", "previous": "r2", "version": 2},
    ]


def test_crown_decides_again_against_a_champion_crowned_meanwhile_and_loses(champion_r1, holdout):
    better, best = model([1.5, -1], 1), model([2, -1], 1)
    decision, history = crowned_meanwhile(champion_r1, holdout, better, best)
    assert not decision["promoted"]
    assert decision["reason"].startswith("holdout MSE worse than champion r2: y:")
    assert [row["run_id"] for row in history] == ["r1", "r2"]
    assert read_champion(champion_r1)["run_id"] == "r2"


def test_two_identical_runs_at_once_make_one_champion(champion_r1, holdout):
    # both beat r1; the twin crowned first is the same model: the second decides again, stays
    twin = model([2, -1], 1)
    decision, history = crowned_meanwhile(champion_r1, holdout, twin, model([2, -1], 1))
    assert not decision["promoted"]
    assert decision["reason"].startswith("holdout MSE equal to champion r2's on 50 rows")
    assert [row["run_id"] for row in history] == ["r1", "r2"]


def test_crown_of_a_run_the_gate_refused_changes_no_champion(champion_r1, holdout):
    worse = model([0, 0], 0)
    judged = judge(champion_r1, worse, True, holdout, 0.0)
    decision = crown(champion_r1, "c", worse, True, holdout, 0.0, Promotion(*judged, None))
    assert not decision["promoted"]
    assert tables.version_of(champion_r1, tables.CHAMPIONS) == 0


def test_a_promotion_whose_run_never_committed_is_not_the_champion(champion_r1):
    # A run that swapped itself in and died before its row of `runs`.
    assert tables.swap_champion(champion_r1, 0, crown_row("dead"))
    assert tables.current_champion(champion_r1)[1]["run_id"] == "dead"
    assert read_champion(champion_r1)["run_id"] == "r1"


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
