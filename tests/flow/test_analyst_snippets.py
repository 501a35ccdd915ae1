"""The analysts' view: docs/analysts.md's queries run verbatim in DuckDB, pandas and polars and
show committed runs only; reports with plots, drift, scoring."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.score import score_sales
from flows.train import train_sales_model
from tasks.common.errors import PipelineError
from tasks.outputs import tables
from tasks.outputs.plots import DPI, FIGSIZE
from tests.conftest import HEADER, REPO, sales_rows

PAGE = REPO / "docs" / "analysts.md"
# A fenced block and the marker line above it: `<!-- snippet: KIND [NAME] -->` (run by these
# tests), `<!-- not run here: WHY -->` (shown only), `<!-- console -->` (test_readme_commands).
BLOCK = re.compile(r"^([^\n]*)\n```(\w+)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"<!-- (?:snippet: (\w+)(?: (\w+))?|(not run here): .+|(console)) -->")
# The queries: each a SQL snippet of this name and a variable of the pandas and polars snippets.
QUERIES = (
    "champion_predictions",
    "weights_over_time",
    "holdout_history",
    "significant",
    "last_quarantine",
    "champion_history",
    "weights_v0",
    "weights_then",
)
LIBRARIES = ("duckdb", "pandas", "polars")
# A run that died after its promotion and some of its table commits, before its row of `runs`;
# its id sorts after every real run's.
DEAD_RUN = "29991231T235959.999Z-deadbeef"


@dataclass(frozen=True)
class Block:
    kind: str  # duckdb, sql, pandas or polars: run; "not run here"; console
    name: str
    code: str  # padded with newlines so that a traceback names the page's line


def page_blocks() -> list[Block]:
    """Every fenced block of the page with its marker (a block without one fails here)."""
    text, blocks = PAGE.read_text(), []
    for match in BLOCK.finditer(text):
        marker = MARKER.fullmatch(match.group(1))
        assert marker, f"a ```{match.group(2)} block of {PAGE.name} has no marker: {match[1]!r}"
        kind = marker.group(1) or marker.group(3) or marker.group(4)
        padding = "\n" * text[: match.start(3)].count("\n")
        blocks.append(Block(kind, marker.group(2) or "", padding + match.group(3)))
    return blocks


def run_page(base: Path) -> dict[str, dict[str, pd.DataFrame]]:
    """Every snippet of the page, verbatim and in page order, from `base` (the folder holding
    output/): the DuckDB set-up and the SQL through its connection, the pandas and the polars
    snippet. Returns each library's result of each query as a pandas DataFrame."""
    names: dict[str, dict] = {"duckdb": {}, "pandas": {}, "polars": {}}
    results: dict[str, dict[str, pd.DataFrame]] = {library: {} for library in LIBRARIES}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        for block in page_blocks():
            if block.kind == "sql":
                results["duckdb"][block.name] = names["duckdb"]["con"].sql(block.code).df()
            elif block.kind in names:
                exec(compile(block.code, str(PAGE), "exec"), names[block.kind])
    for name in QUERIES:
        results["pandas"][name] = names["pandas"][name]
        results["polars"][name] = names["polars"][name].to_pandas()
    return results


def run_rows(output: Path, table: str, run_id: str) -> pd.DataFrame:
    """One run's committed rows of a table."""
    return tables.read(output, table, filters=[("run_id", "=", run_id)]).to_pandas()


