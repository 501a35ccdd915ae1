"""One Prefect test server for the whole session (started only if a flow test runs)."""

from __future__ import annotations

import pytest
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness


@pytest.fixture(scope="session", autouse=True)
def prefect_api_url():
    """Run flows against a temporary Prefect server; yields its API URL."""
    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()
