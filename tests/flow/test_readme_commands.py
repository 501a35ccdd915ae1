"""The console examples of the README and docs/, run verbatim in a fresh copy of the checkout, in
the order of PAGES: what a new user types, what they see and the exit code they get. The run ids'
values and the checkout's path are the only parts allowed to differ (they differ on every
machine); which run a line names must match (the model a scoring run used is the champion's)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from flows.train import train_sales_model
from tests.conftest import REPO, copy_checkout, read_table

CONSOLE = re.compile(r"<!-- console -->\n```console\n(.*?)```", re.DOTALL)
RUN_ID = re.compile(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}")
SCORED_WITH = re.compile(rf"^scoring run ({RUN_ID.pattern}) with model ({RUN_ID.pattern}):", re.M)
README_CHECKOUT = "/path/to/sales-model"
# The exit code of each example that ends in an error, as docs/command-line.md and flows/cli.py
# promise: 2 for a parameter refused (its type, bounds, a path outside the allowed folders or a
# folder not found), 1 for the other user errors (no champion yet). Examples without an error
# exit 0.
ERROR_EXIT_CODES = {
    ".venv/bin/python -m flows.train --max-epochs -5": 2,
    ".venv/bin/python -m flows.train --data /etc/passwd --output /tmp/out": 2,
    ".venv/bin/python -m flows.score --output output/elsewhere": 1,
    ".venv/bin/python -m flows.score --run-id 20261201T0854": 2,
    ".venv/bin/python -m flows.watch --landing data/incoming": 2,
}
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


def shows_an_error(lines: list[str]) -> bool:
    return any(line.startswith("error:") for line in lines)


def normalised(text: str, checkout: Path, runs: dict[str, str]) -> list[str]:
    """The lines with the checkout's path as the README's and each run id as `<run N>`, N its
    order of first appearance in `runs` (shared by one sequence of commands): two texts match
    only if they name the same runs in the same places."""

    def run(match: re.Match[str]) -> str:
        return runs.setdefault(match.group(), f"<run {len(runs) + 1}>")

    return RUN_ID.sub(run, text.replace(str(checkout), README_CHECKOUT)).splitlines()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A fresh copy of the checkout (no output/, no ledger) sharing this one's .venv; file
    times are kept so that make sees the virtual environment as up to date."""
    target = copy_checkout(COPY, tmp_path_factory.mktemp("readme") / "sales-model")
    (target / ".venv").symlink_to(REPO / ".venv")
    return target


def test_the_readme_has_console_examples_for_a_new_user():
    examples = console_examples()
    commands = [command for command, _ in examples]
    assert commands[0] == "make run"
    assert any(c.startswith(".venv/bin/python -m flows.score") for c in commands)
    assert any(c.startswith(".venv/bin/python -m flows.watch") for c in commands)
    # every example ending in an error has its exit code above, and only those
    assert {c for c, lines in examples if shows_an_error(lines)} == set(ERROR_EXIT_CODES)


def test_readme_console_examples_print_what_the_readme_shows(checkout, prefect_api_url):
    # The user's shell: the README's default roots (data/, output/ of the checkout), not the
    # test suite's, and no make of ours around it.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SALES_MODEL_", "MAKE", "MFLAGS"))
    }
    env["PREFECT_API_URL"] = prefect_api_url  # the session's server: no temporary one per command
    readme_runs: dict[str, str] = {}
    real_runs: dict[str, str] = {}
    for command, expected in console_examples():
        result = run_shell(command, checkout, env)
        shown = f"$ {command}\n{result.stdout}"
        assert normalised(result.stdout, checkout, real_runs) == normalised(
            "\n".join(expected), checkout, readme_runs
        ), shown
        code = ERROR_EXIT_CODES[command] if shows_an_error(expected) else 0
        assert result.returncode == code, shown

    scoring_follows_the_champion(checkout, env)


def scoring_follows_the_champion(checkout: Path, env: dict[str, str]) -> None:
    """The README's scoring command again, once the champion is neither the oldest run nor the
    newest (a promoted run, then one that is not): it scores with the champion."""
    output, data = checkout / "output", str(checkout / "data" / "sales.csv")
    champion = train_sales_model(
        data=data, output=str(output), promotion_tolerance=1e6, holdout_fraction=0.3
    )  # another split: a model other than the README runs' (their own again would not win)
    assert champion["promotion"]["promoted"]
    newest = train_sales_model(data=data, output=str(output), max_epochs=1, lr=1e-3)
    assert not newest["promotion"]["promoted"]
    assert json.loads((output / "champion.json").read_text())["run_id"] == champion["run_id"]
    (score,) = [
        command
        for command, lines in console_examples()
        if command.startswith(".venv/bin/python -m flows.score") and not shows_an_error(lines)
    ]
    result = run_shell(score, checkout, env)
    assert result.returncode == 0, result.stdout
    ((score_run, model_run),) = SCORED_WITH.findall(result.stdout)
    assert model_run == champion["run_id"], result.stdout
    scores = read_table(output, "scores")
    assert set(scores[scores["run_id"] == score_run]["model_run_id"]) == {champion["run_id"]}


def run_shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`command` in bash, as a user types it; stdout and stderr together, as a terminal shows
    them."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