def lines(rows: pd.DataFrame) -> list[tuple[str, int]]:
    """The input lines the rows came from, sorted."""
    return sorted(zip(rows["source_file"], rows["source_line"], strict=True))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with output/ as an analyst would find it: three training runs, then a scoring
    run with the champion. The first is promoted; the second (a file more, with a bad row) is
    promoted over it; the third (16 rows and a bad one, one epoch) does not converge, so it is
    not promoted, and its price_k interval includes zero."""
    base = tmp_path_factory.mktemp("analyst")
    data = base / "sales.csv"
    data.write_text("\n".join([HEADER, *sales_rows(120, seed=1)]) + "\n")
    more = base / "more.csv"
    more.write_text("\n".join([HEADER, *sales_rows(60, seed=2, start=500), "BAD,x,1,1,1"]) + "\n")
    few = base / "few.csv"
    few.write_text("\n".join([HEADER, *sales_rows(16, seed=3, start=900), "BAD,x,1,1,1"]) + "\n")
    output = base / "output"
    first = train_sales_model(data=str(data), output=str(output))
    second = train_sales_model(data=[str(data), str(more)], output=str(output))
    third = train_sales_model(data=str(few), output=str(output), max_epochs=1, lr=1e-3)
    features = base / "features.csv"
    features.write_text(
        "country,avg_income_k,price_k,tax_k\nAA,50,0.9,0.1\nBB,20,0.5,0.05\nCC,x,1,1\n"
    )
    scored = score_sales(data=str(features), output=str(output), max_bad_fraction=0.5)
    assert [m["promotion"]["promoted"] for m in (first, second, third)] == [True, True, False]
    return base, (first, second, third), scored


@pytest.fixture(scope="module")
def page(workspace):
    base, *_ = workspace
    return run_page(base)


@pytest.fixture(scope="module")
def with_a_dead_run(workspace, tmp_path_factory):
    """A copy of the workspace's output/ where a run died before its row of `runs`: after it
    committed its predictions, weights, metrics and quarantine and moved the champion to itself.
    Returns the page's results there."""
    base, (_, second, _), _ = workspace
    copy = tmp_path_factory.mktemp("dead")
    output = shutil.copytree(base / "output", copy / "output")
    for table in ("predictions", "weights", "metrics", "quarantine"):
        rows = tables.read(output, table, filters=[("run_id", "=", second["run_id"])])
        tables.append(output, table, rows.drop_columns(["run_id"]), DEAD_RUN)
    version, _ = tables.current_champion(output)
    promotion = {"run_id": DEAD_RUN, "reason": "died before its commit", "holdout_mse": {}}
    assert tables.swap_champion(output, version, promotion)
    for table in ("predictions", "weights", "metrics", "quarantine"):
        assert DEAD_RUN in tables.run_ids(output, table)  # there, for a reader of the files
    assert tables.current_champion(output)[1]["run_id"] == DEAD_RUN
    return run_page(copy)


def test_every_block_of_the_page_is_run_or_marked_not_run_here():
    blocks = page_blocks()
    run = [b for b in blocks if b.kind in {"duckdb", "sql", "pandas", "polars"}]
    assert [b.name for b in run if b.kind == "sql"] == list(QUERIES)
    assert [b.kind for b in run if b.kind != "sql"] == ["duckdb", "duckdb", "pandas", "polars"]
    assert run[0].kind == "duckdb"  # the set-up comes before the first query
    shown = [b for b in blocks if b.kind == "not run here"]
    assert len(shown) == 1
    assert 'spark.read.format("delta")' in shown[0].code
    assert '.option("versionAsOf", 0)' in shown[0].code
    assert all("spark" not in b.code for b in run)  # the tests have no Spark


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_champions_predictions(page, workspace, library):
    base, (_, second, third), _ = workspace
    rows = page[library]["champion_predictions"]
    assert set(rows["run_id"]) == {second["run_id"]}  # not the last run: it was not promoted
    assert len(rows) == second["rows"]["accepted"] != third["rows"]["accepted"]
    expected = run_rows(base / "output", "predictions", second["run_id"])
    assert lines(rows) == lines(expected)


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_weights_of_every_run_over_time(page, workspace, library):
    base, runs, _ = workspace
    rows = page[library]["weights_over_time"]
    assert rows["run_id"].drop_duplicates().tolist() == [m["run_id"] for m in runs]
    expected = pd.concat([run_rows(base / "output", "weights", m["run_id"]) for m in runs])
    key = ["run_id", "target", "feature"]
    np.testing.assert_array_equal(
        rows.sort_values(key)["weight"], expected.sort_values(key)["weight"]
    )
    started = rows.groupby("run_id")["started_at"].first()
    assert [started[m["run_id"]] for m in runs] == [pd.Timestamp(m["started_at"]) for m in runs]


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_holdout_mse_history_with_the_gates_decision(page, workspace, library):
    _, runs, _ = workspace
    rows = page[library]["holdout_history"]
    assert rows["run_id"].tolist() == [m["run_id"] for m in runs]
    assert rows["promoted"].tolist() == [True, True, False]
    assert rows["promotion_reason"].tolist()[2] == "training did not converge"
    mse = [next(r["mse"] for r in m["metrics"] if r["split"] == "holdout") for m in runs]
    np.testing.assert_allclose(rows["mse"], mse, rtol=1e-12)


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_coefficients_whose_interval_excludes_zero(page, workspace, library):
    base, (_, _, third), _ = workspace
    rows = page[library]["significant"]
    weights = tables.read(base / "output", "weights").to_pandas()
    excludes_zero = weights[(weights["ci_low"] > 0) | (weights["ci_high"] < 0)]
    assert len(rows) == len(excludes_zero) == len(weights) - 1
    assert (np.sign(rows["ci_low"]) == np.sign(rows["ci_high"])).all()
    terms = set(zip(rows["run_id"], rows["feature"], strict=True))
    assert (third["run_id"], "price_k") not in terms


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_quarantine_of_the_last_training_run(page, workspace, library):
    _, (_, _, third), _ = workspace
    rows = page[library]["last_quarantine"]
    assert set(rows["run_id"]) == {third["run_id"]}
    assert [Path(f).name for f in rows["source_file"]] == ["few.csv"]
    assert rows["raw"].tolist() == ["BAD,x,1,1,1"]


