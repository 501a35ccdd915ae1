"""Coefficients analysts can cite, through the flows: any numeric CSV (another id column, or
none), inference that agrees with statsmodels on the published rows, prediction intervals in
the scores, and degenerate data named in the tables, the report and the summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from data.generate_advertising import COLUMNS, generate
from flows.score import score_sales
from flows.train import train_sales_model
from tasks.outputs.report import summary_text
from tests.conftest import REPO, read_table

ADS_FEATURES = ("TV", "radio", "newspaper")


@pytest.fixture
def advertising(tmp_path):
    """An advertising-shaped CSV: no id column, CRLF line ends, one row repeated."""
    rows = generate(120, seed=11)
    rows.append(rows[7])  # the same values twice: no id, so no duplicate key
    path = tmp_path / "advertising.csv"
    path.write_bytes(
        "\r\n".join([",".join(COLUMNS), *(",".join(row) for row in rows)]).encode() + b"\r\n"
    )
    return path


def test_a_csv_without_an_id_column_trains_and_scores_with_intervals(advertising, tmp_path):
    output = tmp_path / "out"
    manifest = train_sales_model(
        data=str(advertising),
        output=str(output),
        features=ADS_FEATURES,
        targets=("sales",),
        id_column="none",
    )
    assert manifest["rows"] == {"in": 121, "accepted": 121, "quarantined": 0}
    predictions = read_table(output, "predictions")
    assert "country" not in predictions.columns
    # The repeated row keeps its values' split, wherever it is in the file.
    twins = predictions[predictions["source_line"].isin([9, 123])]
    assert twins["split"].nunique() == 1

    train = predictions[predictions["split"] == "train"]
    design = sm.add_constant(train[list(ADS_FEATURES)].to_numpy(), prepend=False)
    ols = sm.OLS(train["sales"].to_numpy(), design).fit()
    robust = sm.OLS(train["sales"].to_numpy(), design).fit(cov_type="HC1")
    weights = read_table(output, "weights")
    np.testing.assert_allclose(weights["ls_weight"], ols.params, rtol=1e-6)
    np.testing.assert_allclose(weights["std_error"], ols.bse, rtol=1e-6)
    np.testing.assert_allclose(weights["p_value"], ols.pvalues, rtol=1e-6)
    np.testing.assert_allclose(weights["robust_std_error"], robust.bse, rtol=1e-6)
    metrics = read_table(output, "metrics").set_index("split")
    assert metrics.loc["train", "f_stat"] == pytest.approx(ols.fvalue, rel=1e-6)
    assert metrics.loc["train", "adj_r2"] == pytest.approx(ols.rsquared_adj, rel=1e-6)

    new = pd.DataFrame(np.array(generate(6, seed=12), float)[:, :3], columns=list(ADS_FEATURES))
    features = tmp_path / "new.csv"
    new.to_csv(features, index=False)
    scored = score_sales(data=str(features), output=str(output), id_column="none")
    scores = pd.read_parquet(output / scored["outputs"]["scores"]).sort_values("source_line")
    frame = ols.get_prediction(sm.add_constant(new.to_numpy(), prepend=False)).summary_frame(0.05)
    np.testing.assert_allclose(scores["predicted_sales_low"], frame["obs_ci_lower"], rtol=1e-6)
    np.testing.assert_allclose(scores["predicted_sales_high"], frame["obs_ci_upper"], rtol=1e-6)
    assert (scores["predicted_sales_low"] < scores["predicted_sales"]).all()


def test_another_id_column_is_the_key_of_the_duplicate_check_and_the_outputs(tmp_path):
    path = tmp_path / "stores.csv"
    lines = ["store,TV,radio,newspaper,sales"]
    lines += [f"S{i},{','.join(row)}" for i, row in enumerate(generate(60, seed=2))]
    lines.append("S3,1.0,2.0,3.0,4.0")  # S3 again
    path.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out"
    train_sales_model(
        data=str(path), output=str(output), features=ADS_FEATURES, targets=("sales",),
        id_column="store",
    )  # fmt: skip
    (record,) = read_table(output, "quarantine").itertuples()
    assert (record.source_line, record.column, record.reason) == (62, "store", "duplicate key")
    assert record.detail == "store 'S3' already appears earlier in this file"
    assert read_table(output, "predictions")["store"].nunique() == 60


def test_a_constant_feature_is_named_and_training_goes_on(tmp_path):
    rows = generate(80, seed=4)
    path = tmp_path / "flat.csv"
    path.write_text(
        "\n".join(["TV,radio,newspaper,sales", *(f"{r[0]},{r[1]},5.0,{r[3]}" for r in rows)]) + "\n"
    )
    output = tmp_path / "out"
    manifest = train_sales_model(
        data=str(path), output=str(output), features=ADS_FEATURES, targets=("sales",),
        id_column="none",
    )  # fmt: skip
    assert manifest["status"] == "completed"
    weights = read_table(output, "weights")
    assert np.isfinite(weights["weight"]).all()
    note = "constant on the training rows: newspaper (no variation to estimate from)"
    assert (weights["note"] == note).all()
    assert weights[["std_error", "p_value", "ci_low", "ci_high"]].isna().all().all()
    report = (output / manifest["outputs"]["report"]).read_text()
    assert f"**No inference for sales**: {note}." in report
    assert "](coefficients.png)" in report
    assert f"no interval ({note})" in summary_text(manifest, output)


def test_the_id_column_and_the_columns_cannot_overlap(tmp_path):
    from tasks.common.errors import PipelineError

    with pytest.raises(PipelineError, match=r"'TV' is the row key; pass another --id-column"):
        train_sales_model(
            data=str(REPO / "data" / "advertising.csv"), output=str(tmp_path / "o"),
            features=ADS_FEATURES, targets=("sales",), id_column="TV",
        )  # fmt: skip
