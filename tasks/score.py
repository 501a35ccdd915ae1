"""Score: apply a trained model (the champion by default) to rows of features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from schemas.outputs import QuarantineTable, scores_schema
from schemas.sales import ID_COLUMN
from tasks.errors import PipelineError
from tasks.evaluate import linear_predict
from tasks.promote import LinearModel, load_model, read_champion
from tasks.publish import all_or_nothing, build_manifest, publish_lock
from tasks.storage import (
    RunInfo,
    data_fingerprint,
    manifest_path,
    sweep_temp_files,
    write_json,
    write_table,
)
from tasks.validate import ValidatedData


def choose_model(root: Path, run_id: str | None) -> tuple[str, LinearModel]:
    """The given run's model, or the champion's; read from the weights Parquet."""
    if run_id is None:
        pointer = read_champion(root)
        if pointer is None:
            raise PipelineError(
                f"no champion model in {root} yet: train one first (make run) or pass --run-id"
            )
        run_id = pointer["run_id"]
    return run_id, load_model(root, run_id)


def score_frame(accepted: pd.DataFrame, model: LinearModel, model_run_id: str) -> pd.DataFrame:
    """Accepted rows -> id, features, predicted_<target> (X @ W.T + b), model run, source."""
    predicted = linear_predict(accepted[list(model.features)].to_numpy(), model.W, model.b)
    out = accepted[[ID_COLUMN, *model.features]].copy()
    for j, target in enumerate(model.targets):
        out[f"predicted_{target}"] = predicted[:, j]
    out["model_run_id"] = model_run_id
    out["source_file"] = accepted["source_file"].to_numpy()
    out["source_line"] = accepted["source_line"].to_numpy()
    return out


def publish_scores(
    run: RunInfo, data: ValidatedData, scores: pd.DataFrame, model: LinearModel, model_run_id: str
) -> dict[str, Any]:
    """Write `scores` and `score_quarantine` for this scoring run, then its manifest."""
    scores_schema(model.features, model.targets).validate(scores, lazy=True)
    QuarantineTable.validate(data.quarantine, lazy=True)
    root = run.output_root
    fingerprint = data_fingerprint([f.sha256 for f in data.files])
    with publish_lock(root), all_or_nothing() as outputs:
        sweep_temp_files(root)
        outputs["scores"] = write_table(scores, root, "scores", run, fingerprint)
        outputs["score_quarantine"] = write_table(
            data.quarantine, root, "score_quarantine", run, fingerprint
        )
        manifest = build_manifest(run, data.files, "completed", outputs, kind="score")
        manifest["model_run_id"] = model_run_id
        outputs["manifest"] = manifest_path(root, run.run_id)
        write_json(outputs["manifest"], manifest)
    return manifest


@task(cache_policy=NONE)
def score_rows(
    run: RunInfo, data: ValidatedData, model_run_id: str, model: LinearModel
) -> dict[str, Any]:
    """Score the accepted rows and publish them; returns the scoring manifest."""
    scores = score_frame(data.accepted, model, model_run_id)
    return publish_scores(run, data, scores, model, model_run_id)
