"""The screen: the fast half of checking a block. Numbers parsed by polars (tasks/ingest/numbers.py)
and the pandera schema's own checks (not null, bounds, finite, the id rule) evaluated vectorized
from their statistics clear the rows that cannot fail; the others go to pandera
(tasks/ingest/validate.py). A check kind the screen does not know makes every row a suspect, so
pandera still decides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc

from schemas.params import RunConfig
from schemas.sales import ID_PATTERN, sales_schema
from tasks.ingest.numbers import fast_floats
from tasks.ingest.split import hash_text, hash_values


@dataclass(frozen=True)
class Screened:
    """A block screened: trimmed ids (null when empty) and their hashes, float64 values of the
    numeric columns, and `clean`, the rows that certainly pass every column check."""

    ids: pa.Array
    hashes: np.ndarray
    values: np.ndarray
    clean: np.ndarray


def screen_block(rows: pa.Table, config: RunConfig) -> Screened:
    """The fast half of checking a block (see the module docstring). Without an id column the
    ids are null and the hashes are those of the row's values (see row_hashes)."""
    names = config.values
    values = fast_floats(rows, names)
    schema = sales_schema(config.features, config.targets, config.id_column)
    columns = {name: values[:, j] for j, name in enumerate(names)}
    if config.id_column is None:
        ids = pa.nulls(rows.num_rows, pa.string())
    else:
        ids = pc.utf8_trim_whitespace(rows[config.id_column].combine_chunks())
        ids = pc.if_else(pc.equal(ids, ""), pa.scalar(None, pa.string()), ids)
        columns[config.id_column] = ids
    hashes = row_hashes(ids, values, config)
    return Screened(ids, hashes, values, prescreen(schema, columns, {}))


def row_hashes(ids: pa.Array, values: np.ndarray, config: RunConfig) -> np.ndarray:
    """What a row's split and sample key are computed from: its id's hash, or without an id
    column the hash of its numeric values (so a row keeps its split wherever it moves)."""
    if config.id_column is None:
        return hash_values(values, config.seed)
    return hash_text(ids, config.seed)


# Row checks whose pandera semantics the screen reproduces exactly (value -> passes).
_FAST_CHECKS = {
    "greater_than": lambda v, st: v > st["min_value"],
    "greater_than_or_equal_to": lambda v, st: v >= st["min_value"],
    "less_than": lambda v, st: v < st["max_value"],
    "less_than_or_equal_to": lambda v, st: v <= st["max_value"],
    "is_finite": lambda v, st: np.isfinite(v),
}


def prescreen(
    schema: pandera.DataFrameSchema,
    columns: dict[str, np.ndarray | pa.Array | pd.Series],
    unparsed: dict[str, np.ndarray],
) -> np.ndarray:
    """Rows that certainly pass every column check of `schema` (see cell_screen)."""
    cells = cell_screen(schema, columns, unparsed)
    return np.logical_and.reduce(list(cells.values())) if cells else np.ones(0, bool)


def cell_screen(
    schema: pandera.DataFrameSchema,
    columns: dict[str, np.ndarray | pa.Array | pd.Series],
    unparsed: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Per column of `schema`, the cells that certainly pass its checks (not null, range,
    finite, text pattern), computed vectorized from the checks' own statistics; `columns` holds
    float64 arrays and, for text columns, text. A check of a kind not listed in _FAST_CHECKS
    (or a pattern RE2 cannot take) makes every cell of its column a suspect, so pandera still
    decides; the screen only spares pandera the cells that cannot fail. A cell that did not
    parse (`unparsed`) counts as passing: pandera would only report it as null, which the
    parser's own record shadows."""
    n = len(next(iter(columns.values())))
    cells = {}
    for name, column in schema.columns.items():
        values = columns[name]
        if isinstance(values, np.ndarray):
            cell = ~np.isnan(values)
            with np.errstate(invalid="ignore"):
                for check in column.checks:
                    test = _FAST_CHECKS.get(check.name)
                    if test is None:
                        cell = np.zeros(n, dtype=bool)
                        break
                    cell &= test(values, check.statistics)
            cells[name] = cell | unparsed.get(name, False)
            continue
        text = pa.array(values, type=pa.string(), from_pandas=True)
        cell = pc.is_valid(text).to_numpy(zero_copy_only=False)
        for check in column.checks:
            if check.name != "str_matches":
                cell = np.zeros(n, dtype=bool)
                break
            cell &= _matches(text, check.statistics["pattern"])
        cells[name] = cell
    return cells


def _matches(text: pa.Array, pattern: str) -> np.ndarray:
    """Which values match a str_matches pattern (nulls do not). The id rule (no control
    characters) is a byte scan: no UTF-8 byte of a character above U+007F is below 0x80."""
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    if pattern == ID_PATTERN and len(text):
        buffer = text.buffers()[2]
        data = np.frombuffer(buffer, np.uint8) if buffer is not None else np.zeros(0, np.uint8)
        if not np.any((data < 0x20) | (data == 0x7F)):
            nonempty = pc.greater(pc.utf8_length(text), 0)
            return pc.fill_null(nonempty, False).to_numpy(zero_copy_only=False)
    try:
        hit = pc.match_substring_regex(text, pattern)
    except pa.ArrowInvalid:
        return np.zeros(len(text), dtype=bool)
    return pc.fill_null(hit, False).to_numpy(zero_copy_only=False)
