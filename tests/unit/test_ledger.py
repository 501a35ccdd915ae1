"""Ledger: each landed file processed once by content; incomplete files wait; failures recorded."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from flows.dataset import describe
from flows.land import land as land_file
from schemas.params import DATASET, DEFAULT_SETTLE_SECONDS, RunConfig
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS
from tasks.ingest.csvfile import sha256_file
from tasks.landing.check import CHECK_TIMEOUT_SECONDS, check_landed, time_to_settle
from tasks.landing.ledger import (
    LandedFile,
    claim_check,
    landed_files,
    ledger_rows,
    mark_trained,
    training_inputs,
    untrained_files,
)
from tests.conftest import HEADER, REPO, sales_rows

NOTHING = {"accepted": [], "failed": {}, "duplicate": {}, "in_progress": [], "waiting": []}


def csv_text(n=10, seed=0, extra=()):
    return "\n".join([HEADER, *sales_rows(n, seed=seed), *extra]) + "\n"


@pytest.fixture
def dirs(tmp_path):
    landing = tmp_path / "landing"
    landing.mkdir()
    return landing, tmp_path / "ledger"


def land(landing, name, text, age=60.0):
    path = landing / name
    path.write_text(text)
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def check(dirs, settle=5.0, max_bad=0.1, on_file=None):
    landing, ledger = dirs
    config = RunConfig(DEFAULT_FEATURES, DEFAULT_TARGETS, max_bad_fraction=max_bad)
    return check_landed(landing, ledger, settle, config, on_file)


def test_new_file_is_accepted_stored_and_counted(dirs):
    landing, ledger = dirs
    land(landing, "jan.csv", csv_text(10, extra=["BAD,x,1,1,1"]))
    assert check(dirs, max_bad=0.5) == {**NOTHING, "accepted": ["jan.csv"]}
    (row,) = ledger_rows(ledger)
    assert (row["status"], row["rows"], row["accepted"], row["quarantined"]) == (
        "accepted",
        11,
        10,
        1,
    )
    content = (landing / "jan.csv").read_bytes()
    assert row["sha256"] == hashlib.sha256(content).hexdigest()
    stored = ledger / "files" / f"{row['sha256'][:16]}_jan.csv"
    assert row["stored_path"] == str(stored)
    assert stored.read_bytes() == content
    # Seen once: the next scan finds nothing new.
    assert check(dirs) == NOTHING


def test_same_content_under_another_name_is_a_duplicate(dirs):
    landing, ledger = dirs
    land(landing, "jan.csv", csv_text(10))
    check(dirs)
    land(landing, "jan-again.csv", csv_text(10))
    assert check(dirs)["duplicate"] == {"jan-again.csv": "same content as jan.csv"}
    statuses = {r["name"]: (r["status"], r["reason"]) for r in ledger_rows(ledger)}
    assert statuses["jan-again.csv"] == ("duplicate", "same content as jan.csv")
    assert len(untrained_files(ledger)) == 1


def test_same_name_with_new_content_is_processed(dirs):
    landing, ledger = dirs
    land(landing, "jan.csv", csv_text(10, seed=1))
    check(dirs)
    land(landing, "jan.csv", csv_text(12, seed=2))
    assert check(dirs)["accepted"] == ["jan.csv"]
    assert [r["rows"] for r in ledger_rows(ledger)] == [10, 12]


@pytest.mark.parametrize("name", [".jan.csv", "jan.csv.part", "jan.csv.tmp", "jan.txt", "jan.csv~"])
def test_files_being_written_or_hidden_are_not_picked_up(dirs, name):
    landing, _ = dirs
    land(landing, name, csv_text())
    assert check(dirs) == NOTHING


def test_recently_modified_file_waits_until_it_settles(dirs):
    landing, _ = dirs
    # Modified "in the future" of this check: however slow the machine, it has not settled.
    path = land(landing, "jan.csv", csv_text(), age=-3600)
    assert check(dirs, settle=5.0) == {**NOTHING, "waiting": ["jan.csv"]}
    mtime = path.stat().st_mtime
    assert time_to_settle(landing, ["jan.csv"], 5.0, now=mtime + 4.9) == pytest.approx(
        0.1, abs=1e-3
    )
    assert time_to_settle(landing, ["jan.csv"], 5.0, now=mtime + 5.0) == 0.0
    land(landing, "jan.csv", csv_text(), age=10)
    assert check(dirs, settle=5.0) == {**NOTHING, "accepted": ["jan.csv"]}


def test_rejected_file_is_marked_failed_and_others_go_on(dirs):
    landing, ledger = dirs
    land(landing, "a-broken.csv", "country;price_k\nA;1\n")
    land(landing, "b-all-bad.csv", csv_text(0, extra=["X,x,1,1,1", "Y,1,-1,1,1"]))
    land(landing, "c-good.csv", csv_text(5))
    progress = []
    outcome = check(dirs, on_file=lambda *call: progress.append(call))
    assert progress == [
        (1, 3, "a-broken.csv", "failed"),
        (2, 3, "b-all-bad.csv", "failed"),
        (3, 3, "c-good.csv", "accepted"),
    ]
    reasons = {r["name"]: r["reason"] for r in ledger_rows(ledger)}
    assert outcome == {
        **NOTHING,
        "accepted": ["c-good.csv"],
        "failed": {name: reasons[name] for name in ("a-broken.csv", "b-all-bad.csv")},
    }
    assert reasons["a-broken.csv"].startswith("a-broken.csv: header does not match")
    assert "no valid rows" in reasons["b-all-bad.csv"]
    assert sorted(p.name.split("_", 1)[1] for p in (ledger / "files").iterdir()) == ["c-good.csv"]


def test_trained_files_are_not_trained_again(dirs):
    landing, ledger = dirs
    land(landing, "jan.csv", csv_text(5))
    check(dirs)
    pending = untrained_files(ledger)
    mark_trained(ledger, pending, "run-1", "completed")
    assert untrained_files(ledger) == []
    (row,) = ledger_rows(ledger)
    assert (row["run_id"], row["run_status"]) == ("run-1", "completed")


def test_accepted_files_are_kept_as_copies_named_by_content(dirs):
    landing, ledger = dirs
    original = csv_text(10, seed=4)
    path = land(landing, "feb.csv", original)
    check(dirs)
    (row,) = ledger_rows(ledger)
    stored = ledger / "files" / f"{hashlib.sha256(original.encode()).hexdigest()[:16]}_feb.csv"
    assert row["stored_path"] == str(stored)
    # The landed file changes, then goes away: the checked bytes stay in the store.
    path.write_text(csv_text(3, seed=5, extra=["BAD,x,1,1,1"]))
    path.unlink()
    assert stored.read_text() == original
    assert untrained_files(ledger) == [str(stored)]


def test_only_files_the_ledger_has_not_seen_are_reported_as_settling(dirs):
    landing, _ = dirs
    land(landing, "jan.csv", csv_text(5))
    assert check(dirs)["accepted"] == ["jan.csv"]
    land(landing, "jan.csv", csv_text(5), age=-3600)  # touched again, same bytes
    land(landing, "feb.csv", csv_text(6, seed=1), age=-3600)  # new, still being written
    assert check(dirs) == {**NOTHING, "waiting": ["feb.csv"]}


def dataset_rows(ledger, base):
    """The data rows a training run on the dataset reads, by file name (stored copies are named
    `<sha256 prefix>_<name>`)."""
    rows = {}
    for path in training_inputs(DATASET, str(ledger), [base.parent.parent.resolve()]):
        name = path.name.split("_", 1)[-1]
        rows.setdefault(name, []).extend(path.read_text().splitlines()[1:])
    return rows


@pytest.fixture
def base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the dataset's base file is data/sales.csv
    path = tmp_path / "data" / "sales.csv"
    path.parent.mkdir()
    path.write_text(csv_text(5, seed=9))
    return path


def test_a_resent_name_replaces_its_earlier_version_in_the_dataset(dirs, base):
    landing, ledger = dirs
    first = sales_rows(10, seed=1)
    land(landing, "jan.csv", csv_text(10, seed=1))
    assert check(dirs)["accepted"] == ["jan.csv"]
    # The corrected re-send: the same ten rows and two more.
    land(landing, "jan.csv", csv_text(10, seed=1, extra=sales_rows(2, seed=2, start=10)))
    assert check(dirs)["accepted"] == ["jan.csv"]
    rows = dataset_rows(ledger, base)
    assert len(rows["jan.csv"]) == 12
    assert rows["jan.csv"][:10] == first
    # The ledger keeps both versions; only the newer one is in the dataset.
    jan = [(r["status"], r["rows"], r["in_dataset"]) for r in ledger_rows(ledger)]
    assert jan == [("accepted", 10, False), ("accepted", 12, True)]
    (pending,) = untrained_files(ledger)
    assert pending.endswith("_jan.csv")
    assert len(Path(pending).read_text().splitlines()) == 13
    # Both stored copies stay (an earlier run may have read the first).
    assert len(list((ledger / "files").glob("*_jan.csv"))) == 2
    listing = describe(str(ledger))  # make dataset
    assert listing.count("_jan.csv") == 1
    assert "2 file(s)" in listing


def test_a_rejected_resend_leaves_the_earlier_version_in_the_dataset(dirs, base):
    landing, ledger = dirs
    land(landing, "jan.csv", csv_text(10, seed=1))
    check(dirs)
    land(landing, "jan.csv", "country;price_k\nA;1\n")
    (reason,) = check(dirs)["failed"].values()
    assert reason.startswith("jan.csv: header does not match")
    earlier = ledger_rows(ledger)[0]["sha256"]
    assert reason.endswith(f"the dataset keeps the earlier jan.csv (sha256 {earlier[:12]})")
    assert len(dataset_rows(ledger, base)["jan.csv"]) == 10
    assert [(r["status"], r["in_dataset"]) for r in ledger_rows(ledger)] == [
        ("accepted", True),
        ("failed", False),
    ]
    # Re-sent as a copy of another file: a duplicate, and the earlier jan.csv stays too.
    land(landing, "feb.csv", csv_text(6, seed=2))
    land(landing, "jan.csv", csv_text(6, seed=2), age=30)
    assert check(dirs)["duplicate"] == {
        "jan.csv": f"same content as feb.csv; the dataset keeps the earlier jan.csv "
        f"(sha256 {earlier[:12]})"
    }
    assert sorted(dataset_rows(ledger, base)) == ["feb.csv", "jan.csv", "sales.csv"]


def test_the_landed_event_check_leaves_a_file_still_being_written(dirs):
    # What the trigger passes to the check it starts (prefect.yaml), else the flow's default.
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (deployment,) = [d for d in config["deployments"] if d["name"] == "retrain-on-new-data"]
    (trigger,) = deployment["triggers"]
    settle = trigger["parameters"].get("settle_seconds", DEFAULT_SETTLE_SECONDS)
    landing, ledger = dirs
    # A slow copy that paused for two seconds, announced by the watcher or `prefect event emit`.
    land(landing, "jan.csv", csv_text(4), age=2.0)  # 4 of its 10 rows so far
    assert check(dirs, settle=settle) == {**NOTHING, "waiting": ["jan.csv"]}
    assert not (ledger / "files").exists()


def test_a_file_whose_content_matches_its_announced_sha256_is_taken_at_once(dirs, tmp_path):
    landing, ledger = dirs
    whole = csv_text(10)
    digest = hashlib.sha256(whole.encode()).hexdigest()
    # A producer announces the content (`sha256sum jan.csv > jan.csv.sha256`) while the copy
    # is still going: what is there so far does not match, so it waits.
    (landing / "jan.csv.sha256").write_text(f"{digest}  jan.csv\n")
    land(landing, "jan.csv", csv_text(4), age=0)  # 4 of its 10 rows so far
    assert check(dirs, settle=10.0) == {**NOTHING, "waiting": ["jan.csv"]}
    # Complete: taken at once, without waiting out the settle time.
    land(landing, "jan.csv", whole, age=0)
    assert check(dirs, settle=10.0) == {**NOTHING, "accepted": ["jan.csv"]}
    # `make land` announces what it moves in the same way.
    source = tmp_path / "feb.csv"
    source.write_text(csv_text(8, seed=3))
    land_file(source, landing)
    assert check(dirs, settle=10.0) == {**NOTHING, "accepted": ["feb.csv"]}
    assert [r["name"] for r in ledger_rows(ledger)] == ["jan.csv", "feb.csv"]


def test_a_file_changed_between_its_hash_and_its_copy_is_not_accepted_under_the_old_hash(dirs):
    landing, ledger = dirs
    land(landing, "a.csv", csv_text(5, seed=1))
    land(landing, "b.csv", csv_text(5, seed=2))
    rewritten = csv_text(7, seed=3)

    def rewrite_b(done, total, name, status):
        # Every file is hashed before the first is checked: b.csv changes after its hash.
        if name == "a.csv":
            land(landing, "b.csv", rewritten)

    outcome = check(dirs, on_file=rewrite_b)
    assert outcome["accepted"] == ["a.csv"]
    assert check(dirs)["accepted"] == ["b.csv"]
    for row in ledger_rows(ledger):
        stored = Path(row["stored_path"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == row["sha256"]
    (b,) = [r for r in ledger_rows(ledger) if r["name"] == "b.csv"]
    assert b["sha256"] == hashlib.sha256(rewritten.encode()).hexdigest()


def _check_rounds(barrier, rounds, results, env):
    """One checker process: a machine of its own (HOME and TMPDIR its own, `env` applied
    before the store makes a client), checking each (landing, ledger) at the barrier."""
    import tempfile

    from tasks.common import store

    os.environ.update(env)
    tempfile.tempdir = None
    store.forget_clients()
    config = RunConfig(DEFAULT_FEATURES, DEFAULT_TARGETS)
    for landing, ledger in rounds:
        barrier.wait(timeout=120)
        try:
            results.put(("ok", check_landed(landing, ledger, 5.0, config)))
        except Exception:
            results.put(("error", traceback.format_exc()))


def run_checkers(rounds, tmp_path, env=None):
    """Two checker processes sharing nothing but the store, each checking every round at the
    same moment as the other; returns their outcomes."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    checkers = []
    for n in range(2):
        home = tmp_path / f"machine-{n}"
        home.mkdir()
        own = {**(env or {}), "HOME": str(home), "TMPDIR": str(home)}
        checkers.append(context.Process(target=_check_rounds, args=(barrier, rounds, results, own)))
    for checker in checkers:
        checker.start()
    outcomes = [results.get(timeout=180) for _ in range(2 * len(rounds))]
    for checker in checkers:
        checker.join(60)
        assert checker.exitcode == 0
    assert [text for kind, text in outcomes if kind == "error"] == []
    return [outcome for _, outcome in outcomes]


