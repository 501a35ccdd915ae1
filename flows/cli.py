"""Command-line plumbing shared by the flows: run a flow, report user errors in one line."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from prefect import Flow
from prefect.exceptions import ParameterTypeError

from tasks.errors import PipelineError

# Prefect must never phone home from these machines; a user's own setting wins.
OFFLINE_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class _DropUserErrorTracebacks(logging.Filter):
    """A PipelineError is a message for the user, not a bug: log it without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info = None
            record.exc_text = None
        return True


def parameter_error(exc: ParameterTypeError, given: dict[str, Any]) -> str:
    """Prefect's multi-line parameter error -> one line naming each parameter and its value."""
    problems = []
    for line in str(exc).splitlines():
        if line.startswith(" - ") and ":" in line:
            name, message = line[3:].split(":", 1)
            value = f" (got {given[name]!r})" if name in given else ""
            problems.append(f"parameter {name}:{message}{value}")
    return "; ".join(problems) or str(exc).replace("\n", " ")


def run_flow(flow: Flow, parameters: dict[str, Any], summarize: Callable[[Any], str]) -> int:
    """Validate `parameters` against the flow's signature, run it, print the summary.

    Returns the exit code: 0 on success, 2 for a bad parameter, 1 for a PipelineError.
    Anything else is a bug and keeps its traceback.
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    flows_logger = logging.getLogger("prefect.flows")
    level = flows_logger.level
    flows_logger.setLevel(logging.CRITICAL)
    try:
        flow.validate_parameters(parameters)
    except ParameterTypeError as exc:
        print(f"error: {parameter_error(exc, parameters)}", file=sys.stderr)
        return 2
    finally:
        flows_logger.setLevel(level)
    quiet = _DropUserErrorTracebacks()
    for name in ENGINE_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        result = flow(**parameters)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for name in ENGINE_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
    print(summarize(result))
    return 0
