"""score-sales: predict units sold for rows of features with the champion model (or a given run).

python -m flows.score --data PATH --output DIR [--run-id ID]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows.cli import run_flow
from schemas.params import (
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_OUTPUT,
    DEFAULT_SCORE_DATA,
    BadFraction,
    DataPaths,
    RunId,
)
from schemas.sales import allowed_columns, required_columns
from tasks.ingest import read_inputs
from tasks.paths import confine, output_roots
from tasks.publish import check_data_quality
from tasks.score import load_scoring_model, score_rows
from tasks.storage import new_run
from tasks.validate import validate_rows


@flow(name="score-sales")
def score_sales(
    data: DataPaths = DEFAULT_SCORE_DATA,
    output: str = DEFAULT_OUTPUT,
    run_id: RunId = None,
    max_bad_fraction: BadFraction = DEFAULT_MAX_BAD_FRACTION,
) -> dict[str, Any]:
    """Score the feature rows at `data` with the champion (or `run_id`) from `output`; writes
    the `scores` and `score_quarantine` tables and returns the scoring manifest."""
    run = new_run(confine(output, output_roots(), "output"), dict(flow_run.parameters))
    model_run_id, model = load_scoring_model(run.output_root, run_id)
    raw = read_inputs(
        data, required_columns(model.features, ()), allowed_columns(model.features, ())
    )
    validated = validate_rows(raw, model.features, ())
    check_data_quality(run, validated, max_bad_fraction, "score")
    return score_rows(run, validated, model_run_id, model)


def summarize(manifest: dict[str, Any]) -> str:
    rows = manifest["rows"]
    root = Path(manifest["parameters"]["output"]).resolve()
    return "\n".join(
        [
            f"scoring run {manifest['run_id']} with model {manifest['model_run_id']}: "
            f"{rows['in']} rows in, {rows['accepted']} scored, {rows['quarantined']} quarantined",
            f"scores: {root / manifest['outputs']['scores']}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.score", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", help=f"CSV of features (default {DEFAULT_SCORE_DATA})")
    parser.add_argument("--output", help=f"output root with the models (default {DEFAULT_OUTPUT})")
    parser.add_argument("--run-id", help="score with this training run (default: the champion)")
    parser.add_argument("--max-bad-fraction", help=f"default {DEFAULT_MAX_BAD_FRACTION}")
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return run_flow(score_sales, args, summarize)


if __name__ == "__main__":
    sys.exit(main())
