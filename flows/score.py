"""score-sales: predict units sold for rows of features with the champion model (or a given run).

.venv/bin/python -m flows.score --data PATH --output DIR [--run-id ID]
"""

from __future__ import annotations

if __name__ == "__main__":
    # The command line runs in the warm runner's pre-imported process when one is up
    # (flows/warm.py): that exits here with the run's code; otherwise the run is this process's.
    from flows.warm import hand_over

    hand_over("flows.score")

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.cli import exit_now, flow_parser, parse_flow_args, run_flow
from flows.names import current_run_name
from flows.steps import (
    for_runner,
    on_cluster,
    open_inputs,
    run_pass2,
    scan_inputs,
)
from schemas.params import (
    DEFAULT_ID_COLUMN,
    DEFAULT_KEEP_RUNS,
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_OUTPUT,
    DEFAULT_SCORE_DATA,
    BadFraction,
    DataPaths,
    IdColumn,
    KeepRuns,
    OutputRoot,
    RunConfig,
    RunId,
    id_column_of,
)
from tasks.common import store
from tasks.common.paths import check_all, data_roots, resolve_inputs
from tasks.common.storage import new_run, output_root, shown, staging_area
from tasks.common.store import Location
from tasks.outputs.predict import score_task
from tasks.outputs.promote import LinearModel
from tasks.outputs.publish import check_data_quality
from tasks.outputs.retention import vacuum_hours
from tasks.outputs.score import choose_model, commit_scores_task

# Scoring reads and writes once per row, like training's pass 2: well under training's timeout.
SCORE_TIMEOUT_SECONDS = 2 * 3600


@flow(name="score-sales", flow_run_name=current_run_name, timeout_seconds=SCORE_TIMEOUT_SECONDS)
def score_sales(
    data: DataPaths = DEFAULT_SCORE_DATA,
    output: OutputRoot = DEFAULT_OUTPUT,
    run_id: RunId = None,
    max_bad_fraction: BadFraction = DEFAULT_MAX_BAD_FRACTION,
    id_column: IdColumn = DEFAULT_ID_COLUMN,
    keep_runs: KeepRuns = DEFAULT_KEEP_RUNS,
) -> dict[str, Any]:
    """Score the feature rows at `data` with the champion (or `run_id`) from `output`; writes
    the `scores` and `score_quarantine` tables and returns the scoring manifest."""
    paths, root, (model_run_id, model) = check_score_inputs(data, output, run_id)
    config = RunConfig(
        features=model.features,
        targets=(),
        id_column=id_column_of(id_column),
        holdout_fraction=0.0,
        max_bad_fraction=max_bad_fraction,
    )
    config = for_runner(config)
    plans = open_inputs(paths, config)
    run = new_run(root, dict(flow_run.parameters))
    with staging_area(root, run.run_id, shared=on_cluster()) as staging:
        scan = scan_inputs(plans, config, staging)
        check_data_quality(run, scan, max_bad_fraction, "score")
        scored = run_pass2(score_task, scan, model, model_run_id, config, root, run.run_id)
        return commit_scores_task(run, scan, scored, model_run_id, keep_runs)


def check_score_inputs(
    data: str | list[str], output: str, run_id: str | None
) -> tuple[list[Path], Location, tuple[str, LinearModel]]:
    """(input files, output root, (model run id, model)) once the paths are right and the
    model exists; otherwise one PipelineError listing every problem."""
    found = check_all(
        {
            "data": lambda: resolve_inputs(data, data_roots()),
            "output": lambda: output_root(output),
            "vacuum": vacuum_hours,  # retention after the commit reads it
        }
    )
    return found["data"], found["output"], choose_model(found["output"], run_id)


def summarize(manifest: dict[str, Any]) -> str:
    rows = manifest["rows"]
    root = shown(manifest["parameters"]["output"])
    return "\n".join(
        [
            f"scoring run {manifest['run_id']} with model {manifest['model_run_id']}: "
            f"{rows['in']} rows in, {rows['accepted']} scored, {rows['quarantined']} quarantined",
            f"scores: {store.join(root, manifest['outputs']['scores'])}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = flow_parser(score_sales, "python -m flows.score")
    return run_flow(
        score_sales,
        parse_flow_args(parser, argv),
        summarize,
        lambda checked: check_score_inputs(checked["data"], checked["output"], checked["run_id"]),
    )


if __name__ == "__main__":
    exit_now(main())
