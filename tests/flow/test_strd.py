"""Certified accuracy through the training flow: each NIST StRD linear least-squares dataset
(tests/data/strd), cut into blocks of a few lines and three byte ranges, trained with the
default options, and its published weights table judged against NIST's certified values by the
log relative error (tests/strd.py): the digits each published number shares with NIST's."""

from __future__ import annotations

import csv
import shutil

import pytest

from flows.train import train_sales_model
from tests.conftest import read_table
from tests.strd import NAMES, load, lres, worst_lre

# Blocks of a few lines, and each file in three byte ranges (as on a cluster): every merge of
# partial statistics the pipeline has runs on these small files.
RANGES_PER_FILE = 3
# Digits each column must share with NIST (weight, then ls_weight and std_error): issue 23's
# targets, 9/10 on the lower-difficulty sets and Longley, 7/8 on the Wampler polynomials. The
# factor alone keeps 7.8 digits on Wampler4 and 5.8 on Wampler5 (float64's limit for any
# Householder QR: noise 1e3 and 1e6 times the signal of the low powers); the extended-precision
# Newton steps over the rows (tasks/model/refine.py) give the rest.
DIGITS = {
    "Norris": (9, 10),
    "Pontius": (9, 10),
    "Longley": (9, 10),
    "Wampler1": (7, 8),
    "Wampler2": (7, 8),
    "Wampler3": (7, 8),
    "Wampler4": (7, 8),
    "Wampler5": (7, 8),
}
# Filip (degree 10, condition ~1e9 after scaling) is solved to this many digits.
FILIP_DIGITS = 6


def train_on(name, tmp_path):
    """Train on dataset `name` cut small; returns (dataset, manifest, weights by feature)."""
    dataset = load(name)
    path = shutil.copy(dataset.path, tmp_path / dataset.path.name)
    output = tmp_path / "out"
    manifest = train_sales_model(
        data=str(path),
        output=str(output),
        features=dataset.features,
        targets=(dataset.target,),
        id_column="none",
        holdout_fraction=0.0,
        split_mb=dataset.path.stat().st_size / RANGES_PER_FILE / 2**20,
    )
    rows = len(rows_of(dataset))
    assert manifest["rows"] == {"in": rows, "accepted": rows, "quarantined": 0}
    assert_read_exactly(output, dataset)
    weights = read_table(output, "weights").set_index("feature")
    return dataset, manifest, weights


def rows_of(dataset):
    """The CSV's values as float64, by Python's float (correctly rounded)."""
    with dataset.path.open(newline="") as file:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]


def assert_read_exactly(output, dataset):
    """The published rows hold the file's float64s bit for bit (17-digit text included): the
    digits lost, if any, are lost by the fit."""
    predictions = read_table(output, "predictions").sort_values("source_line")
    columns = [*dataset.features, dataset.target]
    expected = [[row[c] for c in columns] for row in rows_of(dataset)]
    assert predictions[columns].to_numpy().tolist() == expected


def column(weights, name):
    return {term: float(value) for term, value in weights[name].items()}


def digits(weights, dataset) -> dict[str, float]:
    """The worst LRE of each published column against NIST's values (std_error where NIST
    certifies a nonzero one), rounded for messages."""
    found = {
        "weight": worst_lre(column(weights, "weight"), dataset.estimate),
        "ls_weight": worst_lre(column(weights, "ls_weight"), dataset.estimate),
    }
    if not dataset.exact_fit:
        found["std_error"] = worst_lre(column(weights, "std_error"), dataset.std_dev)
    return {name: round(value, 1) for name, value in found.items()}


@pytest.mark.parametrize("name", [n for n in NAMES if n != "Filip"])
def test_published_weights_agree_with_nists_certified_values(name, tmp_path, cut_small):
    dataset, manifest, weights = train_on(name, tmp_path)
    weight_digits, ls_digits = DIGITS[name]
    wanted = {"weight": weight_digits, "ls_weight": ls_digits, "std_error": ls_digits}
    found = digits(weights, dataset)
    terms = {c: lres(column(weights, c), dataset.estimate) for c in ("weight", "ls_weight")}
    assert all(found[c] >= wanted[c] for c in found), (found, terms)
    if dataset.exact_fit:
        # No residual to estimate an error from: the errors are null, and a note says why.
        assert weights["std_error"].isna().all()
        assert weights["note"].notna().all()
    (train,) = manifest["metrics"]
    assert train["converged"], train
    assert manifest["promotion"]["promoted"], manifest["promotion"]


def test_filip_is_solved_and_its_descent_not_called_converged_beyond_its_digits(
    tmp_path, cut_small
):
    dataset, manifest, weights = train_on("Filip", tmp_path)
    assert manifest["status"] == "completed"
    found = digits(weights, dataset)
    terms = lres(column(weights, "ls_weight"), dataset.estimate)
    assert found["ls_weight"] >= FILIP_DIGITS, (found, terms)
    assert found["std_error"] >= FILIP_DIGITS, found
    assert weights["note"].isna().all()
    # gradient descent gets as many digits, but a certificate to tol=1e-9 cannot hold at a
    # condition number of 1e9: the run says so and is not promoted
    assert found["weight"] >= FILIP_DIGITS, found
    (train,) = manifest["metrics"]
    assert not train["converged"]
    assert not manifest["promotion"]["promoted"]
