"""prefect.yaml: every deployment names an importable flow with valid default parameters, its
schedule and concurrency are what docs/deployments.md promises, and runs start in an absolute
folder."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from datetime import UTC, datetime

import pytest
import yaml
from cronsim import CronSim
from prefect import Flow

from tasks.landing.events import DEBOUNCE_SECONDS, LANDED_EVENT, RESOURCE_PREFIX
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


def test_landing_check_starts_on_the_landed_event_with_a_slow_poll_behind_it():
    check = DEPLOYMENTS["retrain-on-new-data"]
    assert check["schedules"] == [{"interval": 600}]  # the fallback: 144 runs a quiet day
    assert check["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    (trigger,) = check["triggers"]
    assert trigger["expect"] == [LANDED_EVENT]
    assert trigger["match"] == {"prefect.resource.id": f"{RESOURCE_PREFIX}*"}
    assert (trigger["posture"], trigger["threshold"]) == ("Reactive", 1)
    assert trigger["within"] == DEBOUNCE_SECONDS  # the run waits out the window it absorbs
    # No shorter settle time for an announced file: an event does not make a file complete.
    assert trigger["parameters"] == {
        "landed_at": {"__prefect_kind": "jinja", "template": "{{ event.occurred }}"},
    }
    flow = load_entrypoint(check["entrypoint"])
    flow.validate_parameters({"landed_at": "2026-12-01T02:00:00+00:00"})


@pytest.mark.parametrize("deployment", DEPLOYMENTS.values(), ids=list(DEPLOYMENTS))
def test_every_deployment_is_tagged_versioned_and_described(deployment):
    assert "sales-model" in deployment["tags"]
    assert deployment["version"]
    assert len(deployment["description"]) > 40


@pytest.mark.parametrize(
    ("home", "ok"), [(None, False), ("relative/path", False), ("/nonexistent", False), (REPO, True)]
)
def test_deploying_without_an_absolute_checkout_path_fails_with_a_message(home, ok):
    (step,) = CONFIG["build"]
    script = step["prefect.deployments.steps.run_shell_script"]
    assert script["shell"] is True
    env = {k: v for k, v in os.environ.items() if k != "SALES_MODEL_HOME"}
    if home is not None:
        env["SALES_MODEL_HOME"] = str(home)
    result = subprocess.run(
        ["/bin/sh", "-c", script["script"]], env=env, capture_output=True, text=True
    )
    assert (result.returncode == 0) == ok
    if not ok:
        assert "SALES_MODEL_HOME must be the absolute path of this checkout" in result.stderr


def test_the_deployments_page_table_matches_prefect_yaml():
    page = (REPO / "docs" / "deployments.md").read_text()
    rows = dict(re.findall(r"^\| `[\w-]+/([\w-]+)` \| (.+?) \|", page, flags=re.MULTILINE))
    assert set(rows) == set(DEPLOYMENTS)
    assert f"cron `{DEPLOYMENTS['nightly']['schedules'][0]['cron']}` (UTC)" in rows["nightly"]
    interval = DEPLOYMENTS["retrain-on-new-data"]["schedules"][0]["interval"]
    assert rows["retrain-on-new-data"] == f"on the landed event, and every {interval} s"
    assert rows["score"] == "on demand"
    assert "schedules" not in DEPLOYMENTS["score"]


def test_pull_step_uses_an_absolute_directory_template():
    directory = CONFIG["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert directory.startswith("{{ $")
