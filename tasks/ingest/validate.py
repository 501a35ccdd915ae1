"""Validate: text rows -> typed rows that pass the pandera schema, plus a quarantine record for
every problem of a row that does not, with the column and the reason.

The pandera schema (schemas/sales.py) decides what a valid row is. The screen
(tasks/ingest/screen.py) clears the rows that cannot fail; pandera validates the others
(check_rows), so every record and message comes from pandera's checks. Repeated ids are found over
the whole file by tasks/ingest/dedup.py. Also here: the run-level checks (columns, the bad-row
fraction).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.compute as pc

from schemas.outputs import QUARANTINE_ARROW
from schemas.params import RunConfig
from schemas.sales import ID_COLUMN, sales_schema
from tasks.common.errors import DataQualityError, InputFileError, ParameterError
from tasks.ingest.numbers import parse_numbers
from tasks.ingest.screen import cell_screen

QUARANTINE_COLUMNS = ["source_file", "source_line", "column", "reason", "detail", "raw"]

# pandera check name (prefix) -> quarantine reason
_REASONS = {
    "not_nullable": "missing value",
    "not finite": "not finite",
    "greater_than": "out of range",
    "less_than": "out of range",
    "in_range": "out of range",
    "str_matches": "invalid text",
}


@dataclass(frozen=True)
class FileReport:
    """Row accounting for one input file: rows = accepted + quarantined; `pass1` says whether
    this run parsed the file or read its pass-1 result from the cache (tasks/ingest/cache.py)."""

    path: str
    sha256: str
    size_bytes: int
    rows: int
    accepted: int
    quarantined: int
    pass1: str = "parsed"


@dataclass(frozen=True)
class CheckedRows:
    """Text rows checked: `typed` (id and parsed numbers, every row), `keep` (rows with no
    problem) and the quarantine records of the others (parse errors included), in line
    order."""

    typed: pd.DataFrame
    keep: np.ndarray
    quarantine: pd.DataFrame


def check_rows(
    source: str, rows: pd.DataFrame, parse_errors: pd.DataFrame, config: RunConfig
) -> CheckedRows:
    """Parse and check text rows (one text column per CSV column, plus `source_line`) with the
    run's pandera schema; `parse_errors` are the parser's rejected rows (source_line, reason,
    detail, raw)."""
    rows = rows.reset_index(drop=True)
    text_columns = [c for c in rows.columns if c != "source_line"]
    blank = np.asarray((rows[text_columns] == "").all(axis=1).to_numpy(), dtype=bool)

    typed = pd.DataFrame(index=rows.index)
    if config.id_column is not None:
        ids = rows[config.id_column].astype("str").str.strip()  # Arrow-backed: vectorized
        typed[config.id_column] = ids.where(ids != "")
    cells, unparsed = [], {}
    for name in config.values:
        typed[name], bad_text = parse_numbers(rows[name])
        unparsed[name] = bad_text.notna().to_numpy()
        pos = np.flatnonzero(unparsed[name])
        details = [f"{name}={value!r} is not a number" for value in bad_text.to_numpy()[pos]]
        cells.append(
            pd.DataFrame({"pos": pos, "column": name, "reason": "not a number", "detail": details})
        )
    cells.append(_schema_failures(typed, rows, config, source, unparsed))
    cells = pd.concat(cells, ignore_index=True)
    # A cell that did not parse also shows up as null: keep the parse reason only. Other
    # reasons for one cell all stay (-inf is both not finite and out of range).
    positions = cells["pos"].to_numpy(dtype="int64")
    shadowed = np.zeros(len(cells), dtype=bool)
    missing = (cells["reason"] == "missing value").to_numpy()
    for column, mask in unparsed.items():
        here = missing & (cells["column"] == column).to_numpy()
        shadowed[here] = mask[positions[here]]
    cells = cells[~shadowed & ~blank[positions]]
    blanks = pd.DataFrame(
        {"pos": np.flatnonzero(blank), "column": None, "reason": "blank line", "detail": ""}
    )
    cells = pd.concat([cells, blanks], ignore_index=True).sort_values("pos", kind="stable")

    bad_pos = cells["pos"].to_numpy(dtype="int64")
    quarantine = pd.DataFrame(
        {
            "source_file": source,
            "source_line": rows["source_line"].to_numpy()[bad_pos],
            "column": cells["column"].to_numpy(),
            "reason": cells["reason"].to_numpy(),
            "detail": cells["detail"].to_numpy(),
            "raw": as_csv_lines(rows.iloc[bad_pos][text_columns]),
        }
    )
    errors = parse_errors.assign(source_file=source, column=None)[QUARANTINE_COLUMNS]
    quarantine = pd.concat([quarantine, errors], ignore_index=True)
    quarantine = quarantine.sort_values("source_line", kind="stable").reset_index(drop=True)
    keep = np.ones(len(rows), dtype=bool)
    keep[bad_pos] = False
    typed["source_line"] = rows["source_line"].to_numpy()
    return CheckedRows(typed, keep, quarantine.astype({"source_line": "int64"}))


# pandera's verdicts on single values, (schema, column, value) -> the checks it failed: a
# column's checks look at one value at a time, so a verdict holds wherever the value comes back,
# and pandera (about 0.1 s a call) is asked about new values only. At most _VERDICTS_KEPT are
# kept, the oldest dropped first.
_VERDICTS_KEPT = 100_000


class _VerdictCache:
    """Verdicts shared by every check of the process (threads included): a check copies out
    what it needs and adds what it learnt, each under the lock, so that whatever other checks
    drop meanwhile, it works on its own copy."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[tuple, tuple[str, ...]] = {}

    def known(self, keys: list[tuple]) -> dict[tuple, tuple[str, ...]]:
        with self._lock:
            return {key: self._kept[key] for key in keys if key in self._kept}

    def add(self, verdicts: dict[tuple, tuple[str, ...]], limit: int) -> None:
        with self._lock:
            self._kept |= verdicts
            for key in list(itertools.islice(self._kept, max(0, len(self._kept) - limit))):
                del self._kept[key]


