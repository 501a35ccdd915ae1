"""The progress of a command-line run in an interactive terminal, drawn with rich (which Prefect
installs): the pass, how much of it is done of the total, the rows, the time taken and left.
It appears only once the run has taken SHOW_AFTER seconds, and is erased when the run ends,
before the summary; where the output is not a terminal (CI, logs, deployments) nothing is
drawn."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

# A run shorter than this shows no progress (SALES_MODEL_PROGRESS_AFTER, seconds).
SHOW_AFTER = 2.0


class TerminalProgress:
    """A tasks.common.progress listener that draws one bar per pass on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=20),
            TaskProgressColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(),
            TextColumn("left"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task: Any = None
        self._unit = "rows"
        self._lock = threading.Lock()
        self._began = time.monotonic()
        self._after = float(os.environ.get("SALES_MODEL_PROGRESS_AFTER") or SHOW_AFTER)
        self._shown = False

    def phase(self, name: str, total: int, unit: str) -> None:
        with self._lock:
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._unit = unit
            amount = _amount(0, total, unit, 0)
            self._task = self._bar.add_task(name, total=max(total, 1), rows=0, amount=amount)
            self._show()
            if self._shown:
                self._bar.refresh()  # the new pass at once, however short

    def advance(self, done: int, rows: int) -> None:
        with self._lock:
            if self._task is None:
                return
            (task,) = [t for t in self._bar.tasks if t.id == self._task]
            completed = task.completed + done
            seen = task.fields["rows"] + rows
            amount = _amount(completed, task.total or 0, self._unit, seen)
            self._bar.update(self._task, completed=completed, rows=seen, amount=amount)
            self._show()

    def _show(self) -> None:
        if not self._shown and time.monotonic() - self._began >= self._after:
            self._bar.start()
            self._shown = True

    def close(self) -> None:
        with self._lock:
            if self._shown:
                self._bar.stop()


def _amount(done: float, total: float, unit: str, rows: int) -> str:
    if unit == "bytes":
        return f"{done / 1e6:,.0f} of {total / 1e6:,.0f} MB, {rows:,} rows"
    return f"{done:,.0f} of {total:,.0f} {unit}"


def terminal_progress(verbose: bool) -> TerminalProgress | None:
    """A progress display when stderr is an interactive terminal and Prefect's own logs are
    not printed there (--verbose), else None."""
    if verbose or not sys.stderr.isatty() or os.environ.get("TERM") == "dumb":
        return None
    return TerminalProgress()
