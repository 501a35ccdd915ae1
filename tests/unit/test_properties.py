"""Property: random good rows mixed with random corruptions never crash the steps, every row is
accounted for with the right reason, and training on what is accepted reaches least squares."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.model.descent import fit_linear_regression
from tests.conftest import HEADER
from tests.pipeline import LAYOUTS, F, T, config, kept_rows, quarantine, scan_paths
from tests.reference import least_squares

NUMERIC = [*F, *T]
RANGES = ("avg_income_k", "price_k", "tax_k")

# Jitter around a spread-out grid (from the row index), so accepted rows never collapse onto a
# line however Hypothesis shrinks the draws.
good_values = st.fixed_dictionaries(
    {name: st.floats(0.0, 0.01) for name in RANGES} | {"noise": st.floats(-0.5, 0.5)}
)
CORRUPTIONS = {
    "not a number": st.sampled_from(["1,234.5", "abc", "0x1F", "$5", "12abc", "1_000"]),
    "missing value": st.sampled_from(["", "NA", "null", "N/A", "nan", "NaN"]),
    "not finite": st.sampled_from(["inf", "-inf", "Infinity", "1e400"]),
}
row_kind = st.one_of(
    st.tuples(st.just("good"), good_values),
    st.tuples(st.just("quoted"), good_values),
    st.tuples(st.sampled_from(list(CORRUPTIONS)), good_values, st.sampled_from(NUMERIC)),
    st.tuples(st.sampled_from(["extra field", "missing field", "blank line"]), good_values),
)


def render(index: int, kind: str, values: dict, column: str | None, bad: str | None):
    """One CSV line, the (column, reason) records it must produce, and whether it is accepted."""
    x = {
        "avg_income_k": 20 + (index * 37) % 150 + values["avg_income_k"],
        "price_k": 0.5 + (index * 13) % 40 / 10 + values["price_k"],
        "tax_k": (index * 7) % 10 / 10 + values["tax_k"],
    }
    units = 50 + 0.3 * x["avg_income_k"] - 4 * x["price_k"] - 9 * x["tax_k"]
    cells = {"country": f"C{index}", **{k: f"{v:.6f}" for k, v in x.items()}}
    cells["units_sold_k"] = f"{units + values['noise']:.6f}"
    expected: set = set()
    if kind == "quoted":
        cells = {k: f'"{v}"' for k, v in cells.items()}
    if kind in CORRUPTIONS:
        cells[column] = f'"{bad}"' if "," in bad else bad
        expected = {(column, kind)}
        if kind == "not finite":  # +inf is above every upper bound, -inf below every lower one
            expected.add((column, "out of range"))
    line = ",".join(cells.values())
    if kind == "extra field":
        line, expected = line + ",1", {(None, "wrong field count")}
    elif kind == "missing field":
        line, expected = line.rsplit(",", 1)[0], {(None, "wrong field count")}
    elif kind == "blank line":
        line, expected = "", {(None, "blank line")}
    return line, expected, kind in ("good", "quoted")


@settings(max_examples=40, deadline=None)
@given(
    st.tuples(
        st.lists(st.tuples(st.just("good"), good_values), min_size=8, max_size=15),
        st.lists(row_kind, min_size=0, max_size=30),
    ).flatmap(lambda parts: st.permutations(parts[0] + parts[1])),
    st.data(),
)
def test_random_corruptions_are_accounted_for_and_training_reaches_lstsq(specs, data):
    lines, expectations, accepted_lines = [], {}, []
    for i, spec in enumerate(specs):
        kind, values = spec[0], spec[1]
        column = spec[2] if kind in CORRUPTIONS else None
        bad = data.draw(CORRUPTIONS[kind]) if kind in CORRUPTIONS else None
        line, expected, ok = render(i, kind, values, column, bad)
        lines.append(line)
        expectations[i + 2] = expected
        if ok:
            accepted_lines.append(i + 2)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.csv"
        path.write_text("\n".join([HEADER, *lines]) + "\n")
        scan = scan_paths([path], config(data.draw(st.sampled_from(list(LAYOUTS)))), Path(tmp))
        records, accepted = quarantine(scan), kept_rows(scan)

    assert scan.files[0].rows == len(specs)
    assert accepted["line"].tolist() == accepted_lines
    found: dict[int, set] = {}
    for line_no, column, reason in records[["source_line", "column", "reason"]].itertuples(
        index=False
    ):
        found.setdefault(int(line_no), set()).add((None if column != column else column, reason))
    assert found == {k: v for k, v in expectations.items() if v}

    X_t = torch.from_numpy(accepted[list(F)].to_numpy(np.float64, copy=True))
    y_t = torch.from_numpy(accepted[list(T)].to_numpy(np.float64, copy=True))
    fit = fit_linear_regression(X_t, y_t, max_epochs=200_000, tol=1e-13, seed=0)
    X, y = X_t.numpy(), y_t.numpy()
    W, b = least_squares(X, y)
    optimum = ((X @ W.T + b - y) ** 2).mean()
    trained = ((X @ fit.W.T + fit.b - y) ** 2).mean()
    assert trained - optimum <= 1e-6 * max(optimum, 1e-12)
