"""Ledger: each landed file processed once by content; incomplete files wait; failures recorded."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from schemas.params import RunConfig
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS
from tasks.landing import check_landed, is_complete
from tasks.ledger import ledger_rows, mark_trained, open_ledger, untrained_files
from tests.conftest import HEADER, sales_rows

NOTHING = {"accepted": [], "failed": {}, "duplicate": {}, "waiting": []}


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
    with open_ledger(ledger) as conn:
        assert len(untrained_files(conn)) == 1


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
    assert not is_complete(path, settle_seconds=5.0)
    assert check(dirs, settle=5.0) == {**NOTHING, "waiting": ["jan.csv"]}
    mtime = path.stat().st_mtime
    assert not is_complete(path, settle_seconds=5.0, now=mtime + 4.9)
    assert is_complete(path, settle_seconds=5.0, now=mtime + 5.0)
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
    with open_ledger(ledger) as conn:
        pending = untrained_files(conn)
        mark_trained(conn, pending, "run-1", "completed")
        assert untrained_files(conn) == []
    (row,) = ledger_rows(ledger)
    assert (row["run_id"], row["run_status"]) == ("run-1", "completed")


def test_accepted_files_are_kept_as_read_only_copies_named_by_content(dirs):
    landing, ledger = dirs
    original = csv_text(10, seed=4)
    path = land(landing, "feb.csv", original)
    check(dirs)
    (row,) = ledger_rows(ledger)
    stored = ledger / "files" / f"{hashlib.sha256(original.encode()).hexdigest()[:16]}_feb.csv"
    assert row["stored_path"] == str(stored)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o444
    # The landed file changes, then goes away: the checked bytes stay in the store.
    path.write_text(csv_text(3, seed=5, extra=["BAD,x,1,1,1"]))
    path.unlink()
    assert stored.read_text() == original
    with open_ledger(ledger) as conn:
        assert untrained_files(conn) == [str(stored)]


def test_only_files_the_ledger_has_not_seen_are_reported_as_settling(dirs):
    landing, _ = dirs
    land(landing, "jan.csv", csv_text(5))
    assert check(dirs)["accepted"] == ["jan.csv"]
    land(landing, "jan.csv", csv_text(5), age=-3600)  # touched again, same bytes
    land(landing, "feb.csv", csv_text(6, seed=1), age=-3600)  # new, still being written
    assert check(dirs) == {**NOTHING, "waiting": ["feb.csv"]}


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
