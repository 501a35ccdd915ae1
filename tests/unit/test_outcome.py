"""What `make land` says became of a landed file, from the ledger's rows and the run's
manifest (tasks/landing/outcome.py)."""

from __future__ import annotations

import json

from tasks.landing.outcome import outcome_of

SHA = "ab" * 32


def row(status, **fields):
    base = {"name": "new.csv", "sha256": SHA, "status": status, "reason": None, "rows": 40,
            "accepted": 38, "quarantined": 2, "run_id": None, "run_status": None}  # fmt: skip
    return {**base, **fields}


def manifest(output, run_id, **fields):
    (output / "manifests").mkdir(parents=True, exist_ok=True)
    (output / "manifests" / f"{run_id}.json").write_text(json.dumps(fields))


def test_each_stage_of_a_landed_files_fate_reads_as_one_line(tmp_path):
    assert outcome_of("new.csv", SHA, [], tmp_path) is None  # not checked yet
    assert outcome_of("new.csv", SHA, [row("accepted", sha256="cd" * 32)], tmp_path) is None

    rejected = outcome_of(
        "new.csv", SHA, [row("failed", reason="missing column 'tax_k'")], tmp_path
    )
    assert (rejected.line, rejected.done, rejected.failed) == (
        "new.csv: rejected: missing column 'tax_k'",
        True,
        True,
    )
    same = outcome_of("new.csv", SHA, [row("duplicate", reason="same content as a.csv")], tmp_path)
    assert (same.line, same.done, same.failed) == (
        "new.csv: duplicate: same content as a.csv",
        True,
        False,
    )
    waiting = outcome_of("new.csv", SHA, [row("accepted")], tmp_path)
    assert not waiting.done

    promotion = {"promoted": False, "reason": "holdout MSE worse than champion r0: y: 2 > 1"}
    manifest(tmp_path, "r1", status="completed", promotion=promotion)
    trained = outcome_of("new.csv", SHA, [row("accepted", run_id="r1", run_status="completed")],
                         tmp_path)  # fmt: skip
    assert trained.line == (
        "new.csv: accepted (40 rows: 38 accepted, 2 quarantined); trained by run r1: not "
        "promoted: holdout MSE worse than champion r0: y: 2 > 1"
    )
    assert (trained.done, trained.failed) == (True, False)

    manifest(tmp_path, "r2", status="failed", error="training diverged at epoch 3")
    broken = outcome_of("new.csv", SHA, [row("accepted", run_id="r2", run_status="failed")],
                        tmp_path)  # fmt: skip
    assert broken.line.endswith("; training run r2 failed: training diverged at epoch 3")
    assert broken.failed
