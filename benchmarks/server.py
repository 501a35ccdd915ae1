"""The Prefect server the benchmarks' command-line runs report to: one on 127.0.0.1 with its own
state, started once per benchmark and stopped by its process group."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.cli import OFFLINE_ENV
from scripts.local_prefect import HOST, free_port, wait_healthy


@contextmanager
def prefect_server(home: Path, **extra: str) -> Iterator[dict[str, str]]:
    """A server whose state is under `home`; yields the environment for processes that use it
    (this process's, offline, with PREFECT_API_URL and `extra`)."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://{HOST}:{port}/api",
        **extra,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_healthy(env["PREFECT_API_URL"], server, home / "server.log", timeout=90)
        yield env
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