def test_two_checks_at_once_record_each_file_once(tmp_path):
    rounds = []
    for r in range(3):
        landing, ledger = tmp_path / f"landing-{r}", tmp_path / f"ledger-{r}"
        landing.mkdir()
        for i in range(6):
            land(landing, f"f{i}.csv", csv_text(8, seed=10 * r + i))
        rounds.append((str(landing), str(ledger)))
    outcomes = run_checkers(rounds, tmp_path)
    names = [f"f{i}.csv" for i in range(6)]
    accepted = sorted(name for outcome in outcomes for name in outcome["accepted"])
    assert accepted == sorted(names * len(rounds))  # each file accepted by one of the two
    for _, ledger in rounds:
        assert sorted(r["name"] for r in ledger_rows(ledger)) == names
        assert {r["status"] for r in ledger_rows(ledger)} == {"accepted"}
        assert sorted(Path(p).name.split("_", 1)[1] for p in landed_files(ledger)) == names


def test_a_claim_left_by_a_crashed_check_holds_its_file_only_until_it_expires(dirs):
    landing, ledger = dirs
    landed = []
    for name in ("feb.csv", "jan.csv"):
        path = land(landing, name, csv_text(5, seed=len(landed)))
        landed.append(LandedFile(str(path), sha256_file(path), path.stat().st_size))
    expired = datetime.now(UTC) - timedelta(seconds=CHECK_TIMEOUT_SECONDS + 1)
    # Two checks that claimed a file each and died: one just now, one a timeout ago.
    old, _ = claim_check(ledger, landed[0], "died-long-ago", CHECK_TIMEOUT_SECONDS, expired)
    new, _ = claim_check(ledger, landed[1], "just-died", CHECK_TIMEOUT_SECONDS)
    assert (old, new) == ("claimed", "claimed")
    assert check(dirs) == {**NOTHING, "accepted": ["feb.csv"], "in_progress": ["jan.csv"]}
    assert [r["name"] for r in ledger_rows(ledger)] == ["feb.csv"]


def test_an_announced_check_looks_again_once_its_waiting_files_have_settled(dirs):
    landing, _ = dirs
    young = land(landing, "a.csv", csv_text(), age=3)
    land(landing, "b.csv", csv_text(), age=8)
    now = young.stat().st_mtime + 3
    names = ["a.csv", "b.csv", "gone.csv"]
    assert time_to_settle(landing, names, 10.0, now) == pytest.approx(7.0)
    assert time_to_settle(landing, names, 10.0, now + 7) == 0.0
    land(landing, "a.csv", csv_text(), age=-3600)  # its clock ahead: at most the settle time
    assert time_to_settle(landing, names, 10.0) == 10.0
