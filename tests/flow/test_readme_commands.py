"""The console examples of the README and docs/, run verbatim in a fresh copy of the checkout, in
the order of PAGES: what a new user types and what they see. Run ids and the checkout's path are
the only parts allowed to differ (they differ on every machine)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, copy_checkout

CONSOLE = re.compile(r"<!-- console -->\n```console\n(.*?)```", re.DOTALL)
RUN_ID = re.compile(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}")
README_CHECKOUT = "/path/to/sales-model"
COPY = [
    "flows",
    "tasks",
    "schemas",
    "scripts",
    "data/__init__.py",
    "data/generate_sales.py",
    "data/generate_advertising.py",
    "data/advertising.csv",
    "data/sales.csv",
    "data/notebook.csv",
    "data/score_sample.csv",
    "prefect.yaml",
    "Makefile",
    "requirements.txt",
    "constraints.txt",
]


# The pages in the order their examples run: later ones use what earlier ones made (the champion
# of `make run` scores and is compared with the landing retrain).
PAGES = [
    "README.md",
    "docs/command-line.md",
    "docs/training.md",
    "docs/analysts.md",
    "docs/deployments.md",
]


def console_blocks() -> list[str]:
    """Every console block of the pages, in PAGES order; each page must keep at least one, and
    no page outside PAGES may have one."""
    blocks: list[str] = []
    for page in PAGES:
        found = CONSOLE.findall((REPO / page).read_text())
        assert found, f"{page} has no console example"
        blocks.extend(found)
    pages = [f"docs/{p.name}" for p in sorted((REPO / "docs").glob("*.md"))]
    unlisted = [p for p in pages if p not in PAGES and CONSOLE.search((REPO / p).read_text())]
    assert not unlisted, f"console examples in pages the test does not run: {unlisted}"
    return blocks


def console_examples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for every `$ ` line of every console block."""
    examples: list[tuple[str, list[str]]] = []
    for block in console_blocks():
        for line in block.splitlines():
            if line.startswith("$ "):
                examples.append((line[2:], []))
            else:
                examples[-1][1].append(line)
    return examples


def normalised(text: str, checkout: Path) -> list[str]:
    return RUN_ID.sub("<run_id>", text.replace(str(checkout), README_CHECKOUT)).splitlines()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A fresh copy of the checkout (no output/, no ledger) sharing this one's .venv; file
    times are kept so that make sees the virtual environment as up to date."""
    target = copy_checkout(COPY, tmp_path_factory.mktemp("readme") / "sales-model")
    (target / ".venv").symlink_to(REPO / ".venv")
    return target


def test_the_readme_has_console_examples_for_a_new_user():
    commands = [command for command, _ in console_examples()]
    assert commands[0] == "make run"
    assert any(c.startswith(".venv/bin/python -m flows.score") for c in commands)
    assert any(c.startswith(".venv/bin/python -m flows.watch") for c in commands)


def test_readme_console_examples_print_what_the_readme_shows(checkout, prefect_api_url):
    # The user's shell: the README's default roots (data/, output/ of the checkout), not the
    # test suite's, and no make of ours around it.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SALES_MODEL_", "MAKE", "MFLAGS"))
    }
    env["PREFECT_API_URL"] = prefect_api_url  # the session's server: no temporary one per command
    for command, expected in console_examples():
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=checkout,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
        )
        assert normalised(result.stdout, checkout) == normalised("\n".join(expected), checkout), (
            f"$ {command}\n{result.stdout}"
        )
