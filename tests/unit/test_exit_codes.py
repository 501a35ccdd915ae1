"""Every command's exit code for each kind of user error, as docs/command-line.md states them:
2 for a parameter refused (its type or bounds, a path outside the allowed folders), 1 for any
other problem, each with one `error:` line. Refused before any Prefect server is involved."""

from __future__ import annotations

import importlib
import os

import pytest

from tests.conftest import REPO

PARAMETER, OTHER = 2, 1
HOURS = "error: parameter hours:"


@pytest.mark.parametrize(
    ("command", "argv", "code", "message"),
    [
        ("flows.train", ["--max-epochs", "-5"], PARAMETER, "error: parameter max_epochs:"),
        ("flows.train", ["--data", "/etc/passwd"], PARAMETER, "error: parameter data: '/etc/"),
        ("flows.train", ["--output", "/etc/out"], PARAMETER, "error: parameter output: '/etc/"),
        ("flows.train", ["--data", "data/none.csv"], OTHER, "error: data/none.csv: file not"),
        ("flows.score", ["--data", "/etc/passwd"], PARAMETER, "error: parameter data: '/etc/"),
        ("flows.score", ["--max-bad-fraction", "5"], PARAMETER, "error: parameter max_bad_"),
        ("flows.watch", ["--landing", "/etc"], PARAMETER, "error: parameter landing: '/etc'"),
        ("flows.dataset", ["--ledger", "/etc"], PARAMETER, "error: parameter ledger: '/etc'"),
        ("flows.outputs", ["vacuum", "--output", "/etc/x"], PARAMETER, "error: parameter output"),
        ("flows.outputs", ["vacuum", "--hours", "-1", "--output", "TMP"], PARAMETER, HOURS),
        ("flows.land", ["data/none.csv"], OTHER, "error: data/none.csv: file not found"),
        ("flows.land", ["x.csv", "--landing", "/etc"], PARAMETER, "error: parameter landing:"),
    ],
)
def test_each_kind_of_user_error_has_its_exit_code_and_one_line(
    command, argv, code, message, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("SALES_MODEL_DATA_ROOTS", str(REPO / "data"))
    # TMP: an existing output folder (a fresh clone has no output/ yet)
    monkeypatch.setenv(
        "SALES_MODEL_OUTPUT_ROOTS", os.pathsep.join([str(REPO / "output"), str(tmp_path)])
    )
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    argv = [str(tmp_path) if arg == "TMP" else arg for arg in argv]
    assert importlib.import_module(command).main(argv) == code
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(message)


@pytest.mark.parametrize("value", ["soon", "inf"])
def test_a_bad_vacuum_hours_setting_is_one_error_line_read_at_the_call(
    value, capsys, monkeypatch, tmp_path
):
    import flows.outputs  # imported before the setting is made: it must be read when used

    monkeypatch.setenv("SALES_MODEL_OUTPUT_ROOTS", str(tmp_path))
    monkeypatch.setenv("SALES_MODEL_VACUUM_HOURS", value)
    assert flows.outputs.main(["vacuum", "--output", str(tmp_path)]) == PARAMETER
    (line,) = capsys.readouterr().err.splitlines()
    assert (
        line == f"error: SALES_MODEL_VACUUM_HOURS={value!r} is not a number of hours from 0 to 8760"
    )
    monkeypatch.setenv("SALES_MODEL_VACUUM_HOURS", "0")
    assert flows.outputs.main(["vacuum", "--output", str(tmp_path)]) == 0
    assert "no version of the last 0 h needs" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SALES_MODEL_TRAIN_TIMEOUT_SECONDS", "3h", "is not a number of seconds above 0"),
        ("SALES_MODEL_TRAIN_TIMEOUT_SECONDS", "inf", "is not a number of seconds above 0"),
        ("SALES_MODEL_VACUUM_HOURS", "soon", "is not a number of hours from 0"),
    ],
)
def test_a_bad_setting_is_one_error_line_before_a_training_run(variable, value, message, tmp_path):
    import subprocess
    import sys

    env = {**os.environ, variable: value, "SALES_MODEL_WARM_RUNNER": "off"}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "flows.train", "--output", str(tmp_path)],
        cwd=REPO,
        env={**env, "SALES_MODEL_OUTPUT_ROOTS": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == PARAMETER
    assert done.stderr.startswith(f"error: {variable}={value!r} {message}"), done.stderr
    assert len(done.stderr.splitlines()) == 1
