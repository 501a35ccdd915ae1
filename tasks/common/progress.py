"""A run's progress, for whoever shows it (the command line draws it in a terminal): the pass
under way, how much of its total is done, the rows seen so far.

Reported through a context variable, which Prefect's task threads inherit: the steps call
`phase` and `advance` and need no parameter for it, and nothing is reported where nobody
listens (deployments, tests, a Dask worker's process).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Protocol


class Listener(Protocol):
    def phase(self, name: str, total: int, unit: str) -> None: ...

    def advance(self, done: int, rows: int) -> None: ...


_listener: ContextVar[Listener | None] = ContextVar("sales_model_progress", default=None)


@contextlib.contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    """Report the progress of what runs inside (in this thread and those it starts) to
    `listener`."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def phase(name: str, total: int, unit: str) -> None:
    """A pass begins: `total` of `unit` ("bytes" or "rows") to go."""
    listener = _listener.get()
    if listener is not None:
        listener.phase(name, total, unit)


def advance(done: int = 0, rows: int = 0) -> None:
    """`done` more of the pass's unit, `rows` more rows."""
    listener = _listener.get()
    if listener is not None:
        listener.advance(done, rows)