_VERDICTS = _VerdictCache()


def _schema_failures(typed, rows, config, source, unparsed) -> pd.DataFrame:
    """pandera's column checks -> one record (pos, column, reason, detail) per failing cell.
    pandera validates each column's distinct values among the cells the screen could not clear
    (see _VERDICTS; all columns in one call, each padded with nulls whose findings are
    dropped), and its verdict on a value holds for every cell with that value."""
    schema = sales_schema(config.features, config.targets, config.id_column)
    which = (config.features, config.targets, config.id_column)
    columns = {name: typed[name] for name in schema.columns if name not in config.values}
    columns |= {name: typed[name].to_numpy() for name in config.values}
    suspects = {}
    for name, cleared in cell_screen(schema, columns, unparsed).items():
        cells = np.flatnonzero(~cleared)
        if len(cells):
            codes, distinct = pd.factorize(typed[name].iloc[cells], use_na_sentinel=False)
            suspects[name] = (cells, codes, distinct)
    verdicts = _judge(schema, typed, {n: s[2] for n, s in suspects.items()}, which, source)
    hits = []
    for name, (cells, codes, _) in suspects.items():
        pairs = [(u, check) for u, checks in enumerate(verdicts[name]) for check in checks]
        if pairs:
            failed = pd.DataFrame(pairs, columns=["index", "check"])
            cell_codes = pd.DataFrame({"pos": cells, "index": codes})
            hits.append(cell_codes.merge(failed, on="index").assign(column=name))
    if not hits:
        return pd.DataFrame(columns=["pos", "column", "reason", "detail"])
    hits = pd.concat(hits, ignore_index=True)
    text = np.empty(len(hits), dtype=object)
    for name in hits["column"].unique():
        picked = (hits["column"] == name).to_numpy()
        text[picked] = rows[name].iloc[hits["pos"].to_numpy()[picked]].to_numpy(dtype=object)
    text = pd.Series(text, dtype=object).astype(str)
    reason = hits["check"].map({check: _reason(check) for check in hits["check"].unique()})
    shown = text.map({value: repr(value) for value in text.unique()})
    detail = hits["column"] + "=" + shown + " fails " + hits["check"]
    detail = detail.where(reason != "missing value", hits["column"] + "=" + shown)
    detail = detail.where(text.str.strip() != "", hits["column"] + " is empty")
    return pd.DataFrame(
        {"pos": hits["pos"], "column": hits["column"], "reason": reason, "detail": detail}
    )


def _judge(schema, typed, distinct, which, source) -> dict[str, list[tuple[str, ...]]]:
    """The verdict (the checks failed) on each of each column's distinct values: those kept in
    _VERDICTS, pandera asked about the others."""
    keys = {
        name: [(which, name, _value_key(v)) for v in values] for name, values in distinct.items()
    }
    verdicts = _VERDICTS.known([key for column in keys.values() for key in column])
    unknown = {
        name: [v for v, key in zip(values, keys[name], strict=True) if key not in verdicts]
        for name, values in distinct.items()
    }
    if any(unknown.values()):
        learnt = _ask_pandera(schema, typed, unknown, which, source)
        _VERDICTS.add(learnt, _VERDICTS_KEPT)
        verdicts |= learnt
    return {name: [verdicts[key] for key in column] for name, column in keys.items()}


