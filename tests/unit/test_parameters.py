"""One declaration per parameter: the flows' typed signatures are the source of the command line,
of the run's settings and of what prefect.yaml may set."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from flows.score import main as score_main
from flows.score import score_sales
from flows.train import parse_args, train_sales_model
from flows.watch import watch_landing
from schemas.params import RunConfig
from tests.conftest import REPO

# RunConfig's settings that are not flow parameters: how the work is cut.
INTERNAL = {"block_bytes", "split_bytes", "threads"}


def options_of(flow, parser_of) -> dict[str, str]:
    """dest -> the first option string of the flow's generated command line."""
    parser = parser_of(flow)
    return {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}


def train_parser(_flow):
    from flows.cli import flow_parser

    return flow_parser(train_sales_model, "python -m flows.train")


def test_every_training_parameter_has_an_option_spelled_from_its_name():
    options = options_of(train_sales_model, train_parser)
    for name in inspect.signature(train_sales_model.fn).parameters:
        expected = "--no-cache" if name == "use_cache" else "--" + name.replace("_", "-")
        assert options[name] == expected


def test_options_users_type_keep_their_spelling_and_stay_text():
    parsed = parse_args(
        [
            *["--no-cache", "--id-column", "none", "--holdout-fraction", "0.3", "-v"],
            *["--lr", "0.1", "--features", "a", "b", "--data", "x.csv", "--task-runner", "dask"],
        ]
    )
    assert parsed == {
        "use_cache": "false",
        "id_column": "none",
        "holdout_fraction": "0.3",
        "verbose": True,
        "lr": "0.1",
        "features": ["a", "b"],
        "data": "x.csv",  # one value of a `str | list` parameter is that value
        "task_runner": "dask",
    }
    assert parse_args(["--data", "a.csv", "b.csv"])["data"] == ["a.csv", "b.csv"]
    assert parse_args(["--targets", "y"])["targets"] == ["y"]  # a tuple: a list of one
    checked = train_sales_model.validate_parameters(
        {k: v for k, v in parsed.items() if k not in ("verbose", "task_runner")}
    )
    assert checked["use_cache"] is False
    assert checked["holdout_fraction"] == 0.3


def test_help_comes_from_the_parameter_descriptions(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "Share of rows held out for evaluation, [0, 1). (default 0.2)" in shown
    assert "--solver {auto,direct,moments}" in shown
    assert "--no-cache Parse every file, neither reading nor filling the" in shown


def test_a_bad_value_is_refused_by_the_signature_with_exit_code_2(capsys):
    assert score_main(["--max-bad-fraction", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: parameter max_bad_fraction:")


def test_run_settings_are_taken_from_the_training_parameters_by_name():
    parameters = inspect.signature(train_sales_model.fn).parameters
    for setting in dataclasses.fields(RunConfig):
        if setting.name in INTERNAL:
            continue
        assert setting.name in parameters, f"RunConfig.{setting.name} is no flow parameter"
        default = setting.default
        if default is dataclasses.MISSING:
            continue
        assert parameters[setting.name].default == default, setting.name
    config = RunConfig.of(
        {"features": ["a"], "targets": ["y"], "id_column": "none", "split_mb": 1.5, "seed": 3}
    )
    assert (config.features, config.id_column, config.split_bytes) == (("a",), None, 3 << 19)
    assert config.seed == 3


@pytest.mark.parametrize("flow", [train_sales_model, score_sales, watch_landing])
def test_every_parameter_has_a_description(flow):
    schema = flow.parameters.model_dump()["properties"]
    for name, prop in schema.items():
        assert prop.get("description") or prop.get("title"), name


def test_the_command_line_page_lists_every_training_option():
    page = (REPO / "docs" / "command-line.md").read_text()
    options = options_of(train_sales_model, train_parser)
    missing = [flag for flag in options.values() if f"`{flag}`" not in page and flag != "-h"]
    assert missing == []
