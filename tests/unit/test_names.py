"""What the UI's list of flow runs calls each run (flows/names.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from flows.names import is_named, name_for

DUE = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)


def test_a_run_is_named_for_what_it_does_on_what_and_when_in_utc():
    assert name_for("train-sales-model", {}, DUE) == "train-dataset-20261205T020000"
    assert name_for("score-sales", {}, DUE) == "score-score_sample.csv-20261205T020000"
    assert (
        name_for("watch-landing", {"landing": "s3://b/in"}, DUE) == "check-landing-20261205T020000"
    )
    paris = DUE.astimezone(timezone(timedelta(hours=1)))
    assert name_for("train-sales-model", {"data": "data/jan.csv"}, paris) == (
        "train-jan.csv-20261205T020000"
    )
    files = {"data": ["data/jan.csv", "s3://bucket/in/feb.csv", "data/mar.csv"]}
    assert name_for("train-sales-model", files, DUE) == "train-jan.csv+2-20261205T020000"


def test_a_name_given_at_creation_is_kept_prefects_random_one_is_not():
    assert is_named("train-sales-model", "train-dataset-by-hand")
    assert not is_named("train-sales-model", "rich-peacock")
    assert not is_named("watch-landing", "train-dataset-20261205T020000")
