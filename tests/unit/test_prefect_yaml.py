"""prefect.yaml: every deployment names an importable flow with valid default parameters, its
schedule and concurrency are what the README promises, and runs start in an absolute folder."""

from __future__ import annotations

import importlib.util
import re
from datetime import UTC, datetime

import pytest
import yaml
from cronsim import CronSim
from prefect import Flow

from tests.conftest import REPO

CONFIG = yaml.safe_load((REPO / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in CONFIG["deployments"]}


def load_entrypoint(entrypoint: str) -> Flow:
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location(f"entry_{name}", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.mark.parametrize("deployment", DEPLOYMENTS.values(), ids=list(DEPLOYMENTS))
def test_deployment_entrypoint_imports_and_parameters_validate(deployment):
    flow = load_entrypoint(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    flow.validate_parameters(deployment.get("parameters") or {})
    assert deployment["work_pool"]["name"] == "sales-pool"


def test_nightly_runs_at_two_utc_one_at_a_time_queued():
    nightly = DEPLOYMENTS["nightly"]
    (schedule,) = nightly["schedules"]
    assert (schedule["cron"], schedule["timezone"]) == ("0 2 * * *", "UTC")
    runs = CronSim(schedule["cron"], datetime(2026, 12, 1, 3, 0, tzinfo=UTC))
    assert [next(runs), next(runs)] == [
        datetime(2026, 12, 2, 2, 0, tzinfo=UTC),
        datetime(2026, 12, 3, 2, 0, tzinfo=UTC),
    ]
    assert nightly["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}


def test_landing_poll_runs_every_minute_and_never_overlaps():
    poll = DEPLOYMENTS["retrain-on-new-data"]
    assert poll["schedules"] == [{"interval": 60}]
    assert poll["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


def test_readme_deployment_table_matches_prefect_yaml():
    readme = (REPO / "README.md").read_text()
    rows = dict(re.findall(r"^\| `[\w-]+/([\w-]+)` \| (.+?) \|", readme, flags=re.MULTILINE))
    assert set(rows) == set(DEPLOYMENTS)
    assert f"cron `{DEPLOYMENTS['nightly']['schedules'][0]['cron']}` (UTC)" in rows["nightly"]
    interval = DEPLOYMENTS["retrain-on-new-data"]["schedules"][0]["interval"]
    assert rows["retrain-on-new-data"] == f"every {interval} s"
    assert rows["score"] == "on demand"
    assert "schedules" not in DEPLOYMENTS["score"]


def test_pull_step_uses_an_absolute_directory_template():
    directory = CONFIG["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert directory.startswith("{{ $")
