"""Promotion: a new model becomes the champion only if it is at least as good as the current one
on the same holdout rows, and it converged. The champion is the newest row of the `champions`
Delta table, moved by compare-and-swap (tasks/outputs/tables.py), so two runs deciding at once
cannot both win or lose a promotion; `champion.json` is a readable copy written after it. Weights
are read back from the weights table, never unpickled."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from schemas.outputs import RUNS
from schemas.params import RunConfig
from tasks.common import store
from tasks.common.errors import PipelineError, PublishError
from tasks.common.storage import write_json
from tasks.common.store import Location
from tasks.ingest.profile import compare_profiles
from tasks.ingest.stats import EXACT_FIT_SHARE, Moments, moments_mse
from tasks.model.evaluate import INTERCEPT
from tasks.outputs import tables

CHAMPION_FILE = "champion.json"


@dataclass(frozen=True)
class Uncertainty:
    """What prediction intervals need, per target: the least-squares estimate the inference
    describes (W [k, d], b [k]), its raw-scale covariance [k, d + 1, d + 1] (features, then the
    intercept; NaN where undefined), the residual variance [k], the degrees of freedom and the
    confidence level."""

    W: np.ndarray
    b: np.ndarray
    covariance: np.ndarray
    residual_variance: np.ndarray
    dof: int
    confidence: float


@dataclass(frozen=True)
class LinearModel:
    """Raw-scale weights W [k, d] and b [k] for named features and targets, and their
    uncertainty (None for weights written before it was published)."""

    features: tuple[str, ...]
    targets: tuple[str, ...]
    W: np.ndarray
    b: np.ndarray
    uncertainty: Uncertainty | None = None


def model_from_weights(weights: pd.DataFrame) -> LinearModel:
    """A weights table (target, feature, weight, and the covariance columns when present) ->
    LinearModel, in the table's row order."""
    targets = tuple(dict.fromkeys(weights["target"]))
    features = tuple(f for f in dict.fromkeys(weights["feature"]) if f != INTERCEPT)
    W, b = _coefficients(weights, "weight", targets, features)
    return LinearModel(features, targets, W, b, _uncertainty(weights, targets, features))


