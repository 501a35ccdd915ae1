"""BENCHMARKS.md is part generated, part written by hand: each benchmark script replaces only its
own section, between two marker lines, and leaves every other line as it was.

    <!-- make bench: NAME (generated: edits between these lines are overwritten) -->
    ...
    <!-- end of make bench: NAME -->
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

TITLE = "# Benchmarks\n"

# (start, end) line indices of a section written before it had markers, end exclusive; or None.
Finder = Callable[[list[str]], tuple[int, int] | None]


def begin_marker(name: str) -> str:
    return f"<!-- make bench: {name} (generated: edits between these lines are overwritten) -->"


def end_marker(name: str) -> str:
    return f"<!-- end of make bench: {name} -->"


def replace_section(path: Path, name: str, body: str, legacy: Finder | None = None) -> None:
    """Write `body` as section `name` of the markdown file at `path`: in place of the section's
    marked lines, else of its unmarked block (`legacy` finds it), else at the end (after a
    title, for a new file). Every other line is kept."""
    text = path.read_text() if path.exists() else TITLE
    lines = text.splitlines()
    block = [begin_marker(name), "", *body.strip("\n").splitlines(), "", end_marker(name)]
    span = _marked(lines, name) or (legacy(lines) if legacy else None)
    if span is None:
        while lines and not lines[-1].strip():
            lines.pop()
        start = end = len(lines) + 1
        lines.append("")
    else:
        start, end = span
    path.write_text("\n".join([*lines[:start], *block, *lines[end:]]) + "\n")


def _marked(lines: list[str], name: str) -> tuple[int, int] | None:
    begin, end = begin_marker(name), end_marker(name)
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if not starts or not ends or ends[0] < starts[0]:
        return None
    return starts[0], ends[0] + 1


def unmarked_block(first: Callable[[str], bool], last: Callable[[str], bool]) -> Finder:
    """A Finder for a block from the first line where `first` holds to the next line where
    `last` holds, both included."""

    def find(lines: list[str]) -> tuple[int, int] | None:
        start = next((i for i, line in enumerate(lines) if first(line)), None)
        if start is None:
            return None
        end = next((i for i in range(start, len(lines)) if last(lines[i])), None)
        return None if end is None else (start, end + 1)

    return find
