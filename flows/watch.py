"""watch-landing: record new files at the landing location and retrain on the dataset.

Deployed with an interval schedule (prefect.yaml: watch-landing/retrain-on-new-data), so a file
dropped into data/landing/ leads to a training run without anyone pressing a button. Landing
and ledger may be folders or s3:// prefixes (the ledger lives where the outputs live).

    .venv/bin/python -m flows.watch [--landing DIR|URI] [--ledger DIR|URI] [--output DIR|URI]
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from flows.cli import exit_now, flow_parser, parse_flow_args, run_flow
from flows.names import current_run_name
from flows.train import train_sales_model
from schemas.params import (
    DATASET,
    DEFAULT_ID_COLUMN,
    DEFAULT_LANDING,
    DEFAULT_LEDGER,
    DEFAULT_MAX_BAD_FRACTION,
    DEFAULT_OUTPUT,
    DEFAULT_SETTLE_SECONDS,
    RUN_TIMEOUT_SECONDS,
    BadFraction,
    IdColumn,
    LandingDir,
    LedgerDir,
    OutputRoot,
    RunConfig,
    SettleSeconds,
    id_column_of,
)
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS
from tasks.common.paths import (
    check_all,
    confine,
    data_roots,
    existing_location,
    output_roots,
)
from tasks.common.store import check_reachable
from tasks.landing.check import check_landed_files, time_to_settle
from tasks.landing.events import DEBOUNCE_SECONDS
from tasks.landing.ledger import files_to_train, record_training, training_inputs

# The check, and the training it starts (which has its own timeout, RUN_TIMEOUT_SECONDS).
WATCH_TIMEOUT_SECONDS = RUN_TIMEOUT_SECONDS + 15 * 60


@flow(name="watch-landing", flow_run_name=current_run_name, timeout_seconds=WATCH_TIMEOUT_SECONDS)
def watch_landing(
    landing: LandingDir = DEFAULT_LANDING,
    ledger: LedgerDir = DEFAULT_LEDGER,
    output: OutputRoot = DEFAULT_OUTPUT,
    settle_seconds: SettleSeconds = DEFAULT_SETTLE_SECONDS,
    max_bad_fraction: BadFraction = DEFAULT_MAX_BAD_FRACTION,
    landed_at: datetime | None = None,
    id_column: IdColumn = DEFAULT_ID_COLUMN,
) -> dict[str, Any]:
    """Check new landed files; if any were accepted, train on the dataset (the base file plus
    every accepted landed file: what nightly trains on). Returns what was found and, when it
    trained, the training manifest (of the last training, when a second look found more).
    `landed_at` (set by the landed-event trigger: the event's time) makes the run look once
    more when the trigger's window has passed, so that it also takes every file of a burst whose
    later events the trigger absorbed; the first files are trained on at once, not after the
    window."""
    landing_dir, ledger_dir = check_watch_inputs(landing, ledger, output)
    config = RunConfig(
        DEFAULT_FEATURES,
        DEFAULT_TARGETS,
        id_column=id_column_of(id_column),
        max_bad_fraction=max_bad_fraction,
    )
    train = {
        "ledger": ledger,
        "output": output,
        "max_bad_fraction": max_bad_fraction,
        "id_column": id_column,
    }
    found = check_landed_files(landing_dir, ledger_dir, settle_seconds, config)
    trained = train_new_files(**train)
    if landed_at is not None:
        # Files announced within the window, or announced but not yet settled: one more look
        # when the window has passed and they have had their settle time.
        wait_out_burst(landed_at)
        time.sleep(time_to_settle(landing_dir, found["waiting"], settle_seconds))
        again = check_landed_files(landing_dir, ledger_dir, settle_seconds, config)
        found = merge_found(found, again)
        trained = train_new_files(**train) or trained
    return {"found": found, "trained": trained}


def train_new_files(
    ledger: str, output: str, max_bad_fraction: float, id_column: str
) -> dict[str, Any] | None:
    """Train on the dataset if the ledger has accepted files no training used yet; returns the
    training manifest (None: nothing new, no training)."""
    untrained = files_to_train(ledger)
    if not untrained:
        return None
    state = train_sales_model(
        data=DATASET,
        ledger=ledger,
        output=output,
        max_bad_fraction=max_bad_fraction,
        id_column=id_column,
        return_state=True,
    )
    return record_training(ledger, untrained, quote(state))


def merge_found(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two checks' outcomes as one: everything either recorded, and what still waits."""
    return {
        "accepted": first["accepted"] + second["accepted"],
        "failed": {**first["failed"], **second["failed"]},
        "duplicate": {**first["duplicate"], **second["duplicate"]},
        "in_progress": list(dict.fromkeys(first["in_progress"] + second["in_progress"])),
        "waiting": second["waiting"],
    }


def wait_out_burst(landed_at: datetime) -> None:
    """Sleep until DEBOUNCE_SECONDS after `landed_at` (at once if that has passed)."""
    until = landed_at.timestamp() + DEBOUNCE_SECONDS
    time.sleep(max(0.0, until - time.time()))


def check_watch_inputs(landing: str, ledger: str, output: str) -> tuple[str, str]:
    """(landing location, ledger location) once every location parameter is right (a landing
    folder must exist; a bucket must answer); otherwise one PipelineError listing every
    problem. Nothing is created."""
    roots = data_roots()
    found = check_all(
        {
            "landing": lambda: existing_location(landing, roots, "landing"),
            "ledger": lambda: _reachable(confine(ledger, roots, "ledger")),
            "dataset": lambda: training_inputs(DATASET, ledger, roots),
            "output": lambda: confine(output, output_roots(), "output"),
        }
    )
    return str(found["landing"]), str(found["ledger"])


def _reachable(location: str) -> str:
    check_reachable(location)
    return location


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
    if found["in_progress"]:
        lines.append(
            f"being checked by another check (it records them): {', '.join(found['in_progress'])}"
        )
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
    # landed_at is the landed event's time: set by the deployment's trigger only.
    parser = flow_parser(watch_landing, "python -m flows.watch", skip=("landed_at",))
    return run_flow(
        watch_landing,
        parse_flow_args(parser, argv),
        summarize,
        lambda checked: check_watch_inputs(
            checked["landing"], checked["ledger"], checked["output"]
        ),
    )


if __name__ == "__main__":
    exit_now(main())
