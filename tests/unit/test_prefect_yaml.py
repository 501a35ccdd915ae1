"""Every deployment in prefect.yaml names an importable flow with valid default parameters."""

from __future__ import annotations

import importlib.util

import pytest
import yaml
from prefect import Flow

from tests.conftest import REPO

DEPLOYMENTS = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def load_entrypoint(entrypoint: str) -> Flow:
    path, name = entrypoint.split(":")
    spec = importlib.util.spec_from_file_location(f"entry_{name}", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_imports_and_parameters_validate(deployment):
    flow = load_entrypoint(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    flow.validate_parameters(deployment.get("parameters") or {})
    assert deployment["work_pool"]["name"]


def test_pull_step_uses_an_absolute_directory_template():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    directory = config["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert directory.startswith("{{ $")
