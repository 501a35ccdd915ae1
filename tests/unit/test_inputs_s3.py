"""Inputs in a bucket: `--data` naming an s3:// object, prefix or glob resolves as a local file,
folder or glob does, within the data roots; pass 1 reads an object as it reads a file (the same
rows kept and quarantined, the same sha256), however the file is cut into ranges and blocks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pandas.testing import assert_frame_equal

from tasks.common import store
from tasks.common.errors import InputFileError, ParameterError, PipelineError
from tasks.common.paths import DATA_ROOTS_ENV, data_roots, resolve_inputs
from tasks.ingest import blocks
from tasks.ingest.blocks import read_blocks
from tasks.ingest.csvfile import split_ranges
from tasks.ingest.scan import open_input, scan_file
from tests.conftest import HEADER, messy_csv, sales_rows
from tests.pipeline import LAYOUTS, config, kept_rows, quarantine

CSV = ("\n".join([HEADER, *sales_rows(5)]) + "\n").encode()
OBJECTS = [
    "in/a.csv",
    "in/b.csv",
    "in/.hidden.csv",
    "in/notes.txt",
    "in/sub/c.csv",
    "in/sub-x.csv",
    "docs/notes.txt",
]


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path) -> tuple[str, list]:
    """A folder holding OBJECTS, and the data roots allowing it: a local folder, or a
    bucket."""
    if request.param == "local":
        where, roots = str(tmp_path / "folder"), [tmp_path.resolve()]
    else:
        request.getfixturevalue("s3_env")
        where = request.getfixturevalue("s3_bucket")
        roots = [where]
    for name in OBJECTS:
        store.write(store.join(where, name), CSV)
    return where, roots


def names(found: list, where: str) -> list[str]:
    return [str(location)[len(where) + 1 :] for location in found]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("in/a.csv", ["in/a.csv"]),
        ("in", ["in/a.csv", "in/b.csv", "in/sub-x.csv"]),
        ("in/", ["in/a.csv", "in/b.csv", "in/sub-x.csv"]),
        ("in/*.csv", ["in/a.csv", "in/b.csv", "in/sub-x.csv"]),
        ("in/**/*.csv", ["in/a.csv", "in/b.csv", "in/sub/c.csv", "in/sub-x.csv"]),
        ("in/s*/?.csv", ["in/sub/c.csv"]),
        (["in/b.csv", "in/*.csv"], ["in/b.csv", "in/a.csv", "in/sub-x.csv"]),
    ],
)
def test_a_file_a_folder_and_a_glob_name_the_same_files_on_disk_and_in_a_bucket(
    folder, data, expected
):
    where, roots = folder
    given = [f"{where}/{item}" for item in data] if isinstance(data, list) else f"{where}/{data}"
    found = resolve_inputs(given, roots)
    assert names(found, where) == expected
    if where.startswith("s3://"):  # URIs stay URIs, for the store to read
        assert all(isinstance(location, str) for location in found)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("in/none.csv", "{where}/in/none.csv: file not found"),
        ("in/*.parquet", "no input files match '{where}/in/*.parquet'"),
        ("docs", "no input files: folder '{where}/docs' holds no *.csv file"),
    ],
)
def test_nothing_to_read_is_the_same_error_naming_the_path_or_uri(folder, data, message):
    where, roots = folder
    with pytest.raises(InputFileError) as found:
        resolve_inputs(f"{where}/{data}", roots)
    assert str(found.value) == message.format(where=where)


def test_a_missing_bucket_is_one_error_naming_the_uri(s3_env):
    uri = "s3://no-such-bucket-for-inputs/in/sales.csv"
    with pytest.raises(PipelineError) as found:
        resolve_inputs(uri, ["s3://no-such-bucket-for-inputs"])
    assert str(found.value).startswith(f"{uri}: no such bucket")


def test_an_endpoint_that_does_not_answer_is_one_error_naming_the_uri(s3_env, monkeypatch):
    from scripts.local_prefect import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv(store.RETRY_SECONDS_ENV, "1")
    store.forget_clients()
    # (a glob's error names the prefix it lists)
    for data, named in (("s3://bucket/in/a.csv",) * 2, ("s3://bucket/in/*.csv", "s3://bucket/in")):
        with pytest.raises(PipelineError) as found:
            resolve_inputs(data, ["s3://bucket"])
        message = str(found.value)
        assert message.startswith(f"{named}: cannot reach the object store")
        assert "\n" not in message
        assert "testing" not in message  # the secret key's value


def test_a_uri_outside_the_data_roots_is_refused_naming_it(s3_env, s3_bucket, monkeypatch):
    monkeypatch.setenv(DATA_ROOTS_ENV, f"{s3_bucket}/allowed")
    for name in ("allowed/a.csv", "other/a.csv", "allowed-other/a.csv"):
        store.write(f"{s3_bucket}/{name}", CSV)
    assert resolve_inputs(f"{s3_bucket}/allowed/a.csv", data_roots()) == [
        f"{s3_bucket}/allowed/a.csv"
    ]
    refused = {
        f"{s3_bucket}/other/a.csv": f"{s3_bucket}/other/a.csv",
        f"{s3_bucket}/allowed-other/a.csv": f"{s3_bucket}/allowed-other/a.csv",
        f"{s3_bucket}/allowed/../other/a.csv": f"{s3_bucket}/allowed/../other/a.csv",
        f"{s3_bucket}/other": f"{s3_bucket}/other",
        f"{s3_bucket}/other/*.csv": f"{s3_bucket}/other",  # a glob: its folder
        f"{s3_bucket}/*/a.csv": s3_bucket,
    }
    for data, named in refused.items():
        with pytest.raises(ParameterError) as found:
            resolve_inputs(data, data_roots())
        assert str(found.value) == (
            f"parameter data: '{named}' is outside the allowed folders ({s3_bucket}/allowed); "
            f"set {DATA_ROOTS_ENV} to allow another"
        )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pass1_reads_an_object_as_it_reads_the_same_file(s3_env, s3_bucket, tmp_path, layout):
    path = messy_csv(tmp_path / "sales.csv", seed=3, rows=200)
    uri = f"{s3_bucket}/in/sales.csv"
    store.write(uri, path.read_bytes())
    run = config(layout)
    from_file = scan_file(path, 0, run, tmp_path / "file")
    from_object = scan_file(uri, 0, run, tmp_path / "object")
    if layout == "tiny ranges":  # several ranges: the hash pass read the object too
        assert len(split_ranges(open_input(uri, run), run.split_bytes)) > 5
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    file, obj = from_file.files[0], from_object.files[0]
    assert (obj.path, obj.sha256) == (uri, sha256)
    assert (obj.size_bytes, obj.rows, obj.accepted, obj.quarantined) == (
        file.size_bytes, file.rows, file.accepted, file.quarantined
    )  # fmt: skip
    kept = kept_rows(from_object)
    assert set(kept["source_file"]) == {uri}
    assert_frame_equal(
        kept.drop(columns="source_file"), kept_rows(from_file).drop(columns="source_file")
    )
    records = quarantine(from_object)
    assert set(records["source_file"]) == {uri}
    assert {"duplicate key", "wrong field count"} <= set(records["reason"])
    assert_frame_equal(
        records.drop(columns="source_file"),
        quarantine(from_file).drop(columns="source_file"),
    )


def test_a_missing_object_is_one_error_naming_its_uri(s3_env, s3_bucket, tmp_path):
    uri = f"{s3_bucket}/in/none.csv"
    with pytest.raises(InputFileError) as found:
        scan_file(uri, 0, config(), tmp_path / "staging")
    assert str(found.value) == f"{uri}: file not found"


def test_a_range_of_an_object_cut_short_since_it_was_planned_ends_where_it_ends(folder):
    where, _ = folder
    location = f"{where}/in/long.csv"
    data = ("\n".join([HEADER, *sales_rows(100)]) + "\n").encode()
    store.write(location, data)
    file = open_input(location, config())
    span = split_ranges(file, 0)[0]
    store.write(location, data[: len(data) // 2])
    found = list(read_blocks(location, span, 64, hashlib.sha256()))
    assert b"".join(bytes(b.data) for b in found) == data[file.data_start : len(data) // 2]
    store.write(location, data[: file.data_start - 1])  # now ending before the range starts
    assert list(read_blocks(location, span, 64, hashlib.sha256())) == []


def test_a_local_path_is_still_a_path(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(CSV)
    assert resolve_inputs(str(path), [tmp_path.resolve()]) == [Path(path)]


@pytest.mark.parametrize("read_bytes", [100, 1000])
def test_a_range_read_in_many_requests_gives_every_byte_once_in_whole_lines(
    folder, monkeypatch, read_bytes
):
    where, _ = folder
    monkeypatch.setattr(blocks, "READ_BYTES", read_bytes)  # many requests, several under way
    location = f"{where}/in/long.csv"
    data = ("\n".join([HEADER, *sales_rows(100)]) + "\n").encode()
    store.write(location, data)
    file = open_input(location, config())
    span = split_ranges(file, 0)[0]
    found = list(read_blocks(location, span, 64, hashlib.sha256()))
    assert b"".join(bytes(b.data) for b in found) == data[file.data_start :]
    assert all(bytes(b.data).endswith(b"\n") for b in found)
    assert sum(b.lines for b in found) == 100
    store.write(location, data[: len(data) // 2])  # cut short since it was planned
    found = list(read_blocks(location, span, 64, hashlib.sha256()))
    assert b"".join(bytes(b.data) for b in found) == data[file.data_start : len(data) // 2]
