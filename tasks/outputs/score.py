"""Score: apply a trained model (the champion by default) to rows of features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from tasks.common.errors import PipelineError
from tasks.common.storage import RunInfo, manifest_path, move_parts, sweep_temp_files, write_json
from tasks.ingest.scan import Scan
from tasks.outputs.predict import Emitted
from tasks.outputs.promote import LinearModel, load_model, read_champion
from tasks.outputs.publish import all_or_nothing, build_manifest, publish_lock, write_quarantine


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


def publish_scores(run: RunInfo, scan: Scan, emitted: Emitted, model_run_id: str) -> dict[str, Any]:
    """Move the staged scores in, write `score_quarantine`, then the scoring manifest."""
    root = run.output_root
    with publish_lock(root), all_or_nothing() as outputs:
        sweep_temp_files(root)
        outputs["scores"] = move_parts(list(emitted.parts), root, "scores", run.run_id)
        outputs["score_quarantine"] = write_quarantine(
            scan, root, "score_quarantine", run, scan.fingerprint
        )
        manifest = build_manifest(run, scan.files, "completed", outputs, kind="score")
        manifest["model_run_id"] = model_run_id
        outputs["manifest"] = manifest_path(root, run.run_id)
        write_json(outputs["manifest"], manifest)
    return manifest


@task(cache_policy=NONE, task_run_name="publish-{run.run_id}")
def publish_score_run(
    run: RunInfo, scan: Scan, emitted: Emitted, model_run_id: str
) -> dict[str, Any]:
    """publish_scores as a task; returns the scoring manifest."""
    return publish_scores(run, scan, emitted, model_run_id)
