"""Large offsets and (near-)collinear features through the training flow (issue 23): a year
column, epoch milliseconds and a target around 1e6; two features correlated to 0.99999; a
feature that is exactly a combination of two others. Each file is cut into tiny blocks and
three byte ranges (as in test_strd), and the published tables are judged against the exact
least-squares solution of the float64 values as parsed, computed in rational arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from flows.train import train_sales_model
from tests.conftest import read_table
from tests.strd import INTERCEPT, lres, worst_lre

RANGES_PER_FILE = 3
ROWS = 300
# Digits the published numbers must share with the exact solution. The offsets' columns are
# independent, so with exact centring float64 keeps ~15 digits: 13 leaves room for rounding
# and still catches a centring that rounds at the size of the offsets (11 digits). Two
# features correlated to 0.99999 leave ~10.5 digits in the intercept.
OFFSET_DIGITS = 13
NEAR_COLLINEAR_DIGITS = 8


def write_columns(path, columns: dict[str, np.ndarray]) -> list[list[float]]:
    """A CSV of float64 columns written with repr (they parse back bit for bit); its rows."""
    rows = [[float(v) for v in row] for row in zip(*columns.values(), strict=True)]
    lines = [",".join(columns), *(",".join(repr(v) for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n")
    return rows


def train_on(tmp_path, columns, features, target):
    """Train on these columns cut small; returns (manifest, weights by feature, predictions
    by source line, the output root)."""
    path = tmp_path / "offsets.csv"
    rows = write_columns(path, columns)
    output = tmp_path / "out"
    manifest = train_sales_model(
        data=str(path),
        output=str(output),
        features=features,
        targets=(target,),
        id_column="none",
        holdout_fraction=0.0,
        split_mb=path.stat().st_size / RANGES_PER_FILE / 2**20,
    )
    assert manifest["rows"] == {"in": ROWS, "accepted": ROWS, "quarantined": 0}
    predictions = read_table(output, "predictions").sort_values("source_line")
    # the rows were read exactly: the digits lost, if any, are lost by the fit
    assert predictions[list(columns)].to_numpy().tolist() == rows
    weights = read_table(output, "weights").set_index("feature")
    return manifest, weights, predictions, output


def solve(A: list[list[Fraction]], b: list[Fraction]) -> list[Fraction]:
    """A x = b exactly (Gauss-Jordan; A square and regular)."""
    m = [[*row, rhs] for row, rhs in zip(A, b, strict=True)]
    for i in range(len(m)):
        pivot = next(j for j in range(i, len(m)) if m[j][i] != 0)
        m[i], m[pivot] = m[pivot], m[i]
        m[i] = [v / m[i][i] for v in m[i]]
        for j in range(len(m)):
            if j != i and m[j][i] != 0:
                m[j] = [a - m[j][i] * c for a, c in zip(m[j], m[i], strict=True)]
    return [row[-1] for row in m]


def dot(a: list[Fraction], b: list[Fraction]) -> Fraction:
    return sum((u * v for u, v in zip(a, b, strict=True)), Fraction(0))


class Exact:
    """The least-squares fit of y on the columns X (lists of float64), in exact rationals:
    the centred normal equations Sxx w = Sxy, the intercept, the residuals and the standard
    errors s^2 (A^T A)^-1 of A = [X, 1]."""

    def __init__(self, X: list[list[float]], y: list[float]) -> None:
        n, d = len(y), len(X)
        xs = [[Fraction(v) for v in column] for column in X]
        ys = [Fraction(v) for v in y]
        means = [sum(c) / n for c in xs]
        mean_y = sum(ys) / n
        centred = [[v - mean for v in c] for c, mean in zip(xs, means, strict=True)]
        cy = [v - mean_y for v in ys]
        sxx = [[dot(ci, cj) for cj in centred] for ci in centred]
        sxy = [dot(ci, cy) for ci in centred]
        self.w = solve(sxx, sxy)
        self.b = mean_y - sum(w * m for w, m in zip(self.w, means, strict=True))
        self.residuals = [
            yi - self.b - sum(w * c[i] for w, c in zip(self.w, xs, strict=True))
            for i, yi in enumerate(ys)
        ]
        s2 = sum(r * r for r in self.residuals) / (n - d - 1)
        unit = [[Fraction(int(i == j)) for j in range(d)] for i in range(d)]
        inverse = [solve(sxx, column) for column in unit]  # Sxx is symmetric: rows = columns
        self.var = [s2 * inverse[i][i] for i in range(d)]
        leverage = sum(means[i] * inverse[i][j] * means[j] for i in range(d) for j in range(d))
        self.var_b = s2 * (Fraction(1, n) + leverage)

    def weights(self, names) -> dict[str, float]:
        slopes = {f: float(w) for f, w in zip(names, self.w, strict=True)}
        return {**slopes, INTERCEPT: float(self.b)}

    def std_errors(self, names) -> dict[str, float]:
        variances = [*self.var, self.var_b]
        return {t: math.sqrt(float(v)) for t, v in zip([*names, INTERCEPT], variances, strict=True)}


def column(weights, name):
    return {term: float(value) for term, value in weights[name].items()}


def assert_converged_and_promoted(manifest):
    (train,) = manifest["metrics"]
    assert train["converged"], train
    assert manifest["promotion"]["promoted"], manifest["promotion"]


def test_year_epoch_milliseconds_and_a_target_near_a_million(tmp_path, cut_small):
    rng = np.random.default_rng(23)
    year = rng.integers(2000, 2025, ROWS).astype(float)
    epoch_ms = 1.7e12 + np.round(rng.uniform(0, 3_600_000, ROWS), 3)
    x = np.round(rng.uniform(0, 10, ROWS), 4)
    noise = rng.normal(0, 0.01, ROWS)
    sales = 1e6 + 0.3 * (year - 2012) + 2e-6 * (epoch_ms - 1.7e12) + 1.5 * x + noise
    features = ("year", "epoch_ms", "x")
    columns = {"year": year, "epoch_ms": epoch_ms, "x": x, "sales": sales}
    manifest, weights, _, output = train_on(tmp_path, columns, features, "sales")

    exact = Exact([year.tolist(), epoch_ms.tolist(), x.tolist()], sales.tolist())
    expected = exact.weights(features)
    for name in ("ls_weight", "weight"):
        found = column(weights, name)
        assert worst_lre(found, expected) >= OFFSET_DIGITS, (name, lres(found, expected))
    assert_converged_and_promoted(manifest)
    profile = read_table(output, "profile").set_index("column").loc["epoch_ms"]
    assert profile["mean"] == pytest.approx(epoch_ms.mean(), rel=1e-12, abs=0)
    assert profile["std"] == pytest.approx(epoch_ms.std(ddof=1), rel=1e-12, abs=0)


def test_two_features_correlated_to_five_nines(tmp_path, cut_small):
    rng = np.random.default_rng(5)
    a = 1000 + rng.uniform(0, 10, ROWS)
    b = 0.5 * a + 3000 + rng.normal(0, 0.0065, ROWS)
    assert 0.99998 < np.corrcoef(a, b)[0, 1] < 0.999999
    y = 3 + 2 * a - 3 * b + rng.normal(0, 0.1, ROWS)
    features = ("a", "b")
    manifest, weights, _, _ = train_on(tmp_path, {"a": a, "b": b, "y": y}, features, "y")

    exact = Exact([a.tolist(), b.tolist()], y.tolist())
    wanted = {
        "ls_weight": exact.weights(features),
        "weight": exact.weights(features),
        "std_error": exact.std_errors(features),
    }
    for name, expected in wanted.items():
        found = column(weights, name)
        assert worst_lre(found, expected) >= NEAR_COLLINEAR_DIGITS, (name, lres(found, expected))
    (train,) = manifest["metrics"]
    assert train["converged"], train


def test_a_feature_that_is_exactly_a_combination_of_two_others(tmp_path, cut_small):
    rng = np.random.default_rng(7)
    x1 = rng.integers(0, 50, ROWS).astype(float)
    x2 = rng.integers(-20, 20, ROWS).astype(float)
    x3 = 2 * x1 - x2  # small integers: exact in float64
    y = 1 + x1 + 0.5 * x2 + np.round(rng.normal(0, 0.5, ROWS), 3)
    features = ("x1", "x2", "x3")
    columns = {"x1": x1, "x2": x2, "x3": x3, "y": y}
    manifest, weights, predictions, _ = train_on(tmp_path, columns, features, "y")

    assert manifest["status"] == "completed"
    notes = " ".join(weights["note"].dropna().unique())
    assert "collinear" in notes
    assert all(f in notes for f in features), notes
    assert weights["std_error"].isna().all()
    # the fitted values are unique even though the coefficients are not: the published
    # weight's residuals are the least-squares residuals (x3 dropped, exactly)
    exact = Exact([x1.tolist(), x2.tolist()], y.tolist())
    expected = np.array([float(r) for r in exact.residuals])
    found = predictions["residual_y"].to_numpy()
    assert np.linalg.norm(found - expected) <= 1e-9 * np.linalg.norm(expected)
    weight = column(weights, "weight")
    refit = y - x1 * weight["x1"] - x2 * weight["x2"] - x3 * weight["x3"] - weight[INTERCEPT]
    assert np.linalg.norm(refit - expected) <= 1e-9 * np.linalg.norm(expected)
