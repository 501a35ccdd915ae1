"""Seeded generator of large realistic sales CSVs for the benchmarks.

    python -m benchmarks.generate --rows 10000000 --out benchmarks/.data/sales_10000000.csv

The same model as data/generate_sales.py (correlated features, tax rising with price), written
column-wise with pyarrow so that 10M rows take seconds; `bad_fraction` of the rows get one bad
value each (missing, not a number, negative, not finite).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from data.generate_sales import COLUMNS, NOISE_STD, TRUE_INTERCEPT, TRUE_WEIGHTS

BAD_TOKENS = np.array(["", "NA", "abc", "-1", "inf", "12abc"])


def generate_design(rows: int, seed: int) -> np.ndarray:
    """The numbers of `rows` sales rows without bad values, [rows, features + target] float64
    column-major, as the pass over a file hands them to its statistics."""
    X, units = _numbers(np.random.default_rng(seed), rows)
    return np.asfortranarray(np.column_stack([X, units]))


def _numbers(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Features [rows, 3] and target [rows] of the sales model, drawn from `rng`."""
    income = np.clip(rng.lognormal(np.log(35.0), 0.5, rows), 3.0, 150.0)
    price = np.clip(0.3 + 0.012 * income + rng.normal(0, 0.15, rows), 0.1, None)
    tax = price * rng.uniform(0.05, 0.25, rows)
    X = np.column_stack([income, price, tax])
    units = np.clip(TRUE_INTERCEPT + X @ TRUE_WEIGHTS + rng.normal(0, NOISE_STD, rows), 0, None)
    return X, units


def generate_table(rows: int, seed: int, bad_fraction: float = 0.02, first_id: int = 0) -> pa.Table:
    """`rows` sales rows as text columns (ids from `first_id`), a share of them with one bad
    value."""
    rng = np.random.default_rng(seed)
    X, units = _numbers(rng, rows)
    income, price, tax = X.T
    ids = pc.binary_join_element_wise(
        "C",
        pc.utf8_lpad(pc.cast(pa.array(np.arange(first_id, first_id + rows)), pa.string()), 9, "0"),
        "",
    )
    columns = [ids] + [
        pc.cast(pa.array(np.round(v, digits)), pa.string())
        for v, digits in ((income, 2), (price, 3), (tax, 3), (units, 2))
    ]
    n_bad = int(rows * bad_fraction)
    bad_rows = rng.choice(rows, n_bad, replace=False)
    bad_cols = rng.integers(1, len(COLUMNS), n_bad)
    for col in range(1, len(COLUMNS)):
        picked = bad_rows[bad_cols == col]
        mask = np.zeros(rows, dtype=bool)
        mask[picked] = True
        tokens = np.full(rows, "", dtype=object)
        tokens[picked] = rng.choice(BAD_TOKENS, len(picked))
        columns[col] = pc.if_else(pa.array(mask), pa.array(tokens, pa.string()), columns[col])
    return pa.table(columns, names=COLUMNS)


def write_csv(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="none"))
    tmp.replace(path)
    return path


def write_big_csv(rows: int, seed: int, path: Path, chunk_rows: int = 10_000_000) -> Path:
    """A CSV bigger than memory, written in chunks of `chunk_rows` (distinct ids throughout;
    chunk i uses seed + i)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    first = 0
    options = pacsv.WriteOptions(quoting_style="none")
    with pacsv.CSVWriter(tmp, generate_table(1, seed).schema, write_options=options) as writer:
        for i, start in enumerate(range(0, rows, chunk_rows)):
            n = min(chunk_rows, rows - start)
            writer.write_table(generate_table(n, seed + i, first_id=first))
            first += n
    tmp.replace(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad-fraction", type=float, default=0.02)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.rows > 10_000_000:
        write_big_csv(args.rows, args.seed, args.out)
    else:
        write_csv(generate_table(args.rows, args.seed, args.bad_fraction), args.out)


if __name__ == "__main__":
    main()
