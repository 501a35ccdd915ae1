"""A real S3 API server for the tests: `moto_server` in its own process on 127.0.0.1 (delta-rs
reads are known to hang against moto running in a thread of the same process), one per test
session, stopped by its PID; a fresh bucket per test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from scripts import s3_server as s3_server_script
from scripts.s3_server import KEYS, REGION


@dataclass(frozen=True)
class S3Server:
    """The server's endpoint, and the settings every client of it takes."""

    endpoint: str

    def storage_options(self) -> dict[str, str]:
        """delta-rs' options for this server (conditional writes by ETag, as on AWS)."""
        return {**self.environment(), "conditional_put": "etag"}

    def filesystem(self, **options):
        """pyarrow's S3 filesystem on this server."""
        from pyarrow import fs

        return fs.S3FileSystem(
            access_key=KEYS["AWS_ACCESS_KEY_ID"],
            secret_key=KEYS["AWS_SECRET_ACCESS_KEY"],
            region=REGION,
            endpoint_override=self.endpoint,
            scheme="http",
            **options,
        )

    def environment(self) -> dict[str, str]:
        """The AWS environment a process (or this one) needs to reach the server."""
        return s3_server_script.environment(self.endpoint)

    def create_bucket(self, name: str) -> str:
        """A new bucket; returns `s3://name`."""
        return s3_server_script.create_bucket(self.endpoint, name)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """The session's S3 API server."""
    process, endpoint = s3_server_script.start(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield S3Server(endpoint)
    finally:
        s3_server_script.stop(process)


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket for one test: `s3://<name>`."""
    name = f"t{abs(hash(request.node.nodeid)) % 10**10}-{time.monotonic_ns() % 10**6}"
    return s3_server.create_bucket(name)


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> Iterator[dict[str, str]]:
    """This process set up as a user on the S3 server is (the AWS_* environment); yields the
    variables, for subprocesses. The store layer's clients are made anew on both sides."""
    from tasks.common import store

    for key, value in s3_server.environment().items():
        monkeypatch.setenv(key, value)
    store.forget_clients()
    yield s3_server.environment()
    store.forget_clients()
