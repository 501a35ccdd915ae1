"""The promotion gate through the training flow: a candidate worse than the champion on the
same holdout rows, for any one target, leaves champion.json as it was; promotion_tolerance lets
it through."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from flows.train import train_sales_model
from tests.conftest import read_table

FEATURES = ["avg_income_k", "price_k", "tax_k"]
TARGETS = ["units_sold_k", "revenue_k"]


def sales_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    income = rng.uniform(10, 90, n)
    price = 0.2 + 0.01 * income + rng.uniform(0, 0.3, n)
    tax = price * rng.uniform(0.05, 0.25, n)
    units = 9 + 0.1 * income - 3 * price - 8 * tax + rng.normal(0, 0.5, n)
    revenue = 2 + 0.05 * income + 4 * price + rng.normal(0, 0.3, n)
    return pd.DataFrame(
        {
            "country": [f"C{i:04d}" for i in range(n)],
            "avg_income_k": income.round(3),
            "price_k": price.round(4),
            "tax_k": tax.round(4),
            "units_sold_k": units.round(3),
            "revenue_k": revenue.round(3),
        }
    )


@pytest.fixture(params=["direct", "moments"])
def solver(request):
    return request.param


def train(path, output, solver, **extra):
    return train_sales_model(
        data=str(path),
        output=str(output),
        features=FEATURES,
        targets=TARGETS,
        dtype="float64",
        solver=solver,
        **extra,
    )


@pytest.mark.parametrize("corrupted", TARGETS)
def test_a_candidate_worse_on_one_target_is_not_promoted(tmp_path, solver, corrupted):
    output = tmp_path / "out"
    good = sales_frame()
    good.to_csv(tmp_path / "good.csv", index=False)
    champion = train(tmp_path / "good.csv", output, solver)
    assert champion["promotion"]["promoted"]
    pointer = (output / "champion.json").read_bytes()

    # Same countries, so the same holdout rows; one target of the training rows is noise.
    predictions = pd.read_parquet(output / champion["outputs"]["predictions"])
    holdout = set(predictions.loc[predictions["split"] == "holdout", "country"])
    train_rows = ~good["country"].isin(holdout)
    worse = good.copy()
    noise = np.random.default_rng(1).normal(0, 20, train_rows.sum())
    worse.loc[train_rows, corrupted] = (worse.loc[train_rows, corrupted] + noise).abs().round(3)
    worse.to_csv(tmp_path / "worse.csv", index=False)

    candidate = train(tmp_path / "worse.csv", output, solver)
    decision = candidate["promotion"]
    assert candidate["status"] == "completed"
    assert not decision["promoted"]
    assert decision["reason"].startswith(f"holdout MSE worse than champion {champion['run_id']}")
    assert f"{corrupted}:" in decision["reason"]
    assert decision["holdout_rows"] == len(holdout)
    mse = decision["candidate_holdout_mse"], decision["champion_holdout_mse"]
    assert mse[0][corrupted] > mse[1][corrupted]
    assert (output / "champion.json").read_bytes() == pointer
    # The candidate's outputs are published all the same.
    assert (output / candidate["outputs"]["weights"]).exists()

    # With enough tolerance the same candidate is promoted and the pointer moves to it.
    ratio = max(
        decision["candidate_holdout_mse"][t] / decision["champion_holdout_mse"][t] for t in TARGETS
    )
    tolerant = train(tmp_path / "worse.csv", output, solver, promotion_tolerance=ratio - 1 + 1e-6)
    assert tolerant["promotion"]["promoted"]
    assert tolerant["promotion"]["tolerance"] == pytest.approx(ratio - 1 + 1e-6)
    moved = json.loads((output / "champion.json").read_text())
    assert moved["run_id"] == tolerant["run_id"]
    assert moved["holdout_mse"] == tolerant["promotion"]["candidate_holdout_mse"]


def test_a_stall_short_of_the_optimum_is_not_promoted(tmp_path):
    # Two features correlated 0.9988: float32 gradient descent stops making measurable progress
    # well before the optimum's coefficients. It must not be called converged, and so not
    # become the champion, unless it really is within tol; float64 (the default) is.
    rng = np.random.default_rng(0)
    n, rho = 5000, 0.9988
    z = rng.normal(size=(n, 2))
    x1 = 60 + 12 * z[:, 0]
    x2 = 1.5 + 0.3 * (rho * z[:, 0] + np.sqrt(1 - rho**2) * z[:, 1])
    y = 9 + 0.1 * x1 - 3 * x2 + rng.normal(0, 0.5, n)
    frame = pd.DataFrame({"x1": x1, "x2": x2, "y": y})
    frame.to_csv(tmp_path / "collinear.csv", index=False, float_format="%.17g")
    output = tmp_path / "out"
    options = {"features": ("x1", "x2"), "targets": ("y",), "id_column": "none"}
    data = str(tmp_path / "collinear.csv")
    manifest = train_sales_model(data=data, output=str(output), dtype="float32", **options)
    training = manifest["training"]
    predictions = pd.read_parquet(output / manifest["outputs"]["predictions"])
    train_rows = predictions[predictions["split"] == "train"]
    X, target = train_rows[["x1", "x2"]].to_numpy(), train_rows["y"].to_numpy()
    design = np.column_stack([X, np.ones(len(X))])
    solution, residual, *_ = np.linalg.lstsq(design, target, rcond=None)
    optimum = residual[0] / len(X)
    gap = (train_rows["residual_y"].pow(2).mean() - optimum) / optimum
    weights = read_table(output, "weights").set_index("feature")
    error = np.abs(weights.loc[["x1", "x2"], "weight"] - solution[:2]) / np.abs(solution[:2])
    assert not training["converged"], training
    assert gap > 1e-9 or error.max() > 1e-9  # it is not within tol
    assert not manifest["promotion"]["promoted"]
    assert manifest["promotion"]["reason"] == "training did not converge"
    assert not (output / "champion.json").exists()

    manifest = train_sales_model(data=data, output=str(output), **options)
    assert manifest["training"]["converged"], manifest["training"]
    assert manifest["promotion"]["promoted"]
    weights = read_table(output, "weights")
    weights = weights[weights["run_id"] == manifest["run_id"]].set_index("feature")
    np.testing.assert_allclose(weights.loc[["x1", "x2"], "weight"], solution[:2], rtol=1e-9)


def test_a_rerun_on_the_champions_data_keeps_the_champion(tmp_path):
    output = tmp_path / "out"
    solver = "moments"  # the gate compares models, whichever solver made them
    sales_frame().to_csv(tmp_path / "sales.csv", index=False)
    champion = train(tmp_path / "sales.csv", output, solver)
    # the same rows under another name, with a tolerance that would let a worse model through:
    # the same model
    sales_frame().to_csv(tmp_path / "again.csv", index=False)
    again = train(tmp_path / "again.csv", output, solver, promotion_tolerance=0.5)
    assert not again["promotion"]["promoted"]
    assert again["promotion"]["reason"].startswith(
        f"holdout MSE equal to champion {champion['run_id']}'s on "
    )
    pointer = json.loads((output / "champion.json").read_text())
    assert pointer["run_id"] == champion["run_id"]
