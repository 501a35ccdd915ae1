"""The filesystem layer (tasks/common/store.py) on a real S3 API server and on the local disk:
the same calls, the same answers."""

from __future__ import annotations

import pytest

from tasks.common import store
from tasks.common.errors import PipelineError


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path):
    """A fresh folder: a local one, or a prefix of a fresh bucket."""
    if request.param == "local":
        return str(tmp_path / "folder")
    request.getfixturevalue("s3_env")
    return request.getfixturevalue("s3_bucket") + "/folder"


def test_objects_are_written_read_by_range_and_listed_alike_on_disk_and_bucket(folder):
    location = store.join(folder, "sub", "data.csv")
    store.write(location, b"a,b\n1,2\n3,4\n")
    assert store.size(location) == 12
    assert bytes(store.read_range(location, 4, 8)) == b"1,2\n"
    with store.open_input(location) as fh:
        assert fh.readline() == b"a,b\n"
        buffer = bytearray(4)
        assert fh.readinto(buffer) == 4
        assert bytes(buffer) == b"1,2\n"
    assert [entry.location for entry in store.list_files(folder)] == [location]
    assert store.exists(location)
    assert not store.exists(location + ".missing")


def test_of_two_creates_of_one_object_exactly_one_wins(folder):
    location = store.join(folder, "claim")
    assert store.create(location, b"first")
    assert not store.create(location, b"second")
    assert store.read(location) == b"first"


def test_a_missing_bucket_is_one_error_naming_it(s3_env):
    with pytest.raises(PipelineError, match=r"s3://no-such-bucket-here/x: no such bucket"):
        store.check_reachable("s3://no-such-bucket-here/x")


def test_an_endpoint_that_does_not_answer_is_one_error_naming_the_uri(s3_env, monkeypatch):
    from scripts.local_prefect import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv(store.RETRY_SECONDS_ENV, "1")
    store.forget_clients()
    with pytest.raises(PipelineError, match=r"s3://bucket/key: cannot reach the object store"):
        store.size("s3://bucket/key")


def test_a_write_that_fails_half_way_leaves_no_object(folder):
    location = store.join(folder, "part.parquet")

    def write_half() -> None:
        with store.open_output(location) as sink:
            sink.write(b"half of it")
            raise RuntimeError("the writer died")

    with pytest.raises(RuntimeError, match="the writer died"):
        write_half()
    assert not store.exists(location)
    assert store.list_files(folder) == []


def test_a_streamed_write_of_many_buffers_lands_whole_or_not_at_all(folder):
    # several of a local file's write buffers (tasks/common/store.py LOCAL_WRITE_BUFFER)
    data = bytes(range(256)) * (3 * store.LOCAL_WRITE_BUFFER // 256) + b"tail"
    location = store.join(folder, "big.bin")
    with store.open_output(location) as sink:
        for at in range(0, len(data), 300_000):
            sink.write(data[at : at + 300_000])
    assert store.read(location) == data

    def fail_after_parts() -> None:
        with store.open_output(store.join(folder, "failed.bin")) as sink:
            sink.write(data)
            raise RuntimeError("the writer died")

    with pytest.raises(RuntimeError, match="the writer died"):
        fail_after_parts()
    assert [entry.location for entry in store.list_files(folder)] == [location]


def test_a_local_write_the_disk_refuses_is_an_os_error_with_its_errno(tmp_path):
    import errno

    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OSError, match="under") as found:
        store.write(str(blocker / "under" / "x"), b"1")
    assert found.value.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENOENT)
