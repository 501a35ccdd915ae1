"""Score: apply a trained model (the champion by default) to rows of features."""

from __future__ import annotations

from typing import Any

from deltalake.exceptions import DeltaError
from prefect import task
from prefect.cache_policies import NONE

from tasks.common.errors import PipelineError, PublishError
from tasks.common.storage import RunInfo, describe_error
from tasks.common.store import Location
from tasks.ingest.scan import Scan
from tasks.outputs.predict import Emitted
from tasks.outputs.promote import LinearModel, load_model, read_champion
from tasks.outputs.publish import (
    after_commit,
    build_manifest,
    commit_quarantine,
    committing,
    outputs_of,
)


def choose_model(root: Location, run_id: str | None) -> tuple[str, LinearModel]:
    """The given run's model, or the champion's; read from the weights table."""
    if run_id is None:
        champion = read_champion(root)
        if champion is None:
            raise PipelineError(
                f"no champion model in {root} yet: train one first (make run) or pass --run-id"
            )
        run_id = champion["run_id"]
    return run_id, load_model(root, run_id)


def commit_scores(
    run: RunInfo, scan: Scan, scored: Emitted, model_run_id: str, keep_runs: int
) -> dict[str, Any]:
    """Commit a scoring run: the scores pass 2 wrote, `score_quarantine`, then its row of
    `runs` (with the model that scored). Returns the scoring manifest."""
    with committing(run) as commit:
        commit.parts("scores", list(scored.parts), scored.schema, scored.described)
        commit_quarantine(commit, scan, "score_quarantine")
        outputs = outputs_of(run, ["scores", "score_quarantine"])
        manifest = build_manifest(run, scan.files, "completed", outputs, kind="score")
        manifest["model_run_id"] = model_run_id
        commit.finish(manifest)
    after_commit(run.output_root, manifest, keep_runs)
    return manifest


@task(cache_policy=NONE, task_run_name="commit-{run.run_id}")
def commit_scores_task(
    run: RunInfo, scan: Scan, scored: Emitted, model_run_id: str, keep_runs: int
) -> dict[str, Any]:
    """commit_scores as a task; returns the scoring manifest."""
    try:
        return commit_scores(run, scan, scored, model_run_id, keep_runs)
    except (OSError, DeltaError) as exc:  # a store that takes no more (disk full, a quota)
        raise PublishError(
            f"{run.output_root}: could not commit run {run.run_id} ({describe_error(exc)})"
        ) from exc