def _value_key(value) -> object:
    return "<null>" if value is None or value != value else value


def _ask_pandera(schema, typed, unknown, which, source) -> dict[tuple, tuple[str, ...]]:
    """pandera's verdicts on the values it has not judged yet (see _VERDICTS)."""
    size = max(len(values) for values in unknown.values())
    frame = pd.DataFrame(
        {
            name: pd.Series(
                [*unknown.get(name, []), *[None] * size][:size], dtype=typed[name].dtype
            )
            for name in schema.columns
        }
    )
    cases = _failure_cases(schema, frame)
    found: dict[tuple, list[str]] = {}
    if cases is not None:
        if cases["index"].isna().any():
            first = cases[cases["index"].isna()].iloc[0]
            raise InputFileError(
                f"{source}: schema check {first['check']} failed: {first['failure_case']}"
            )
        for name, index, check in cases[["column", "index", "check"]].itertuples(index=False):
            if int(index) < len(unknown.get(name, [])):
                value = unknown[name][int(index)]
                found.setdefault((which, name, _value_key(value)), []).append(str(check))
    keys = [
        (which, name, _value_key(value)) for name, values in unknown.items() for value in values
    ]
    return {key: tuple(found.get(key, ())) for key in keys}


def _reason(check: str) -> str:
    return next((r for prefix, r in _REASONS.items() if check.startswith(prefix)), check)


def _failure_cases(schema: pandera.DataFrameSchema | pandera.Column, frame: pd.DataFrame):
    try:
        schema.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as err:
        return err.failure_cases
    return None


def as_csv_lines(frame: pd.DataFrame) -> list[str]:
    """Rows of text back to CSV lines as Python's csv module writes them (a field holding a
    comma or a quote is quoted, its quotes doubled); a blank line stays empty."""
    if not len(frame):
        return []
    fields = []
    for name in frame.columns:
        text = pc.fill_null(pa.array(frame[name], pa.string(), from_pandas=True), "")
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
        fields.append(pc.if_else(pc.match_substring_regex(text, '[,"]'), quoted, text))
    lines = pc.binary_join_element_wise(*fields, ",")
    blank = pc.equal(pc.binary_join_element_wise(*fields, ""), "")
    return pc.if_else(blank, "", lines).to_pylist()


def duplicate_detail(id_column: str, value: str) -> str:
    """The detail of a duplicate-key record."""
    return f"{id_column} {value.strip()!r} already appears earlier in this file"


def check_columns(
    features: tuple[str, ...], targets: tuple[str, ...], id_column: str | None = ID_COLUMN
) -> None:
    """Raise ParameterError naming the parameter when column lists repeat or overlap."""
    for name, columns in (("features", features), ("targets", targets)):
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ParameterError(f"parameter {name}: column(s) {repeated} listed more than once")
    both = sorted(set(features) & set(targets))
    if both:
        raise ParameterError(f"parameters features and targets: {both} cannot be both")
    if id_column is not None and id_column in (*features, *targets):
        raise ParameterError(
            f"parameters features, targets and id_column: '{id_column}' is the row key; pass "
            "another --id-column (or none)"
        )


def check_quality(files: list[FileReport], max_bad_fraction: float) -> None:
    """Raise DataQualityError when no rows are left or too many were quarantined."""
    names = ", ".join(f.path for f in files)
    rows_in = sum(f.rows for f in files)
    quarantined = sum(f.quarantined for f in files)
    if sum(f.accepted for f in files) == 0:
        raise DataQualityError(
            f"no valid rows: all {rows_in} data rows of {names} were quarantined"
        )
    share = quarantined / rows_in
    if share > max_bad_fraction:
        raise DataQualityError(
            f"{quarantined} of {rows_in} rows ({share:.1%}) of {names} were "
            f"quarantined, above max_bad_fraction={max_bad_fraction}"
        )


def quarantine_table(frame: pd.DataFrame) -> pa.Table:
    """Quarantine records with the table's Arrow types (text columns as str, nulls kept)."""
    frame = frame[QUARANTINE_COLUMNS].copy()
    for column in ("source_file", "column", "reason", "detail", "raw"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["source_line"] = frame["source_line"].astype("int64")
    return pa.Table.from_pandas(frame, schema=QUARANTINE_ARROW, preserve_index=False)