@pytest.mark.parametrize("library", LIBRARIES)
def test_the_champion_history_with_the_weights_each_champion_had(page, workspace, library):
    base, (first, second, _), _ = workspace
    rows = page[library]["champion_history"]
    reigns = rows.drop_duplicates("version").set_index("version")
    assert reigns["run_id"].to_dict() == {0: first["run_id"], 1: second["run_id"]}
    assert reigns.loc[0, "replaced_at"] == reigns.loc[1, "promoted_at"]
    assert pd.isna(reigns.loc[1, "replaced_at"])  # the current champion
    for version, manifest in enumerate((first, second)):
        weights = run_rows(base / "output", "weights", manifest["run_id"])
        held = rows[rows["version"] == version].set_index("feature")["weight"]
        assert held.to_dict() == weights.set_index("feature")["weight"].to_dict()


@pytest.mark.parametrize("library", LIBRARIES)
def test_time_travel_reads_the_weights_as_they_were(page, workspace, library):
    base, (first, second, _), _ = workspace
    at_version_0 = page[library]["weights_v0"]
    assert set(at_version_0["run_id"]) == {first["run_id"]}
    assert (
        at_version_0.set_index("feature")["weight"].to_dict()
        == (
            run_rows(base / "output", "weights", first["run_id"]).set_index("feature")["weight"]
        ).to_dict()
    )
    # As the weights table was when the champion (the second run) committed: no third run yet.
    then = page[library]["weights_then"]
    assert then["run_id"].value_counts().to_dict() == {first["run_id"]: 4, second["run_id"]: 4}


@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("query", QUERIES)
def test_a_run_that_died_before_its_commit_is_in_no_result(with_a_dead_run, page, library, query):
    rows = with_a_dead_run[library][query]
    assert DEAD_RUN not in set(rows["run_id"])
    before = page[library][query]
    assert len(rows) == len(before)
    assert sorted(rows["run_id"]) == sorted(before["run_id"])


def test_a_run_that_died_after_its_promotion_is_not_the_champion(with_a_dead_run, workspace):
    _, (_, second, _), _ = workspace
    for library in LIBRARIES:
        history = with_a_dead_run[library]["champion_history"]
        assert history["version"].max() == 1  # the dead run's promotion (version 2) is left out
        assert history[history["version"] == 1]["replaced_at"].isna().all()
        assert set(with_a_dead_run[library]["champion_predictions"]["run_id"]) == {second["run_id"]}


