"""The retry policy of every task that reads input files: transient I/O errors are retried, a
rejected file stays rejected."""

from __future__ import annotations

from prefect.cache_policies import NONE

from tasks.common.errors import PipelineError


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient I/O failures; a rejected file stays rejected."""
    try:
        state.result()
    except PipelineError:
        return False
    except Exception:
        return True
    return False


FILE_READ_TASK = {
    "retries": 2,
    "retry_delay_seconds": [1, 5],
    "retry_condition_fn": retry_unless_user_error,
    "cache_policy": NONE,
}
