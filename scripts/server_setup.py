"""What the local stack keeps right on its Prefect server. Before deploying (idempotent):

- the `sales-model-training` global concurrency limit, one slot (tasks/landing/slots.py; a training
  run also creates it on first use, so any server has it);
- the zombie-run automation from Prefect's documentation for self-hosted servers ("Detect
  zombie flows"): a flow run that has sent a heartbeat and then goes HEARTBEAT_WINDOW seconds
  without another one, or a final state, is marked Crashed, which frees its slots.

And `recover`, for what heartbeats do not reach (a run PENDING whose process never started,
or a run from before the heartbeats): run by `make serve` at start and every 30 s by the
landing watcher; `name_scheduled_runs`, which names the runs the schedules and triggers create
(Prefect 3.9 cannot): every few seconds by the landing watcher.

    PREFECT_API_URL=... python -m scripts.server_setup
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from flows.names import NAMING, is_named, name_for
from flows.processes import pid_alive
from tasks.landing.slots import ensure_training_limit

# The server streams each run's logs to whoever follows it (`prefect deployment run --watch`):
# Prefect 3.9's server does not by default, and the watch then shows only events, never the
# run's log nor the result line it ends with.
LOG_STREAM_ENV = {
    "PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED": "true",
    "PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED": "true",
}
ZOMBIE_AUTOMATION = "sales-model: crash zombie flow runs"
# Three missed heartbeats (the worker's flow runs send one every 30 s).
HEARTBEAT_WINDOW = timedelta(seconds=90)


def zombie_automation() -> Automation:
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description="Mark flow runs Crashed when their heartbeats stop (process gone).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=HEARTBEAT_WINDOW,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {HEARTBEAT_WINDOW.seconds} s: the run's process is "
                "gone (marked by the zombie-run automation).",
            )
        ],
    )


def recover(api_url: str) -> list[str]:
    """Mark as Crashed every Running/Pending flow run whose process on this machine is gone
    (e.g. its worker was stopped mid-run), which also frees its concurrency slot. Returns the
    flow run ids it crashed."""
    from prefect.states import Crashed

    crashed = []
    with _client(api_url) as client:
        for run in _runs(client, [StateType.RUNNING, StateType.PENDING]):
            pid = _local_pid(run.infrastructure_pid)
            if pid is None or pid_alive(pid):
                continue
            client.set_flow_run_state(
                run.id,
                Crashed(message=f"process {pid} is gone (worker stopped?); marked by recover"),
                force=True,
            )
            crashed.append(str(run.id))
    return crashed


def name_scheduled_runs(api_url: str) -> list[str]:
    """Name for what it will do (flows/names.py) every scheduled run of our flows that still
    has Prefect's random name: the server's schedules and triggers cannot name the runs they
    create. The time in the name is when the run is due. Returns the new names."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    named = []
    ours = FlowFilter(name=FlowFilterName(any_=list(NAMING)))
    with _client(api_url) as client:
        flow_names = {flow.id: flow.name for flow in client.read_flows(flow_filter=ours)}
        for run in _runs(client, [StateType.SCHEDULED], flow_filter=ours):
            flow = flow_names.get(run.flow_id)
            if flow is None or is_named(flow, run.name):
                continue
            name = name_for(flow, run.parameters, run.expected_start_time)
            client.update_flow_run(run.id, name=name)
            named.append(name)
    return named


@contextlib.contextmanager
def _client(api_url: str) -> Iterator[Any]:
    """Prefect's synchronous client of the server at `api_url`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings(updates={PREFECT_API_URL: api_url}),
        get_client(sync_client=True) as client,
    ):
        yield client


def _runs(client: Any, states: list[StateType], **filters: Any) -> list[Any]:
    """The flow runs in one of `states` (and matching `filters`)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )

    in_states = FlowRunFilterState(type=FlowRunFilterStateType(any_=states))
    return client.read_flow_runs(flow_run_filter=FlowRunFilter(state=in_states), **filters)


def _local_pid(infrastructure_pid: str | None) -> int | None:
    """A process worker's run records its PID ('1234', or 'host:1234'); None when the run is
    not a local process (another host, or no process yet)."""
    if not infrastructure_pid:
        return None
    host, _, pid = infrastructure_pid.rpartition(":")
    if (host and host != socket.gethostname()) or not pid.isdigit():
        return None
    return int(pid)


def main() -> int:
    ensure_training_limit()
    try:
        Automation.read(name=ZOMBIE_AUTOMATION)
    except ValueError:  # not there yet
        zombie_automation().create()
    print("training limit and zombie-run automation in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
