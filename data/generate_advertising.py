"""Seeded generator of data/advertising.csv: a CSV shaped like the textbook advertising data
(TV, radio and newspaper budgets in thousands of dollars -> sales in thousands of units; no id
column, CRLF line ends), drawn from that data's published least-squares fit, for the
worked example of `--id-column none` in docs/training.md.

    python data/generate_advertising.py --rows 200 --seed 3 --out data/advertising.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

COLUMNS = ["TV", "radio", "newspaper", "sales"]
# The textbook's fit: sales = 2.939 + 0.046 TV + 0.189 radio - 0.001 newspaper, residual SE 1.69
TRUE_INTERCEPT = 2.939
TRUE_WEIGHTS = np.array([0.046, 0.189, -0.001])
NOISE_STD = 1.69


def generate(rows: int, seed: int) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    tv = rng.uniform(0.7, 296.4, rows)
    radio = rng.uniform(0.0, 49.6, rows)
    # newspaper budgets go with radio budgets (correlation about 0.35), as in the real data
    newspaper = np.clip(0.7 * radio + rng.gamma(1.5, 18.0, rows), 0.3, 114.0)
    X = np.column_stack([tv, radio, newspaper])
    sales = TRUE_INTERCEPT + X @ TRUE_WEIGHTS + rng.normal(0.0, NOISE_STD, rows)
    table = np.column_stack([X, np.maximum(sales, 1.6)])
    return [[f"{v:.1f}" for v in row] for row in table]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("data/advertising.csv"))
    args = parser.parse_args()
    with args.out.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        writer.writerows(generate(args.rows, args.seed))


if __name__ == "__main__":
    main()
