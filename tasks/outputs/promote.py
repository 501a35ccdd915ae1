"""Promotion: a new model becomes the champion only if it is at least as good as the current one
on the same holdout rows, and it converged. The champion pointer is a small JSON file under the
output root, replaced atomically; weights are read back from Parquet, never unpickled."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks.common.errors import PipelineError
from tasks.common.storage import table_path, write_json
from tasks.ingest.stats import Moments, moments_mse
from tasks.model.evaluate import INTERCEPT

CHAMPION_FILE = "champion.json"
LOCK_FILE = ".publish.lock"


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


def load_model(root: Path, run_id: str) -> LinearModel:
    """The model of a published run, from its weights Parquet."""
    path = table_path(root, "weights", run_id)
    if not path.exists():
        raise PipelineError(f"{path}: weights of run {run_id} not found")
    return model_from_weights(pd.read_parquet(path))


def read_champion(root: Path) -> dict[str, Any] | None:
    """The champion pointer, or None before the first promotion."""
    path = root / CHAMPION_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())


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
    most the champion's times (1 + tolerance). Returns the decision with its reason and figures.
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
    worse = [
        f"{t}: {c:.6g} > {h:.6g} x (1 + {tolerance:g})"
        for t, c, h in zip(candidate.targets, candidate_mse, champion_mse, strict=True)
        if c > h * (1 + tolerance)
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


def write_champion(root: Path, run_id: str, decision: dict[str, Any]) -> Path:
    """Atomically point the champion at `run_id`."""
    return write_json(
        root / CHAMPION_FILE,
        {
            "run_id": run_id,
            "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": decision["reason"],
            "holdout_mse": decision["candidate_holdout_mse"],
            "manifest": f"manifests/{run_id}.json",
        },
    )


@contextmanager
def output_lock(
    root: Path, timeout_seconds: float, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Exclusive lock on the output root for the publish step. The OS drops it when the holder
    dies, so a killed run never blocks the next one. While another process holds it,
    `on_wait` hears who (once per holder)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    with path.open("a+") as fh:
        deadline = time.monotonic() + timeout_seconds
        reported = None
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = path.read_text().strip() or "unknown"
                if on_wait is not None and holder != reported:
                    on_wait(
                        f"waiting for the publish lock on {root}: another run (pid {holder}) "
                        f"is publishing there; giving up after {timeout_seconds:g} s"
                    )
                    reported = holder
                if time.monotonic() >= deadline:
                    raise PipelineError(
                        f"another training run (pid {holder}) is publishing to {root}; gave up "
                        f"after {timeout_seconds:g} s"
                    ) from None
                time.sleep(0.2)
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        try:
            yield
        finally:
            fh.truncate(0)
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
