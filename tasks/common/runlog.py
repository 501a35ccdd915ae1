"""The logger of the current Prefect run (its lines reach the run's log in the UI), or a plain
one when a step is called outside any run (tests, benchmarks)."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("sales_model")
