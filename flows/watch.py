"""watch-landing: record new files in the landing folder and retrain on all accepted data.

Deployed with an interval schedule (prefect.yaml: watch-landing/retrain-on-new-data), so a file
dropped into data/landing/ leads to a training run without anyone pressing a button.

    .venv/bin/python -m flows.watch [--landing DIR] [--ledger DIR] [--base-data PATH] [--output DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from flows.cli import add_common_options, run_flow
from flows.train import train_sales_model
from schemas.params import (
    DEFAULT_DATA,
    DEFAULT_LANDING,
    DEFAULT_LEDGER,
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_OUTPUT,
    DEFAULT_SETTLE_SECONDS,
    BadFraction,
    DataPaths,
    SettleSeconds,
)
from tasks.ledger import check_landed_files, files_to_train, record_training
from tasks.paths import (
    check_all,
    confine,
    data_roots,
    existing_folder,
    output_roots,
    resolve_inputs,
)


@flow(name="watch-landing")
def watch_landing(
    landing: str = DEFAULT_LANDING,
    ledger: str = DEFAULT_LEDGER,
    base_data: DataPaths = DEFAULT_DATA,
    output: str = DEFAULT_OUTPUT,
    settle_seconds: SettleSeconds = DEFAULT_SETTLE_SECONDS,
    max_bad_fraction: BadFraction = DEFAULT_MAX_BAD_FRACTION,
) -> dict[str, Any]:
    """Check new landed files; if any were accepted, train on the base data plus every accepted
    landed file. Returns what was found and, when it trained, the training manifest."""
    landing_dir, ledger_dir = check_watch_inputs(landing, ledger, base_data, output)
    found = check_landed_files(landing_dir, ledger_dir, settle_seconds, max_bad_fraction)
    untrained, accepted = files_to_train(ledger)
    if not untrained:
        return {"found": found, "trained": None}
    base = base_data if isinstance(base_data, list) else [base_data]
    state = train_sales_model(
        data=[*base, *accepted],
        output=output,
        max_bad_fraction=max_bad_fraction,
        return_state=True,
    )
    manifest = record_training(ledger, untrained, quote(state))
    return {"found": found, "trained": manifest}


def check_watch_inputs(
    landing: str, ledger: str, base_data: str | list[str], output: str
) -> tuple[Path, Path]:
    """(landing folder, ledger folder) once every path parameter is right (the landing folder
    must exist); otherwise one PipelineError listing every problem. Nothing is created."""
    roots = data_roots()
    found = check_all(
        {
            "landing": lambda: existing_folder(landing, roots, "landing"),
            "ledger": lambda: confine(ledger, roots, "ledger"),
            "base_data": lambda: resolve_inputs(base_data, roots),
            "output": lambda: confine(output, output_roots(), "output"),
        }
    )
    return found["landing"], found["ledger"]


def summarize(result: dict[str, Any]) -> str:
    """What the poll found, file by file with reasons, and what it trained."""
    found = result["found"]
    lines = [f"accepted: {', '.join(found['accepted']) or '-'}"]
    for status in ("failed", "duplicate"):
        lines.append(f"{status}:" + ("" if found[status] else " -"))
        lines += [
            f"  {name}: {reason.removeprefix(f'{name}: ')}"
            for name, reason in found[status].items()
        ]
    if found["waiting"]:
        lines.append(
            f"waiting to settle (modified less than settle_seconds ago; run again later): "
            f"{', '.join(found['waiting'])}"
        )
    manifest = result["trained"]
    if manifest is None:
        lines.append("nothing new to train on: no training run")
    else:
        promotion = manifest["promotion"]
        verdict = "promoted to champion" if promotion["promoted"] else "not promoted"
        lines.append(f"trained run {manifest['run_id']}: {verdict}: {promotion['reason']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.watch", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--landing", help=f"landing folder (default {DEFAULT_LANDING})")
    parser.add_argument("--ledger", help=f"ledger folder (default {DEFAULT_LEDGER})")
    parser.add_argument("--base-data", help=f"base training data (default {DEFAULT_DATA})")
    parser.add_argument("--output", help=f"output root (default {DEFAULT_OUTPUT})")
    parser.add_argument("--settle-seconds", help=f"default {DEFAULT_SETTLE_SECONDS}")
    parser.add_argument("--max-bad-fraction", help=f"default {DEFAULT_MAX_BAD_FRACTION}")
    add_common_options(parser)
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v not in (None, False)}
    return run_flow(
        watch_landing,
        args,
        summarize,
        lambda checked: check_watch_inputs(
            checked["landing"], checked["ledger"], checked["base_data"], checked["output"]
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
