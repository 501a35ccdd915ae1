"""Rows the screen could not clear (and the rows the parser rejected), gathered over blocks and
checked together by pandera (validate.check_rows), whose cost is mostly per call. The check
runs in pass 1's pool while later blocks are parsed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from schemas.params import RunConfig
from tasks.ingest.batchstats import BatchStats, batch_stats
from tasks.ingest.spill import spill_batch
from tasks.ingest.split import hash_values, holdout_of_hashes
from tasks.ingest.validate import check_rows

# Rows gathered before pandera checks them (a call costs about 0.1 s whatever its size, when
# values fail; fewer rows a check keep pass 1's memory low).
SUSPECT_ROWS = 30_000

# A row the parser rejected: (line, text, fields found, fields expected).
ParseError = tuple[int, str, int, int]


@dataclass(frozen=True)
class Suspects:
    """Gathered rows: their text, lines, id hashes, whether they have an id, and the parser's
    rejected rows."""

    rows: pa.Table
    lines: np.ndarray
    hashes: np.ndarray
    has_id: np.ndarray
    parse_errors: list[ParseError]


class Gathered:
    """Suspect rows of the blocks taken so far, waiting for a check."""

    def __init__(self, header: tuple[str, ...]) -> None:
        self.header = header
        self.parts: list[tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]] = []
        self.errors: list[ParseError] = []
        self.rows = 0

    def add(
        self,
        rows: pa.Table,
        lines: np.ndarray,
        hashes: np.ndarray,
        has_id: np.ndarray,
        errors: list[ParseError],
    ) -> None:
        """Gather the given rows of a block (and its rejected rows)."""
        if rows.num_rows:
            self.parts.append((rows, lines, hashes, has_id))
            self.rows += rows.num_rows
        self.errors += errors

    def take(self) -> Suspects | None:
        """Everything gathered, as one job (None when there is nothing)."""
        if not self.parts and not self.errors:
            return None
        if self.parts:
            text = pa.concat_tables([part[0] for part in self.parts])
            lines, hashes, has_id = (np.concatenate([p[i] for p in self.parts]) for i in (1, 2, 3))
        else:
            text = pa.table({name: pa.array([], pa.string()) for name in self.header})
            lines, hashes, has_id = np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, bool)
        job = Suspects(text, lines, hashes, has_id, self.errors)
        self.parts, self.errors, self.rows = [], [], 0
        return job


@dataclass(frozen=True)
class Checked:
    """A check's result: quarantine records, (hashes, lines) of the refused rows with an id
    (they count for repeated ids too), and the accepted rows as a spill batch with their
    hashes and statistics."""

    quarantine: pd.DataFrame
    refused: tuple[np.ndarray, np.ndarray]
    accepted: pa.RecordBatch
    hashes: np.ndarray
    stats: BatchStats


def check_suspects(job: Suspects, source: str, config: RunConfig) -> Checked:
    """pandera on gathered rows of the file `source` (see Checked)."""
    rows = job.rows.to_pandas(types_mapper=pd.ArrowDtype)
    rows["source_line"] = job.lines
    errors = parse_error_frame(job.parse_errors)
    checked = check_rows(source, rows, errors, config)
    keep = checked.keep
    refused = job.has_id & ~keep
    typed = checked.typed[keep]
    values = typed[list(config.values)].to_numpy(np.float64)
    values = np.asfortranarray(values.reshape(len(typed), len(config.values)))
    if config.id_column is None:
        ids = pa.nulls(len(typed), pa.string())
        hashes = hash_values(values, config.seed)  # the values as pandera parsed them
    else:
        ids = pa.array(typed[config.id_column].astype(object), pa.string())
        hashes = job.hashes[keep]
    holdout = holdout_of_hashes(hashes, config.holdout_fraction)
    batch = spill_batch(ids, values, job.lines[keep], holdout, config)
    return Checked(
        checked.quarantine,
        (job.hashes[refused], job.lines[refused]),
        batch,
        hashes,
        batch_stats(values, holdout, hashes, config),
    )


def parse_error_frame(parse_errors: list[ParseError]) -> pd.DataFrame:
    """Rows the parser rejected -> source_line, reason, detail, raw."""
    return pd.DataFrame(
        {
            "source_line": pd.Series([e[0] for e in parse_errors], dtype="int64"),
            "reason": "wrong field count",
            "detail": [f"expected {e[3]} fields, found {e[2]}" for e in parse_errors],
            "raw": pd.Series([e[1] for e in parse_errors], dtype="str"),
        }
    )
