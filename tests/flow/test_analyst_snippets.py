"""The analysts' view: docs/analysts.md's queries run verbatim, reports with plots, drift,
scoring."""

from __future__ import annotations

import json
import re

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.score import score_sales
from flows.train import train_sales_model
from tasks.common.errors import PipelineError
from tasks.outputs.plots import DPI, FIGSIZE
from tests.conftest import HEADER, REPO, sales_rows

SNIPPET = re.compile(r"<!-- snippet: (\w+) -->\n```\w+\n(.*?)```", re.DOTALL)
PAGE = REPO / "docs" / "analysts.md"


def page_snippets() -> list[tuple[str, str]]:
    return SNIPPET.findall(PAGE.read_text())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with output/ holding two training runs (the second with a bad row) and a
    scoring run, as an analyst would find it."""
    base = tmp_path_factory.mktemp("analyst")
    data = base / "sales.csv"
    data.write_text("\n".join([HEADER, *sales_rows(120, seed=1)]) + "\n")
    more = base / "more.csv"
    more.write_text("\n".join([HEADER, *sales_rows(60, seed=2, start=500), "BAD,x,1,1,1"]) + "\n")
    output = base / "output"
    first = train_sales_model(data=str(data), output=str(output))
    second = train_sales_model(data=[str(data), str(more)], output=str(output))
    features = base / "features.csv"
    features.write_text(
        "country,avg_income_k,price_k,tax_k\nAA,50,0.9,0.1\nBB,20,0.5,0.05\nCC,x,1,1\n"
    )
    scored = score_sales(data=str(features), output=str(output), max_bad_fraction=0.5)
    return base, first, second, scored


def test_the_analysts_page_has_the_five_queries_in_sql_and_the_first_four_in_pandas():
    kinds = [kind for kind, _ in page_snippets()]
    assert kinds == ["sql", "sql", "sql", "sql", "sql", "python"]


def test_the_analysts_page_sql_snippets_run_verbatim(workspace, monkeypatch):
    base, first, second, _ = workspace
    monkeypatch.chdir(base)
    champion = json.loads((base / "output" / "champion.json").read_text())["run_id"]
    champion_rows = {first["run_id"]: first, second["run_id"]: second}[champion]
    sql = [code for kind, code in page_snippets() if kind == "sql"]

    predictions = duckdb.sql(sql[0]).df()
    assert set(predictions["run_id"]) == {champion}
    assert len(predictions) == champion_rows["rows"]["accepted"]

    weights = duckdb.sql(sql[1]).df()
    assert weights["run_id"].drop_duplicates().tolist() == sorted(
        [first["run_id"], second["run_id"]]
    )
    assert len(weights) == 2 * 4

    history = duckdb.sql(sql[2]).df()
    assert history["run_id"].tolist() == sorted([first["run_id"], second["run_id"]])
    assert history["promoted"].tolist()[0]  # the first run was promoted: no champion before

    significant = duckdb.sql(sql[3]).df()
    weights = pd.concat(
        [pd.read_parquet(base / "output" / m["outputs"]["weights"]) for m in (first, second)]
    )
    excludes_zero = (weights["ci_low"] > 0) | (weights["ci_high"] < 0)
    assert 0 < len(significant) == int(excludes_zero.sum())
    assert (np.sign(significant["ci_low"]) == np.sign(significant["ci_high"])).all()
    assert set(significant["run_id"]) == {first["run_id"], second["run_id"]}

    quarantine = duckdb.sql(sql[4]).df()
    assert set(quarantine["run_id"]) == {second["run_id"]}
    assert quarantine["raw"].tolist() == ["BAD,x,1,1,1"]


def test_the_analysts_page_pandas_snippet_runs_verbatim(workspace, monkeypatch):
    base, first, second, _ = workspace
    monkeypatch.chdir(base)
    (code,) = [code for kind, code in page_snippets() if kind == "python"]
    names: dict = {}
    exec(compile(code, str(PAGE), "exec"), names)
    assert len(names["champion_predictions"]) in {
        first["rows"]["accepted"],
        second["rows"]["accepted"],
    }
    assert names["holdout_history"]["run_id"].astype(str).tolist() == sorted(
        [first["run_id"], second["run_id"]]
    )
    assert names["last_run"] == second["run_id"]
    assert names["last_quarantine"]["reason"].tolist() == ["not a number"]


def test_every_training_run_has_a_report_with_plots(workspace):
    base, first, second, _ = workspace
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
    base, first, _, scored = workspace
    output = base / "output"
    assert scored["rows"] == {"in": 3, "accepted": 2, "quarantined": 1}
    again = score_sales(
        data=str(base / "features.csv"),
        output=str(output),
        run_id=first["run_id"],
        max_bad_fraction=0.5,
    )
    scores = pd.read_parquet(output / again["outputs"]["scores"])
    weights = pd.read_parquet(output / first["outputs"]["weights"]).set_index("feature")["weight"]
    X = scores[["avg_income_k", "price_k", "tax_k"]].to_numpy()
    by_hand = X @ weights[["avg_income_k", "price_k", "tax_k"]].to_numpy() + weights["(intercept)"]
    np.testing.assert_allclose(scores["predicted_units_sold_k"], by_hand, rtol=1e-12)
    assert set(scores["model_run_id"]) == {first["run_id"]}
    quarantined = pd.read_parquet(output / again["outputs"]["score_quarantine"])
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
