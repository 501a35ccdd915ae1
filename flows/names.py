"""What each flow run is called: what it does, on what, and when (UTC), e.g.
`train-dataset-20261205T020000`, `score-score_sample.csv-20261205T081530`,
`check-landing-20261205T081500`.

Prefect 3.9 gives a run a random name (`rich-peacock`) unless its creator names it:
- the command line and the landing check's training (a subflow): the flows' `flow_run_name`
  names the run as the engine creates it, before it runs or logs anything;
- `prefect deployment run ... --flow-run-name NAME` and `run_deployment(flow_run_name=NAME)`
  name a deployment run as they create it;
- the server's schedules and triggers cannot: in the local stack the landing watcher names
  every scheduled run within seconds (scripts/server_setup.py: name_scheduled_runs, the time
  being when it is due), and anywhere else a run takes its name as it starts, before its first
  log line.
A run created with a name of its own kind (`train-...` for training) keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from prefect.context import FlowRunContext

from schemas.params import DEFAULT_DATA, DEFAULT_SCORE_DATA


def data_subject(data: str | list[str] | tuple[str, ...]) -> str:
    """What a run reads, shortly: `dataset`, a file's name (`sales.csv`), or the first file's
    name and how many more (`jan.csv+2`)."""
    paths = [data] if isinstance(data, str) else list(data)
    if not paths:
        return "nothing"
    first = PurePosixPath(str(paths[0]).rstrip("/")).name or str(paths[0])
    return first if len(paths) == 1 else f"{first}+{len(paths) - 1}"


# Flow name -> (what its runs do, on what: from their parameters).
NAMING: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "train-sales-model": ("train", lambda p: data_subject(p.get("data", DEFAULT_DATA))),
    "score-sales": ("score", lambda p: data_subject(p.get("data", DEFAULT_SCORE_DATA))),
    "watch-landing": ("check", lambda p: "landing"),
}


def name_for(flow: str, parameters: dict[str, Any], when: datetime | None = None) -> str:
    """`<action>-<subject>-<UTC time to the second>` for a run of `flow` (a flow's name)."""
    action, subject = NAMING[flow]
    when = (when or datetime.now(UTC)).astimezone(UTC)
    return f"{action}-{subject(parameters)}-{when:%Y%m%dT%H%M%S}"


def is_named(flow: str, name: str) -> bool:
    """Whether a run of `flow` already has a name of its kind (not Prefect's random one); a
    flow not named here keeps whatever name it has."""
    return flow not in NAMING or name.startswith(f"{NAMING[flow][0]}-")


def current_run_name() -> str:
    """The `flow_run_name` of every flow here: the name the run was created with if it is of
    its kind, else one from its parameters, as of now."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("a flow run's name is made inside its flow run")
    flow, current = context.flow.name, context.flow_run.name
    return current if is_named(flow, current) else name_for(flow, dict(context.parameters or {}))