def _coefficients(
    weights: pd.DataFrame, column: str, targets: tuple[str, ...], features: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(W [k, d], b [k]) from one column of a weights table."""
    table = weights.pivot(index="target", columns="feature", values=column)
    W = table.loc[list(targets), list(features)].to_numpy(dtype=np.float64)
    return W, table.loc[list(targets), INTERCEPT].to_numpy(dtype=np.float64)


def _uncertainty(
    weights: pd.DataFrame, targets: tuple[str, ...], features: tuple[str, ...]
) -> Uncertainty | None:
    if "covariance" not in weights.columns:
        return None
    terms = [*features, INTERCEPT]
    covariance = np.full((len(targets), len(terms), len(terms)), np.nan)
    variance = np.full(len(targets), np.nan)
    for j, target in enumerate(targets):
        rows = weights[weights["target"] == target].set_index("feature").loc[terms]
        variance[j] = rows["residual_variance"].iloc[0]
        if rows["covariance"].notna().all():
            covariance[j] = np.stack([np.asarray(row, np.float64) for row in rows["covariance"]])
    W, b = _coefficients(weights, "ls_weight", targets, features)
    first = weights.iloc[0]
    dof, confidence = int(first["dof"]), float(first["confidence"])
    return Uncertainty(W, b, covariance, variance, dof, confidence)


def load_model(root: Location, run_id: str) -> LinearModel:
    """The model of a committed training run, from the weights table."""
    weights = None
    if tables.version_of(root, "weights") is not None:
        weights = tables.read(root, "weights", filters=[("run_id", "=", run_id)])
    if weights is None or not weights.num_rows:
        raise PipelineError(f"{root}: no weights of run {run_id} (see the runs table)")
    return model_from_weights(weights.drop_columns(["run_id"]).to_pandas())


def read_champion(root: Location) -> dict[str, Any] | None:
    """The current champion's row of the `champions` table, or None before the first one."""
    return current_champion(root)[1]


def current_champion(root: Location) -> tuple[int | None, dict[str, Any] | None]:
    """(the `champions` table's version, the champion): the newest promotion of a committed
    run. A run that swapped itself in and died before its row of `runs` was never committed,
    so the champion before it still holds."""
    version, row = tables.current_champion(root)
    if row is None or row["run_id"] in (committed := _committed(root)):
        return version, row
    rows = [r for r in tables.read(root, tables.CHAMPIONS).to_pylist() if r["run_id"] in committed]
    if not rows:
        return version, None
    best = max(rows, key=lambda r: r["version"])
    mse = best["holdout_mse"]
    return version, {**best, "holdout_mse": None if mse is None else json.loads(mse)}


def _committed(root: Location) -> set[str]:
    if tables.version_of(root, RUNS) is None:
        return set()
    return set(tables.read(root, RUNS, filters=None).column("run_id").to_pylist())


@dataclass(frozen=True)
class Promotion:
    """The gate's decision for a run, the `champions` version it was taken at (the expected
    version of the compare-and-swap) and the drift of the run's data from the champion's."""

    decision: dict[str, Any]
    champion_version: int | None
    drift: dict[str, Any] | None


def judge(
    root: Location,
    candidate: LinearModel,
    converged: bool,
    holdout: Moments,
    tolerance: float,
) -> tuple[dict[str, Any], int | None]:
    """decide_promotion against the champion as it is now, with the version read. A run crowned
    but not committed yet counts (its weights are committed before its crown): a run deciding
    beside it must beat it; if it dies instead, its promotion goes with its rows (the publish's
    undo, or the orphan sweep)."""
    version, champion_row = tables.current_champion(root)
    champion_id = None if champion_row is None else champion_row["run_id"]
    champion = None if champion_id is None else load_model(root, champion_id)
    decision = decide_promotion(candidate, converged, champion, champion_id, holdout, tolerance)
    return decision, version


def drift_against(
    root: Location, champion_id: str | None, profile: pd.DataFrame, threshold: float
) -> dict[str, Any] | None:
    """Compare this run's profile with the champion's (None before the first champion)."""
    if champion_id is None:
        return None
    reference = tables.read(root, "profile", filters=[("run_id", "=", champion_id)])
    if not reference.num_rows:
        return None
    shifts = compare_profiles(profile, reference.drop_columns(["run_id"]).to_pandas(), threshold)
    return {
        "reference_run": champion_id,
        "measure": "standardized mean shift |mean_new - mean_champion| / std_champion",
        "threshold": threshold,
        "columns": shifts.to_dict(orient="records"),
    }


@task(cache_policy=NONE, task_run_name="decide-promotion")
def decide_promotion_task(
    root: Location,
    weights: pd.DataFrame,
    converged: bool,
    holdout: Moments,
    profile: pd.DataFrame,
    config: RunConfig,
) -> Promotion:
    """The gate against the current champion, and the drift from the champion's data."""
    decision, version = judge(
        root, model_from_weights(weights), converged, holdout, config.promotion_tolerance
    )
    drift = drift_against(root, decision["champion_before"], profile, config.drift_threshold)
    return Promotion(decision, version, drift)


# Another run promoted between this run's decision and its swap this often: give up.
SWAP_ATTEMPTS = 5


def crown(
    root: Location,
    run_id: str,
    candidate: LinearModel,
    converged: bool,
    holdout: Moments,
    tolerance: float,
    promotion: Promotion,
) -> dict[str, Any]:
    """Make `run_id` the champion if the decision promotes it, by compare-and-swap from the
    version the decision was taken at; if another run was crowned meanwhile, decide again
    against that one. Returns the decision that held."""
    decision, version = promotion.decision, promotion.champion_version
    for _ in range(SWAP_ATTEMPTS):
        if not decision["promoted"]:
            return decision
        row = {
            "run_id": run_id,
            "reason": decision["reason"],
            "holdout_mse": decision["candidate_holdout_mse"] or {},
        }
        if tables.swap_champion(root, version, row):
            return decision
        decision, version = judge(root, candidate, converged, holdout, tolerance)
    raise PublishError(
        f"{root}: the champion moved {SWAP_ATTEMPTS} times while run {run_id} was deciding"
    )


# Holdout MSEs this close are one model's, up to the rounding of the sums (a re-run's blocks
# may merge in another order): about 1e-15 apart; two different fits differ by far more.
SAME_MODEL_RTOL = 1e-12


def decide_promotion(
    candidate: LinearModel,
    converged: bool,
    champion: LinearModel | None,
    champion_id: str | None,
    holdout: Moments,
    tolerance: float,
) -> dict[str, Any]:
    """Compare the candidate with the champion on the candidate's holdout rows, through their
    float64 statistics (the same MSE, without the rows).

    Promoted when training converged and, for every target, the candidate's holdout MSE is at
    most the champion's times (1 + tolerance) (or below the exact-fit floor, where MSEs are
    rounding), unless it equals the champion's on every target (to SAME_MODEL_RTOL, or both
    below that floor): that is the champion's own model again (a re-run on its data, with
    parameters that reach the same optimum), and replacing it would change nothing but the
    champion's name. Returns the decision with its reason and figures.
    """
    rows = holdout.n
    decision: dict[str, Any] = {
        "promoted": False,
        "reason": "",
        "champion_before": champion_id,
        "tolerance": tolerance,
        "holdout_rows": rows,
        "candidate_holdout_mse": None,
        "champion_holdout_mse": None,
    }
    if rows:
        decision["candidate_holdout_mse"] = _by_target(
            candidate.targets, holdout_mse(candidate, holdout)
        )
    if not converged:
        return {**decision, "reason": "training did not converge"}
    if champion is None:
        return {**decision, "promoted": True, "reason": "first model: no champion yet"}
    if (champion.features, champion.targets) != (candidate.features, candidate.targets):
        return {
            **decision,
            "reason": f"champion {champion_id} uses other columns "
            f"({', '.join(champion.features)} -> {', '.join(champion.targets)}); not comparable",
        }
    if not rows:
        return {**decision, "reason": "no holdout rows to compare on"}
    champion_mse = holdout_mse(champion, holdout)
    decision["champion_holdout_mse"] = _by_target(champion.targets, champion_mse)
    candidate_mse = np.array(list(decision["candidate_holdout_mse"].values()))
    if not (np.isfinite(candidate_mse).all() and np.isfinite(champion_mse).all()):
        return {**decision, "reason": "a holdout MSE is not finite: nothing to compare"}
    # MSEs below the exact-fit floor (a share of the targets' mean square) are rounding: equal,
    # whatever their ratio
    floor = EXACT_FIT_SHARE * (holdout.syy / rows + holdout.mean_y**2)
    if np.allclose(candidate_mse, champion_mse, rtol=SAME_MODEL_RTOL, atol=0.0) or (
        (np.maximum(candidate_mse, champion_mse) <= floor).all()
    ):
        return {
            **decision,
            "reason": f"holdout MSE equal to champion {champion_id}'s on {rows} rows (the same "
            "model): the champion stays",
        }
    worse = [
        f"{t}: {c:.6g} > {h:.6g} x (1 + {tolerance:g})"
        for t, c, h, f in zip(candidate.targets, candidate_mse, champion_mse, floor, strict=True)
        if c > max(h * (1 + tolerance), f)
    ]
    if worse:
        return {
            **decision,
            "reason": f"holdout MSE worse than champion {champion_id}: " + "; ".join(worse),
        }
    return {
        **decision,
        "promoted": True,
        "reason": f"holdout MSE not worse than champion {champion_id} on {rows} rows",
    }


def holdout_mse(model: LinearModel, holdout: Moments) -> np.ndarray:
    """The model's MSE per target on the rows summed in `holdout`."""
    return moments_mse(holdout, model.W, model.b)


def _by_target(targets: tuple[str, ...], values: np.ndarray) -> dict[str, float]:
    return {t: float(v) for t, v in zip(targets, values, strict=True)}


def write_champion_copy(root: Location) -> Location | None:
    """`champion.json`: a readable copy of the current champion (its run, when, why, the holdout
    MSE, its manifest), for readers of earlier releases and people; the table is the truth."""
    row = read_champion(root)
    if row is None:
        return None
    return write_json(
        store.join(root, CHAMPION_FILE),
        {
            "run_id": row["run_id"],
            "promoted_at": row["promoted_at"].isoformat(timespec="seconds"),
            "reason": row["reason"],
            "holdout_mse": row["holdout_mse"],
            "manifest": f"manifests/{row['run_id']}.json",
        },
    )
