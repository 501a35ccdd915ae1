"""The two number parsers have one meaning: a value the screen's fast parser returns as
finite is the value the full parser gives, with no problem, so a row the screen clears would
have been accepted with the same numbers by the full check."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.ingest.numbers import fast_floats, parse_numbers

# Characters numbers are made of, and the ones that most often sit next to them by mistake.
ALPHABET = "0123456789+-.eE ,_x$abfinINFaAn/#\t"
decimal = st.builds(
    "{}{}{}{}".format,
    st.sampled_from(["", "+", "-"]),
    st.sampled_from(["", "0", "7", "12", "00123"]),
    st.sampled_from(["", ".", ".5", ".250"]),
    st.sampled_from(["", "e3", "E-2", "e+400", "e"]),
)
texts = st.lists(st.one_of(decimal, st.text(ALPHABET, max_size=8)), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(texts)
def test_a_value_the_screen_reads_is_the_value_the_full_check_reads(values):
    fast = fast_floats(pa.table({"x": pa.array(values, pa.string())}), ("x",))[:, 0]
    full, problem = parse_numbers(pd.Series(values))
    cleared = np.isfinite(fast)
    assert problem[cleared].isna().all(), [v for v, c in zip(values, cleared, strict=True) if c]
    np.testing.assert_array_equal(fast[cleared], full[cleared].to_numpy())


def test_the_screen_sends_on_what_is_not_a_plain_number():
    values = ["1,234.5", "0x10", "$5", "12abc", "1_000", "", "NA", "none", "#N/A", "inf", "1e400"]
    fast = fast_floats(pa.table({"x": pa.array(values)}), ("x",))[:, 0]
    assert not np.isfinite(fast).any(), dict(zip(values, fast, strict=True))


def test_the_screen_reads_plain_decimals_among_other_values_in_any_chunk():
    values = ["12", "0.5", ".25", "7.", "-3", "+1e3", "abc", "", "0012.50"]
    expected = [12, 0.5, 0.25, 7, -3, 1000, np.nan, np.nan, 12.5]
    for odd in ([], ["1.2.3"], ["."]):  # a value of digits and points that is no number
        column = pa.chunked_array([pa.array(values[:4]), pa.array(values[4:] + odd)])
        fast = fast_floats(pa.table({"x": column}), ("x",))[:, 0]
        np.testing.assert_array_equal(fast, [*expected, *[np.nan] * len(odd)])
    sliced = pa.array(["x", *values]).slice(1)
    fast = fast_floats(pa.table({"x": sliced}), ("x",))[:, 0]
    np.testing.assert_array_equal(fast, expected)
