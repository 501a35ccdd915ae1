"""Processes on this machine: whether one still runs, and what it was started as. The standard
library only, so the command line's own server supervisor (flows/local_server.py) and the
command's hand-over to the warm runner (flows/warm.py) use it without loading the pipeline."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process runs with this PID (a zombie, exited but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return True


def command_line(pid: int) -> list[bytes]:
    """The arguments process `pid` was started with ([] when it is gone or unreadable): what
    a PID read from a state file must show before it is trusted (after a reboot it may name
    any process)."""
    if pid <= 0 or not pid_alive(pid):
        return []
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []
