"""`python -m flows.train` with a fault hook, for the fault tests' processes: the JSON in
SALES_MODEL_TEST_HOOK says what to do around the output tables' commits.

    {"kill_after": ["commit_parts", 2]}   SIGKILL this process once the 2nd commit_parts returns
    {"meet": [DIR, 2]}                    before the first append, wait until 2 processes are there
    {"pause_after": ["commit_parts", 2, DIR]}  once the 2nd commit_parts returns, create
                                          DIR/paused and wait until DIR/resume exists (the test
                                          breaks the store meanwhile)
    {"pause_before": ["current_champion", 1, DIR]}  the same, before the 1st call
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from flows.cli import exit_now
from flows.train import main
from tasks.outputs import tables

HOOK = "SALES_MODEL_TEST_HOOK"
MEET_TIMEOUT_SECONDS = 600


def kill_after(name: str, count: int) -> None:
    """SIGKILL this process right after the `count`-th call of tables.<name> has committed."""
    real, calls = getattr(tables, name), []

    def step(*args, **kwargs):
        version = real(*args, **kwargs)
        calls.append(version)
        if len(calls) == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return version

    setattr(tables, name, step)


def pause(name: str, count: int, folder: str, *, after: bool) -> None:
    """Before (or once it has committed, `after`) the `count`-th call of tables.<name>, say so
    (DIR/paused) and wait for the test (DIR/resume) before the run goes on."""
    real, calls = getattr(tables, name), []

    def wait() -> None:
        here = Path(folder)
        (here / "paused").touch()
        deadline = time.monotonic() + MEET_TIMEOUT_SECONDS
        while not (here / "resume").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test never said to resume ({folder})")
            time.sleep(0.05)

    def step(*args, **kwargs):
        calls.append(True)
        if len(calls) == count and not after:
            wait()
        result = real(*args, **kwargs)
        if len(calls) == count and after:
            wait()
        return result

    setattr(tables, name, step)


def meet(folder: str, parties: int) -> None:
    """Hold this process's first append until `parties` processes have reached theirs, so that
    their commits overlap."""
    real, met = tables.append, []

    def step(*args, **kwargs):
        if not met:
            here = Path(folder)
            (here / str(os.getpid())).touch()
            deadline = time.monotonic() + MEET_TIMEOUT_SECONDS
            while len(list(here.iterdir())) < parties:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the other runs never reached their commit ({folder})")
                time.sleep(0.05)
            met.append(True)
        return real(*args, **kwargs)

    tables.append = step


if __name__ == "__main__":
    hook = json.loads(os.environ[HOOK])
    if "kill_after" in hook:
        kill_after(*hook["kill_after"])
    if "pause_after" in hook:
        pause(*hook["pause_after"], after=True)
    if "pause_before" in hook:
        pause(*hook["pause_before"], after=False)
    if "meet" in hook:
        meet(*hook["meet"])
    exit_now(main(sys.argv[1:]))
