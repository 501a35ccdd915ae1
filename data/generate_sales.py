"""Seeded generator of realistic sales CSVs (the committed data/sales.csv comes from it).

    python data/generate_sales.py --rows 300 --seed 7 --bad-rows 3 --out data/sales.csv
    python data/generate_sales.py --rows 50 --seed 99 --bad-rows 0 --features-only \
        --out data/score_sample.csv

Features are correlated the way real ones are: richer countries pay higher prices, and tax rises
with price. Units sold (thousands) rise with income and fall with price and tax, plus noise.
A few deliberately bad rows (typos a real export would have) show the quarantine at work.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

_ONSETS = ["B", "C", "D", "F", "G", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z", "Br", "Tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ia", "ea", "ou"]
_ENDINGS = ["nia", "land", "stan", "ria", "via", "dor", "mark", "gal", "tia", "ros"]
COLUMNS = ["country", "avg_income_k", "price_k", "tax_k", "units_sold_k"]
# True model behind the sample: units = 8.0 + 0.15 income - 4.0 price - 12.0 tax + noise
TRUE_INTERCEPT = 8.0
TRUE_WEIGHTS = np.array([0.15, -4.0, -12.0])
NOISE_STD = 1.0


def country_names(n: int, rng: np.random.Generator) -> list[str]:
    """n distinct made-up country names."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_ENDINGS)
        if len(seen) > 1000 or name in seen:
            name = f"{name} {len(names)}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def generate(n_rows: int, seed: int) -> list[list[str]]:
    """n_rows valid rows as text, correlated features, linear target with noise."""
    rng = np.random.default_rng(seed)
    income = np.clip(rng.lognormal(mean=np.log(35.0), sigma=0.5, size=n_rows), 3.0, 150.0)
    price = np.clip(0.3 + 0.012 * income + rng.normal(0, 0.15, n_rows), 0.1, None)
    tax = np.clip(price * rng.uniform(0.05, 0.25, n_rows), 0.0, None)
    X = np.column_stack([income, price, tax])
    units = TRUE_INTERCEPT + X @ TRUE_WEIGHTS + rng.normal(0, NOISE_STD, n_rows)
    units = np.clip(units, 0.0, None)
    names = country_names(n_rows, rng)
    return [
        [name, f"{a:.2f}", f"{p:.3f}", f"{t:.3f}", f"{u:.2f}"]
        for name, a, p, t, u in zip(names, income, price, tax, units, strict=True)
    ]


def corrupt(rows: list[list[str]], n_bad: int, seed: int) -> None:
    """Turn n_bad rows into the kind of mistakes a real export has (in place)."""
    rng = np.random.default_rng(seed + 1)
    mistakes = [
        lambda r: r.__setitem__(1, f"{float(r[1]) * 1000:,.2f}"),  # thousands separator
        lambda r: r.__setitem__(4, ""),  # missing target
        lambda r: r.__setitem__(2, "-" + r[2]),  # negative price
        lambda r: r.__setitem__(3, "N/A"),  # missing tax
    ]
    for i, row in enumerate(rng.choice(len(rows), size=n_bad, replace=False)):
        mistakes[i % len(mistakes)](rows[row])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--bad-rows", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("sales.csv"))
    parser.add_argument(
        "--features-only", action="store_true", help="leave out units_sold_k (a file to score)"
    )
    args = parser.parse_args()
    rows = generate(args.rows, args.seed)
    corrupt(rows, args.bad_rows, args.seed)
    keep = len(COLUMNS) - 1 if args.features_only else len(COLUMNS)
    with args.out.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS[:keep])
        writer.writerows(row[:keep] for row in rows)


if __name__ == "__main__":
    main()