def test_the_page_runs_before_the_first_scoring_run(workspace, tmp_path):
    base, (_, second, _), _ = workspace
    unscored = shutil.ignore_patterns("scores", "score_quarantine")
    shutil.copytree(base / "output", tmp_path / "output", ignore=unscored)
    results = run_page(tmp_path)
    for library in LIBRARIES:
        rows = results[library]["champion_predictions"]
        assert len(rows) == second["rows"]["accepted"]


def test_every_training_run_has_a_report_with_plots(workspace):
    base, (first, second, _), _ = workspace
    for manifest in (first, second):
        report = base / "output" / manifest["outputs"]["report"]
        text = report.read_text()
        assert f"run `{manifest['run_id']}`" in text
        assert "**Promotion**" in text
        assert "**Coefficients** (least squares on the train split; 95% intervals" in text
        for png in ("coefficients.png", "loss.png", "holdout.png", "residuals.png", "history.png"):
            assert f"]({png})" in text
            with Image.open(report.parent / png) as image:
                image.verify()
            with Image.open(report.parent / png) as image:
                assert image.size == (FIGSIZE[0] * DPI, FIGSIZE[1] * DPI)
    assert (
        "**Drift** against the champion's data"
        in (base / "output" / second["outputs"]["report"]).read_text()
    )
    assert first["drift"] is None  # no champion to compare with yet
    # More rows from the same distribution: nothing flagged.
    assert not any(d["drifted"] for d in second["drift"]["columns"])


def test_drift_is_reported_for_a_shifted_file(tmp_path):
    base = tmp_path / "base.csv"
    base.write_text("\n".join([HEADER, *sales_rows(150, seed=1)]) + "\n")
    rows = [line.split(",") for line in sales_rows(150, seed=2)]
    shifted = tmp_path / "shifted.csv"  # every country 40k richer
    shifted.write_text(
        "\n".join([HEADER, *[f"{c},{float(a) + 40},{p},{t},{u}" for c, a, p, t, u in rows]]) + "\n"
    )
    output = tmp_path / "out"
    train_sales_model(data=str(base), output=str(output))
    manifest = train_sales_model(data=str(shifted), output=str(output))
    flagged = {d["column"] for d in manifest["drift"]["columns"] if d["drifted"]}
    assert "avg_income_k" in flagged
    assert "price_k" not in flagged
    report = (output / manifest["outputs"]["report"]).read_text()
    assert "**drift in avg_income_k" in report


def test_scoring_with_a_run_equals_x_w_plus_b_from_the_weights_table(workspace):
    base, (first, second, _), scored = workspace
    output = base / "output"
    assert scored["rows"] == {"in": 3, "accepted": 2, "quarantined": 1}
    assert scored["model_run_id"] == second["run_id"]  # the champion
    again = score_sales(
        data=str(base / "features.csv"),
        output=str(output),
        run_id=first["run_id"],
        max_bad_fraction=0.5,
    )
    scores = run_rows(output, "scores", again["run_id"]).sort_values("source_line")
    weights = run_rows(output, "weights", first["run_id"]).set_index("feature")["weight"]
    X = scores[["avg_income_k", "price_k", "tax_k"]].to_numpy()
    by_hand = X @ weights[["avg_income_k", "price_k", "tax_k"]].to_numpy() + weights["(intercept)"]
    np.testing.assert_allclose(scores["predicted_units_sold_k"], by_hand, rtol=1e-12)
    assert set(scores["model_run_id"]) == {first["run_id"]}
    quarantined = run_rows(output, "score_quarantine", again["run_id"])
    assert quarantined["source_line"].tolist() == [4]


def test_scoring_before_any_champion_fails_clearly(tmp_path):
    features = tmp_path / "f.csv"
    features.write_text("country,avg_income_k,price_k,tax_k\nAA,50,0.9,0.1\n")
    with pytest.raises(PipelineError, match=r"no champion model in .* yet: train one first"):
        score_sales(data=str(features), output=str(tmp_path / "empty"))


def test_champion_json_holds_the_fields_the_analysts_page_lists(workspace):
    base, *_ = workspace
    table = PAGE.read_text().split("`champion.json` names the champion", 1)[1].split("\n\n")[1]
    documented = re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)
    champion = json.loads((base / "output" / "champion.json").read_text())
    assert documented == list(champion)
