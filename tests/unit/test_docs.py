"""The README fits a first screen and leads to every page of docs/; no link in the docs points
at a file or heading that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def links(page: Path) -> list[str]:
    """The targets of the page's markdown links, outside code blocks."""
    return LINK.findall(FENCE.sub("", page.read_text()))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces
    to hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_fits_a_first_screen():
    assert len(README.read_text().splitlines()) <= 150


def test_the_readme_names_the_two_set_up_commands():
    text = README.read_text()
    assert "make run" in text
    assert "make test" in text
    assert "Those are the only two set-up commands." in text


def test_the_readme_links_every_docs_page():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links(README)}
    assert PAGES, "docs/ has no page"
    assert [p.name for p in PAGES if p.resolve() not in linked] == []


def resolves(page: Path, target: str) -> bool:
    """Whether a relative link of the page names an existing file, and heading when it has one."""
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
        return False
    return not anchor or file.suffix != ".md" or anchor in anchors(file)


@pytest.mark.parametrize("page", [README, REPO / "CONTRIBUTING.md", *PAGES], ids=lambda p: p.name)
def test_every_relative_link_points_at_an_existing_file_and_heading(page):
    relative = [target for target in links(page) if not re.match(r"[a-z]+:", target)]
    assert [target for target in relative if not resolves(page, target)] == []


def test_make_help_lists_every_target_with_its_variables_filled_in():
    import subprocess

    shown = subprocess.run(
        ["make", "-s", "help", "PORT=4390"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    targets = re.findall(r"^([a-z-]+):.*## ", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert [line.split()[0] for line in shown.splitlines()] == targets
    assert "$(" not in shown
    assert "127.0.0.1:4390" in shown  # the value given, not the default
    assert "test-quick" in targets
    assert re.search(r"^  test .*about \d+ minutes", shown, re.MULTILINE)
