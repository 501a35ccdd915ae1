"""watch-landing: record new files in the landing folder and retrain on all accepted data.

Deployed with an interval schedule (prefect.yaml: watch-landing/retrain-on-new-data), so a file
dropped into data/landing/ leads to a training run without anyone pressing a button.

    python -m flows.watch [--landing DIR] [--ledger DIR] [--base-data PATH] [--output DIR]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from flows.cli import run_flow
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
    found = check_landed_files(landing, ledger, settle_seconds, max_bad_fraction)
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


def summarize(result: dict[str, Any]) -> str:
    lines = [f"{status}: {', '.join(names) or '-'}" for status, names in result["found"].items()]
    manifest = result["trained"]
    lines.append(
        "no new data: no training" if manifest is None else f"trained run {manifest['run_id']}"
    )
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
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return run_flow(watch_landing, args, summarize)


if __name__ == "__main__":
    sys.exit(main())
