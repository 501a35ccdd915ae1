"""A local S3 API server for trying object storage and for the tests and benchmarks: `moto_server`
(the `moto[server]` package the install pins) in a process of its own on 127.0.0.1 (delta-rs reads
are known to hang against one running in a thread of the same process), stopped by its PID.

    python -m scripts.s3_server [--port N]     # serves until Ctrl-C; prints the environment

Clients reach it with the AWS environment of `environment(endpoint)`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from scripts.local_prefect import HOST, free_port

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


def environment(endpoint: str) -> dict[str, str]:
    """The AWS environment a client of the server at `endpoint` needs."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": REGION, **KEYS}


def create_bucket(endpoint: str, name: str) -> str:
    """A new bucket on the server at `endpoint`; returns `s3://name`. (The pipeline never
    creates buckets: that is the store's owner's decision.)"""
    from pyarrow import fs

    filesystem = fs.S3FileSystem(
        access_key=KEYS["AWS_ACCESS_KEY_ID"],
        secret_key=KEYS["AWS_SECRET_ACCESS_KEY"],
        region=REGION,
        endpoint_override=endpoint,
        scheme="http",
        allow_bucket_creation=True,
    )
    filesystem.create_dir(name)
    return f"s3://{name}"


def start(log: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """`moto_server` on `port` (a free one by default) of 127.0.0.1, answering once this
    returns: (process, endpoint)."""
    port = port or free_port()
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
                return process, endpoint
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
            time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    """Stop the server by its PID."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    process, endpoint = start(Path("s3-server.log").resolve(), args.port or None)
    for key, value in environment(endpoint).items():
        print(f"export {key}={value}")
    try:
        process.wait()
    except KeyboardInterrupt:
        stop(process)


if __name__ == "__main__":
    main()
