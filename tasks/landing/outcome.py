"""What became of a landed file, as the ledger and the outputs tell it: the landing check's
verdict (accepted with its row counts, rejected with the reason, or the same content as a file
already recorded), then the training run that used it and the promotion gate's decision.
`make land` waits for it and prints it (flows/land.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tasks.common import store
from tasks.common.storage import manifest_path
from tasks.landing.ledger import ledger_rows


@dataclass(frozen=True)
class Outcome:
    """A landed file's fate so far: `done` once nothing more will happen to it; `failed`
    when it was rejected or its training run failed."""

    line: str
    done: bool
    failed: bool = False


def outcome_of(
    name: str, sha256: str, rows: list[dict[str, Any]], output: store.Location
) -> Outcome | None:
    """The outcome of the file `name` with content `sha256`, from the ledger's rows (see
    ledger_rows) and the training run's manifest under `output`; None before its check."""
    row = next((r for r in rows if r["name"] == name and r["sha256"] == sha256), None)
    if row is None:
        return None
    reason = str(row["reason"]).removeprefix(f"{name}: ")  # the line names the file already
    if row["status"] == "failed":
        return Outcome(f"{name}: rejected: {reason}", done=True, failed=True)
    if row["status"] != "accepted":
        return Outcome(f"{name}: {row['status']}: {reason}", done=True)
    accepted = (
        f"{name}: accepted ({row['rows']} rows: {row['accepted']} accepted, "
        f"{row['quarantined']} quarantined)"
    )
    if not row["run_id"]:
        return Outcome(f"{accepted}; training ...", done=False)
    return _trained(accepted, row["run_id"], row["run_status"], output)


def _trained(accepted: str, run_id: str, status: str, output: store.Location) -> Outcome:
    try:
        manifest = json.loads(store.read(manifest_path(output, run_id)))
    except FileNotFoundError:
        manifest = {}
    if status != "completed":
        error = manifest.get("error") or "see the run in the Prefect UI"
        return Outcome(f"{accepted}; training run {run_id} {status}: {error}", True, True)
    promotion = manifest.get("promotion") or {}
    verdict = "promoted to champion" if promotion.get("promoted") else "not promoted"
    decision = f"{verdict}: {promotion['reason']}" if promotion else "no promotion decision"
    return Outcome(f"{accepted}; trained by run {run_id}: {decision}", done=True)


def outcomes(
    landed: dict[str, str], ledger: store.Location, output: store.Location
) -> dict[str, Outcome | None]:
    """outcome_of each landed file ({name: sha256}), from one read of the ledger."""
    rows = ledger_rows(ledger)
    return {name: outcome_of(name, sha256, rows, output) for name, sha256 in landed.items()}
