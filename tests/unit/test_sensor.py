"""The bucket sensor (tasks/landing/sensor.py) against the S3 API server: what one poll of the
landing prefix announces, given what its cursor on the store remembers."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import landing_watcher
from tasks.common import store
from tasks.landing import sensor
from tasks.landing.events import landed_resource


class Sensor:
    """One sensor process: its memory between polls, and the events it emitted."""

    def __init__(self, bucket: str) -> None:
        self.landing = f"{bucket}/landing"
        self.cursor = sensor.cursor_location(f"{bucket}/ledger")
        self.seen: sensor.Seen | None = None  # a new process knows only its cursor

    def poll(self) -> list[str]:
        """The names announced by one poll."""
        emitted: list[str] = []
        fresh, self.seen = sensor.poll(self.landing, self.cursor, emitted.extend, self.seen)
        assert fresh == emitted
        return [store.name_of(location) for location in emitted]

    def land(self, name: str, data: bytes = b"a,b\n1,2\n") -> None:
        store.write(store.join(self.landing, name), data)


@pytest.fixture
def bucket_sensor(s3_env, s3_bucket) -> Sensor:
    return Sensor(s3_bucket)


def test_keys_arriving_out_of_lexical_order_are_each_announced_once(bucket_sensor):
    bucket_sensor.land("2026-12-03.csv")
    assert bucket_sensor.poll() == ["2026-12-03.csv"]
    bucket_sensor.land("2026-12-01.csv")  # a late producer: a key before the last one seen
    assert bucket_sensor.poll() == ["2026-12-01.csv"]
    bucket_sensor.land("2026-12-02.csv")
    assert bucket_sensor.poll() == ["2026-12-02.csv"]
    assert bucket_sensor.poll() == []


def test_an_unchanged_listing_announces_nothing(bucket_sensor):
    bucket_sensor.land("a.csv")
    bucket_sensor.land("b.csv")
    assert bucket_sensor.poll() == ["a.csv", "b.csv"]
    assert bucket_sensor.poll() == []
    assert bucket_sensor.poll() == []


def test_an_overwritten_key_with_new_content_is_announced_again(bucket_sensor):
    bucket_sensor.land("a.csv", b"a,b\n1,2\n")
    assert bucket_sensor.poll() == ["a.csv"]
    bucket_sensor.land("a.csv", b"a,b\n3,4\n")
    assert bucket_sensor.poll() == ["a.csv"]


def test_a_restarted_sensor_announces_only_what_arrived_since_including_while_it_was_down(
    s3_env, s3_bucket
):
    first = Sensor(s3_bucket)
    first.land("b.csv")
    first.land("c.csv")
    assert first.poll() == ["b.csv", "c.csv"]
    # The sensor is down; objects land meanwhile, one of them before every key it saw.
    first.land("a.csv")
    first.land("d.csv")
    restarted = Sensor(s3_bucket)
    assert restarted.poll() == ["a.csv", "d.csv"]
    assert restarted.poll() == []
    assert store.exists(f"{s3_bucket}/ledger/sensor/cursor.json")


def test_markers_hidden_partial_and_nested_objects_are_not_announced(bucket_sensor):
    for name in (
        "a.csv.sha256",
        ".a.csv.part",
        ".hidden.csv",
        "b.csv.part",
        "b.csv.tmp",
        "notes.txt",
        "older/c.csv",
    ):
        bucket_sensor.land(name)
    assert bucket_sensor.poll() == []
    bucket_sensor.land("a.csv")
    assert bucket_sensor.poll() == ["a.csv"]


def test_a_cursor_that_does_not_read_as_one_is_an_error_naming_it(bucket_sensor):
    store.write(bucket_sensor.cursor, b"last_key=a.csv")
    with pytest.raises(sensor.CursorError, match=rf"^{bucket_sensor.cursor}: not a sensor cursor"):
        bucket_sensor.poll()


def test_the_landed_event_names_a_local_file_or_an_object_by_its_location():
    assert landed_resource(Path("/srv/landing/2026-12-01.csv")) == {
        "prefect.resource.id": "sales-model.landing.2026-12-01.csv",
        "prefect.resource.name": "2026-12-01.csv",
        "sales-model.path": "/srv/landing/2026-12-01.csv",
    }
    assert landed_resource("s3://sales-lake/landing/2026-12-01.csv") == {
        "prefect.resource.id": "sales-model.landing.2026-12-01.csv",
        "prefect.resource.name": "2026-12-01.csv",
        "sales-model.path": "s3://sales-lake/landing/2026-12-01.csv",
    }


def test_a_sensor_on_a_missing_bucket_stops_with_one_error_line(s3_env, capsys):
    code = landing_watcher.main(
        ["--landing", "s3://no-such-bucket-here/landing", "--api-url", "http://127.0.0.1:9/api"]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert err == "error: s3://no-such-bucket-here/landing: no such bucket\n"


def test_an_announcement_that_failed_is_made_again_at_the_next_poll(bucket_sensor):
    bucket_sensor.land("a.csv")

    def server_down(locations: list[str]) -> None:
        raise OSError("connection refused")

    with pytest.raises(OSError, match="connection refused"):
        sensor.poll(bucket_sensor.landing, bucket_sensor.cursor, server_down)
    assert bucket_sensor.poll() == ["a.csv"]


def test_serve_on_a_missing_landing_bucket_fails_naming_it_before_starting_anything(
    s3_env, tmp_path
):
    from scripts.local_prefect import Stack, start

    stack = Stack(repo=tmp_path, state=tmp_path / ".run", home=tmp_path / ".prefect")
    with pytest.raises(RuntimeError, match=r"^s3://no-such-bucket-here/landing: no such bucket$"):
        start(stack, landing="s3://no-such-bucket-here/landing")
    assert not stack.state.exists()
