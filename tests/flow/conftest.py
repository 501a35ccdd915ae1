"""One real Prefect server for the whole session (started only if a flow test runs): `prefect
server start` on a free 127.0.0.1 port with its own PREFECT_HOME, services included (the
ephemeral test harness runs none, so a killed run's training slot would never be repossessed
there, unlike on any real server)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

import flows.train
from flows.cli import OFFLINE_ENV, send_pending_logs_and_events
from scripts.local_prefect import HOST, free_port, wait_healthy


@pytest.fixture(scope="session", autouse=True)
def prefect_api_url(tmp_path_factory):
    """Run flows against the session's server; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://{HOST}:{port}/api"
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_UI_ENABLED": "false",
        # Expired leases (a killed run's slot) are taken back within 2 s of expiring.
        "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "2",
    }
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    with log.open("ab") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                HOST,
                "--port",
                str(port),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_healthy(url, server, log, timeout=90)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
            # Send the last logs and events while the server still listens.
            send_pending_logs_and_events()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert "database is locked" not in log.read_text()


# Blocks of a few lines: tests that take `cut_small` run every merge of partial statistics the
# pipeline has on small files.
BLOCK_BYTES = 256


@pytest.fixture
def cut_small(monkeypatch):
    """Runs of the flow in the test read blocks of BLOCK_BYTES (not a flow parameter)."""
    real = flows.train.for_runner
    monkeypatch.setattr(
        flows.train, "for_runner", lambda config: real(config).with_changes(block_bytes=BLOCK_BYTES)
    )
