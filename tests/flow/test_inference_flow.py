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


def test_epoch_milliseconds_as_a_feature_keep_their_inference(tmp_path):
    # A timestamp in epoch milliseconds over one hour: its spread is 1e-6 of its size, which
    # sums of raw squares cannot tell from a constant.
    rng = np.random.default_rng(3)
    n, t0 = 60_000, 1_700_000_000_000
    t = t0 + np.sort(rng.integers(0, 3_600_000, n))
    x = rng.normal(0, 1, n)
    y = 5 + 2e-6 * (t - t0) + 0.5 * x + rng.normal(0, 0.3, n)
    path = tmp_path / "clicks.csv"
    pd.DataFrame({"t_ms": t, "x": x, "y": y}).to_csv(path, index=False, float_format="%.17g")
    output = tmp_path / "out"
    train_sales_model(
        data=str(path), output=str(output), features=("t_ms", "x"), targets=("y",),
        id_column="none",
    )  # fmt: skip
    weights = read_table(output, "weights")
    assert weights["note"].isna().all(), weights["note"].tolist()
    assert weights["std_error"].notna().all()

    train = read_table(output, "predictions").query("split == 'train'")
    # statsmodels on the time since t0 (an exact shift: integers below 2^53), its covariance
    # mapped back to the raw intercept b = b_shifted - w_t * t0
    shifted = np.column_stack([train["t_ms"] - t0, train["x"], np.ones(len(train))])
    ols = sm.OLS(train["y"].to_numpy(), shifted).fit()
    to_raw = np.eye(3)
    to_raw[2, 0] = -t0
    params = to_raw @ ols.params
    bse = np.sqrt(np.diag(to_raw @ ols.cov_params() @ to_raw.T))
    np.testing.assert_allclose(weights["ls_weight"], params, rtol=1e-6)
    np.testing.assert_allclose(weights["std_error"], bse, rtol=1e-6)
    np.testing.assert_allclose(weights["p_value"][:2], ols.pvalues[:2], rtol=1e-6)


@pytest.mark.parametrize("solver", ["direct", "moments"])
def test_targets_far_from_zero_keep_their_optimum_and_train_to_it(tmp_path, solver):
    # Targets around 1e6 with a spread of 0.01: sums of raw squares cancel to nothing there.
    rng = np.random.default_rng(4)
    n = 600
    x1, x2 = rng.normal(0, 1, n), rng.uniform(0, 10, n)
    y = 1e6 + 0.003 * x1 - 0.002 * x2 + rng.normal(0, 0.01, n)
    path = tmp_path / "big.csv"
    pd.DataFrame({"x1": x1, "x2": x2, "y": y}).to_csv(path, index=False, float_format="%.17g")
    output = tmp_path / "out"
    manifest = train_sales_model(
        data=str(path), output=str(output), features=("x1", "x2"), targets=("y",),
        id_column="none", solver=solver,
    )  # fmt: skip
    train = read_table(output, "predictions").query("split == 'train'")
    design = np.column_stack([train["x1"], train["x2"], np.ones(len(train))])
    solution = np.linalg.lstsq(design, train["y"].to_numpy(), rcond=None)[0]
    optimum = ((train["y"].to_numpy() - design @ solution) ** 2).mean()
    assert optimum == pytest.approx(1e-4, rel=0.2)  # the noise, not the offset
    metrics = read_table(output, "metrics").set_index("split")
    assert metrics.loc["train", "optimum_mse"] == pytest.approx(optimum, rel=1e-6)
    assert metrics.loc["train", "mse"] == pytest.approx(optimum, rel=1e-6)
    assert manifest["training"]["converged"]
    assert manifest["training"]["final_train_loss"] == pytest.approx(optimum, rel=1e-6)
    ols = sm.OLS(train["y"].to_numpy(), design).fit()
    assert metrics.loc["train", "f_stat"] == pytest.approx(ols.fvalue, rel=1e-6)
    assert metrics.loc["train", "adj_r2"] == pytest.approx(ols.rsquared_adj, rel=1e-6)
    assert read_table(output, "weights")["note"].isna().all()
