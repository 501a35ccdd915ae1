"""Numbers from text, under our control: plain decimals only (no locale, no thousands
separators, no hex). Two parsers with one meaning:

- `fast_floats` (one regex and one cast per column, no Python per value) for the screen: a value
  it returns as finite is a plain decimal and that value; anything else (NaN) sends the row to
  the full check;
- `parse_numbers` for the rows the screen could not clear: it also says why a value is not a
  number, and accepts padding and the missing/infinite tokens, which the schema then judges.
`tests/unit/test_numbers.py` holds the two to that contract on random text.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

NUMBER_PATTERN = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
MISSING_TOKENS = frozenset({"", "na", "n/a", "#n/a", "null", "none", "nan", "-nan", "+nan"})
INFINITE_TOKENS = frozenset({"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})
_MISSING = pa.array(sorted(MISSING_TOKENS))
_INFINITE = pa.array(sorted(INFINITE_TOKENS))


def fast_floats(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """Text columns -> float64 [N, len(columns)]; NaN where the text is not a plain decimal
    (empty, tokens, padding, thousands separators, ...). 1e400 comes back as inf: the screen's
    finite check sends those rows on too. (pyarrow's parser: polars' cost a process 45 MB of
    resident memory for this alone.)"""
    values = np.empty((table.num_rows, len(columns)))
    for j, name in enumerate(columns):
        at = 0
        for chunk in table.column(name).chunks:
            values[at : at + len(chunk), j] = _chunk_floats(chunk)
            at += len(chunk)
    return values


def _chunk_floats(text: pa.Array) -> np.ndarray:
    """fast_floats of one text array. Most values are digits with at most one point: a byte
    scan finds them and one cast reads them (the cast refuses "1.2.3" or ".", and the array
    then takes the regex path whole); the regex looks at the other values only."""
    if not len(text) or not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        return _regex_floats(text)
    digits = _digits_and_points(text)
    try:
        values = _cast_where(text, digits)
    except pa.ArrowInvalid:
        return _regex_floats(text)
    rest = np.flatnonzero(~digits)
    if len(rest):
        values[rest] = _regex_floats(text.take(pa.array(rest)))
    return values


def _digits_and_points(text: pa.Array) -> np.ndarray:
    """Which values are not null, not empty and made only of the bytes 0-9 and '.'."""
    n = len(text)
    wide = pa.types.is_large_string(text.type)
    offsets = np.frombuffer(text.buffers()[1], np.int64 if wide else np.int32)
    offsets = offsets[text.offset : text.offset + n + 1]
    data = text.buffers()[2]
    found = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    found = found[offsets[0] : offsets[-1]]
    other = np.flatnonzero((found < 0x2E) | (found == 0x2F) | (found > 0x39)) + offsets[0]
    digits = np.diff(offsets) > 0
    digits[np.searchsorted(offsets, other, side="right") - 1] = False
    if text.null_count:
        digits &= text.is_valid().to_numpy(zero_copy_only=False)
    return digits


def _regex_floats(text: pa.Array) -> np.ndarray:
    plain = pc.fill_null(pc.match_substring_regex(text, f"^{NUMBER_PATTERN}$"), False)
    return _cast_where(text, plain.to_numpy(zero_copy_only=False))


def _cast_where(text: pa.Array, mask: np.ndarray) -> np.ndarray:
    """float64 of the values where `mask` (NaN elsewhere); the cast raises ArrowInvalid on a
    masked value that is no number."""
    picked = pc.if_else(pa.array(mask), text, pa.scalar(None, text.type))
    parsed = pc.cast(picked, pa.float64())
    return parsed.to_numpy(zero_copy_only=False).astype(np.float64, copy=True)


def parse_numbers(text: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Text -> (float64 values, problem). Values are NaN where the text is missing or not a
    number; `problem` is the text that failed to parse, NA elsewhere. inf/-inf parse as such
    (the schema rejects them as not finite). Vectorized with pyarrow compute: the common case
    (a plain number) costs one regex and one cast; only the rest is trimmed and looked up."""
    arrow = pa.array(text, type=pa.string(), from_pandas=True)
    plain = pc.fill_null(pc.match_substring_regex(arrow, f"^{NUMBER_PATTERN}$"), False)
    values = pc.cast(pc.if_else(plain, arrow, pa.scalar(None, pa.string())), pa.float64())
    values = values.to_numpy(zero_copy_only=False).copy()
    problem = np.full(len(arrow), None, dtype=object)
    rest = np.flatnonzero(~plain.to_numpy(zero_copy_only=False))
    if len(rest):
        odd = arrow.take(pa.array(rest))
        stripped = pc.utf8_trim_whitespace(odd)
        lowered = pc.utf8_lower(stripped)
        numeric = pc.fill_null(pc.match_substring_regex(stripped, f"^{NUMBER_PATTERN}$"), False)
        infinite = pc.fill_null(pc.is_in(lowered, value_set=_INFINITE), False)
        missing = pc.fill_null(pc.is_in(lowered, value_set=_MISSING), True)
        parsed = pc.cast(pc.if_else(numeric, stripped, pa.scalar(None, pa.string())), pa.float64())
        signed_inf = pc.if_else(pc.starts_with(lowered, "-"), -np.inf, np.inf)
        parsed = pc.if_else(infinite, signed_inf, parsed)
        values[rest] = parsed.to_numpy(zero_copy_only=False)
        ok = pc.or_(pc.or_(numeric, infinite), missing).to_numpy(zero_copy_only=False)
        problem[rest[~ok]] = np.asarray(odd.to_pylist(), dtype=object)[~ok]
    index = text.index
    return (
        pd.Series(values, index=index, dtype="float64"),
        pd.Series(problem, index=index, dtype=object),
    )
