"""The ledger and the landing check on a bucket: files landed under an s3:// prefix, the ledger
beside them, checks on two machines sharing nothing but the bucket."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from flows.dataset import describe
from flows.land import land as land_file
from flows.watch import check_watch_inputs
from schemas.params import DATASET, RunConfig
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS
from tasks.common import store
from tasks.common.errors import PipelineError
from tasks.common.paths import DATA_ROOTS_ENV, data_roots
from tasks.landing.check import CHECK_TIMEOUT_SECONDS, check_landed
from tasks.landing.ledger import (
    LandedFile,
    claim_check,
    landed_files,
    ledger_rows,
    record_verdict,
    training_inputs,
)
from tests.unit.test_ledger import NOTHING, csv_text, run_checkers


def check(landing, ledger, settle=3600.0):
    """A check with a settle time of an hour: on a bucket a listed object is complete."""
    config = RunConfig(DEFAULT_FEATURES, DEFAULT_TARGETS)
    return check_landed(landing, ledger, settle, config)


def keys(location):
    base = location.rstrip("/") + "/"
    return [entry.location[len(base) :] for entry in store.list_files(location)]


def test_two_checks_on_two_machines_record_each_landed_object_once(s3_env, s3_bucket, tmp_path):
    rounds = []
    for r in range(3):
        landing, ledger = f"{s3_bucket}/landing-{r}", f"{s3_bucket}/ledger-{r}"
        for i in range(6):
            store.write(f"{landing}/f{i}.csv", csv_text(8, seed=10 * r + i).encode())
        rounds.append((landing, ledger))
    outcomes = run_checkers(rounds, tmp_path, s3_env)
    names = [f"f{i}.csv" for i in range(6)]
    accepted = sorted(name for outcome in outcomes for name in outcome["accepted"])
    assert accepted == sorted(names * len(rounds))  # each file accepted by one of the two
    for _, ledger in rounds:
        assert sorted(r["name"] for r in ledger_rows(ledger)) == names
        assert {r["status"] for r in ledger_rows(ledger)} == {"accepted"}
        assert len(keys(f"{ledger}/entries")) == len(names)
        stored = sorted(store.name_of(p).split("_", 1)[1] for p in landed_files(ledger))
        assert stored == names


def test_a_landing_prefix_accepts_a_good_csv_and_rejects_a_bad_one(s3_env, s3_bucket):
    landing, ledger = f"{s3_bucket}/landing", f"{s3_bucket}/ledger"
    good = csv_text(10).encode()
    store.write(f"{landing}/good.csv", good)
    store.write(f"{landing}/bad.csv", b"country;price_k\nA;1\n")
    store.write(f"{landing}/notes.txt", b"not a csv")
    outcome = check(landing, ledger)
    (reason,) = outcome["failed"].values()
    assert outcome == {**NOTHING, "accepted": ["good.csv"], "failed": {"bad.csv": reason}}
    assert reason.startswith("bad.csv: header does not match")
    rows = {r["name"]: r for r in ledger_rows(ledger)}
    assert (rows["bad.csv"]["status"], rows["bad.csv"]["reason"]) == ("failed", reason)
    digest = hashlib.sha256(good).hexdigest()
    assert (rows["good.csv"]["status"], rows["good.csv"]["rows"]) == ("accepted", 10)
    # The checked bytes are kept in the bucket, beside the verdicts; nothing of the bad file.
    assert keys(f"{ledger}/files") == [f"{digest[:16]}_good.csv"]
    assert store.read(rows["good.csv"]["stored_path"]) == good
    assert len(keys(f"{ledger}/entries")) == 2
    assert check(landing, ledger) == NOTHING  # seen once


def test_a_resent_name_replaces_its_earlier_version_on_the_bucket(
    s3_env, s3_bucket, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the dataset's base file is data/sales.csv
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sales.csv").write_text(csv_text(5, seed=9))
    monkeypatch.setenv(DATA_ROOTS_ENV, f"data:{s3_bucket}")
    landing, ledger = f"{s3_bucket}/landing", f"{s3_bucket}/ledger"
    landing, ledger = check_watch_inputs(landing, ledger, "output")  # a prefix need not exist
    first, second = csv_text(10, seed=1), csv_text(12, seed=2)
    for text in (first, second):  # `make land` to the bucket, twice under one name
        source = tmp_path / "jan.csv"
        source.write_text(text)
        assert land_file(source, landing) == f"{landing}/jan.csv"
        assert not source.exists()
        assert check(landing, ledger)["accepted"] == ["jan.csv"]
    files = training_inputs(DATASET, ledger, data_roots())
    assert [store.name_of(f).split("_", 1)[-1] for f in files] == ["sales.csv", "jan.csv"]
    assert store.read(files[1]).decode() == second
    jan = [(r["rows"], r["in_dataset"]) for r in ledger_rows(ledger)]
    assert jan == [(10, False), (12, True)]
    assert len(keys(f"{ledger}/files")) == 2  # both versions kept for audit
    listing = describe(ledger)  # make dataset
    assert listing.count("_jan.csv") == 1
    assert "2 file(s)" in listing


def test_a_landing_bucket_that_does_not_exist_is_one_error_naming_it(s3_env, monkeypatch):
    monkeypatch.setenv(DATA_ROOTS_ENV, "s3://no-such-bucket")
    with pytest.raises(PipelineError) as caught:
        check_watch_inputs("s3://no-such-bucket/landing", "s3://no-such-bucket/ledger", "output")
    assert "s3://no-such-bucket/landing: no such bucket" in str(caught.value)
    assert "s3://no-such-bucket/ledger: no such bucket" in str(caught.value)


def test_a_check_whose_claim_was_taken_over_cannot_record_a_second_verdict(s3_env, s3_bucket):
    ledger, text = f"{s3_bucket}/ledger", csv_text(5).encode()
    store.write(f"{s3_bucket}/landing/jan.csv", text)
    landed = LandedFile(f"{s3_bucket}/landing/jan.csv", hashlib.sha256(text).hexdigest(), 99)
    long_ago = datetime.now(UTC) - timedelta(seconds=CHECK_TIMEOUT_SECONDS + 1)
    # A check so slow that its claim expired, and the check that took the content over.
    slow, slow_claim = claim_check(ledger, landed, "slow", CHECK_TIMEOUT_SECONDS, long_ago)
    taker, taker_claim = claim_check(ledger, landed, "taker", CHECK_TIMEOUT_SECONDS)
    assert (slow, taker) == ("claimed", "claimed")
    assert claim_check(ledger, landed, "third", CHECK_TIMEOUT_SECONDS) == ("in_progress", None)
    assert record_verdict(ledger, landed, taker_claim, "accepted", rows=5)
    assert not record_verdict(ledger, landed, slow_claim, "failed", reason="too late")
    assert [(r["status"], r["rows"]) for r in ledger_rows(ledger)] == [("accepted", 5)]
    assert claim_check(ledger, landed, "fourth", CHECK_TIMEOUT_SECONDS) == ("recorded", None)
