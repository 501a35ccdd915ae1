"""A real S3 API server for the tests: `moto_server` in its own process on 127.0.0.1 (delta-rs
reads are known to hang against moto running in a thread of the same process), one per test
session, stopped by its PID; a fresh bucket per test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.local_prefect import HOST, free_port

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Server:
    """The server's endpoint, and the settings every client of it takes."""

    endpoint: str

    def storage_options(self) -> dict[str, str]:
        """delta-rs' options for this server (conditional writes by ETag, as on AWS)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": REGION,
            "conditional_put": "etag",
            **KEYS,
        }

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
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": REGION,
            **KEYS,
        }

    def create_bucket(self, name: str) -> str:
        """A new bucket; returns `s3://name`."""
        self.filesystem(allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}"


def start_s3_server(log: Path) -> tuple[subprocess.Popen, S3Server]:
    """`moto_server` on a free port of 127.0.0.1, answering once this returns."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(moto), "-H", HOST, "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **KEYS},
        )
    endpoint = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
            time.sleep(0.1)
    return process, S3Server(endpoint)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """The session's S3 API server."""
    process, server = start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    try:
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


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
