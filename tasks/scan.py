"""Streaming: inputs bigger than memory, in two passes over each CSV with bounded memory.

Pass 1 (scan_file) reads the file in blocks and checks each block as the in-memory path checks a
whole file (validate.check_text_batch: same checks, messages and line numbers), writes the
quarantine records to a staged Parquet file, records each line's fate (rejected, train, holdout)
in a LineCodes, and spills every row that has an id (hash, line, ok, id, values) to hash
partitions on disk. Each partition (about PARTITION_BYTES of input) is then loaded alone: a row
whose id appeared on an earlier line anywhere in the file is a duplicate key, and the other
accepted rows are summed into float64 statistics (train and holdout moments, the profile).
Training needs only those statistics.

Pass 2 (emit_file) reads the file again, predicts every accepted row with the trained model,
writes the predictions to a staged Parquet file block by block and sums the squared errors for
the metrics; it also writes the quarantine records of the duplicate keys (their raw text is only
at hand while reading). Publishing moves the staged files into place (tasks/publish.py).
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from schemas.outputs import QUARANTINE_ARROW
from schemas.sales import ID_COLUMN, allowed_columns, required_columns
from tasks.errors import PipelineError
from tasks.evaluate import SPLITS, metrics_from_sums, weights_frame
from tasks.ingest import (
    FILE_READ_TASK,
    STREAM_BLOCK_BYTES,
    RawFile,
    TextBatch,
    iter_text_batches,
    parse_error_frame,
    sha256_file,
)
from tasks.profile import BottomK, ProfileSketch, sample_keys
from tasks.split import hash_text, holdout_of_hashes
from tasks.tensors import DTYPES, check_shapes
from tasks.train import FitResult, Moments, least_squares_of_moments, moments_of
from tasks.validate import (
    QUARANTINE_COLUMNS,
    FileReport,
    as_csv_lines,
    check_rows,
    parse_numbers,
    screen_batch,
)

# Input bytes per duplicate-check partition: each partition is loaded alone after pass 1.
PARTITION_BYTES = 32 << 20
# Suspect rows gathered before they are checked together (see _Suspects).
SUSPECT_ROWS = 50_000
# Rows of the predictions kept for the report's plots (a uniform sample above this).
REPORT_SAMPLE_ROWS = 20_000
_SPLIT_NAMES = pa.array(list(SPLITS), pa.string())  # index 0 train, 1 holdout


class LineCodes:
    """A growable code per file line (1 byte a line: 100 MB for 100M rows): REJECTED, TRAIN or
    HOLDOUT. Pass 1 writes it, pass 2 reads which rows to predict and their split from it."""

    REJECTED, TRAIN, HOLDOUT = 0, 1, 2

    def __init__(self) -> None:
        self.codes = np.zeros(1 << 16, dtype=np.uint8)

    def set(self, lines: np.ndarray, codes: np.ndarray | int) -> None:
        if len(lines) and int(lines.max()) >= len(self.codes):
            grown = np.zeros(max(2 * len(self.codes), int(lines.max()) + 1), dtype=np.uint8)
            grown[: len(self.codes)] = self.codes
            self.codes = grown
        self.codes[lines] = codes

    def get(self, lines: np.ndarray) -> np.ndarray:
        inside = lines < len(self.codes)
        out = np.zeros(len(lines), dtype=np.uint8)
        out[inside] = self.codes[lines[inside]]
        return out

    def accepted_lines(self) -> np.ndarray:
        return np.flatnonzero(self.codes)


@dataclass
class FileScan:
    """Pass 1's result for one file: row accounting, the float64 statistics of its train and
    holdout rows, its profile, each line's fate, the duplicate keys (written to the quarantine
    by pass 2, which has their text) and the staged quarantine file."""

    path: Path
    index: int
    report: FileReport
    train: Moments
    holdout: Moments
    profile: ProfileSketch
    accepted: LineCodes
    duplicates: pd.DataFrame  # source_line, country: rows whose id is on an earlier line
    quarantine: list[Path]
    rows: tuple[np.ndarray, np.ndarray] | None = None  # (X, y) of training rows, if kept


def scan_file(
    path: Path,
    index: int,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    holdout_fraction: float,
    seed: int,
    staging: Path,
    *,
    keep_rows: bool = False,
    block_bytes: int = STREAM_BLOCK_BYTES,
    partition_bytes: int = PARTITION_BYTES,
) -> FileScan:
    """Pass 1 over one file (see the module docstring). `keep_rows` also returns the training
    rows as arrays, for the direct solver."""
    source = str(path)
    size = path.stat().st_size
    values = [*features, *targets]
    spill = staging / f"spill-{index:05d}"
    spill.mkdir(parents=True, exist_ok=True)
    n_parts = max(1, math.ceil(size / partition_bytes))
    quarantine_path = staging / "quarantine" / f"part-{index:05d}-0.parquet"
    accepted = LineCodes()
    rows_in = 0
    with (
        _Partitions(spill, n_parts, values) as partitions,
        _QuarantineWriter(quarantine_path) as quarantine,
    ):

        def record_rows(ids: pa.Array, lines: np.ndarray, data: np.ndarray, ok: np.ndarray):
            # Accepted rows get their line code (train or holdout); every row with an id is
            # spilled for the duplicate check (a row repeating the id of an earlier rejected row
            # is a duplicate too, as in the whole-file check).
            has_id = pc.is_valid(ids).to_numpy(zero_copy_only=False)
            keys = ids.filter(pa.array(has_id))
            hashes = hash_text(keys, seed)
            lines, ok = lines[has_id], ok[has_id]
            codes = LineCodes.TRAIN + holdout_of_hashes(hashes[ok], holdout_fraction)
            accepted.set(lines[ok], codes.astype(np.uint8))
            partitions.write(hashes, lines, keys, data[has_id], ok)

        suspects = _Suspects(path, size, features, targets)
        for batch in iter_text_batches(
            path,
            required_columns(features, targets),
            allowed_columns(features, targets),
            block_bytes,
        ):
            rows_in += batch.rows.num_rows + len(batch.parse_errors)
            screened = screen_batch(batch, features, targets)
            clean = screened.clean
            record_rows(
                screened.ids.filter(pa.array(clean)),
                batch.lines[clean],
                screened.values[clean],
                np.ones(int(clean.sum()), dtype=bool),
            )
            suspects.add(batch, ~clean)
            if suspects.rows >= SUSPECT_ROWS:
                record_rows(*suspects.check(quarantine))
        if suspects.rows or suspects.errors:
            record_rows(*suspects.check(quarantine))
    sha256 = sha256_file(path)
    train, holdout, profile, duplicates, rows = _reduce(
        spill, n_parts, values, features, holdout_fraction, accepted, keep_rows
    )
    shutil.rmtree(spill, ignore_errors=True)
    n_accepted = train.n + holdout.n
    report = FileReport(source, sha256, size, rows_in, n_accepted, rows_in - n_accepted)
    if not quarantine.rows:
        quarantine_path.unlink(missing_ok=True)
    staged = [quarantine_path] if quarantine.rows else []
    return FileScan(
        path, index, report, train, holdout, profile, accepted, duplicates, staged, rows
    )


class _Suspects:
    """Rows the screen could not clear, and the parser's rejected rows, gathered over blocks
    and checked together by check_rows (pandera's cost is mostly per call and per failing
    check, so fewer, larger calls are cheaper). Lines only grow, so the quarantine records of
    successive checks stay in line order."""

    def __init__(self, path: Path, size: int, features: tuple[str, ...], targets: tuple[str, ...]):
        self.path, self.size, self.features, self.targets = path, size, features, targets
        self.parts: list[tuple[pa.Table, np.ndarray]] = []
        self.error_parts: list[pd.DataFrame] = []
        self.rows = self.errors = 0

    def add(self, batch: TextBatch, mask: np.ndarray) -> None:
        picked = np.flatnonzero(mask)
        if len(picked):
            self.parts.append((batch.rows.take(pa.array(picked)), batch.lines[picked]))
            self.rows += len(picked)
        if len(batch.parse_errors):
            self.error_parts.append(batch.parse_errors)
            self.errors += len(batch.parse_errors)

    def check(
        self, quarantine: _QuarantineWriter
    ) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]:
        """check_rows on what was gathered; writes the records and returns (ids, lines, values,
        ok) of the gathered rows; starts over."""
        names = [*self.features, *self.targets]
        header = (
            self.parts[0][0].column_names
            if self.parts
            else list(required_columns(self.features, self.targets))
        )
        text = (
            pa.concat_tables([part for part, _ in self.parts])
            if self.parts
            else pa.table({name: pa.array([], pa.string()) for name in header})
        )
        lines = (
            np.concatenate([lines for _, lines in self.parts])
            if self.parts
            else np.zeros(0, np.int64)
        )
        errors = (
            pd.concat(self.error_parts, ignore_index=True)
            if self.error_parts
            else parse_error_frame([])
        )
        rows = text.to_pandas(types_mapper=pd.ArrowDtype)
        rows["source_line"] = lines
        raw = RawFile(self.path, "", self.size, tuple(text.column_names), rows, errors)
        checked = check_rows(raw, self.features, self.targets, unique_ids=False)
        quarantine.write(checked.quarantine)
        typed = checked.typed
        ids = pa.array(typed[ID_COLUMN], type=pa.string())
        if isinstance(ids, pa.ChunkedArray):
            ids = ids.combine_chunks()
        values = typed[names].to_numpy(dtype=np.float64)
        self.parts, self.error_parts, self.rows, self.errors = [], [], 0, 0
        return ids, lines, values, checked.keep


class _Partitions:
    """Arrow IPC files, one per hash partition, holding the accepted rows of pass 1."""

    def __init__(self, folder: Path, n: int, values: list[str]) -> None:
        self.folder, self.n = folder, n
        self.schema = pa.schema(
            [("hash", pa.uint64()), ("line", pa.int64()), ("ok", pa.bool_())]
            + [(ID_COLUMN, pa.string())]
            + [(name, pa.float64()) for name in values]
        )
        self.writers: list[Any] = []

    def __enter__(self) -> _Partitions:
        self.writers = [
            ipc.new_file(self.folder / f"part-{i:04d}.arrow", self.schema) for i in range(self.n)
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self.writers:
            writer.close()

    def write(
        self,
        hashes: np.ndarray,
        lines: np.ndarray,
        keys: pa.Array,
        values: np.ndarray,
        ok: np.ndarray,
    ) -> None:
        part = ((hashes >> np.uint64(40)).astype(np.int64) * self.n >> 24).astype(np.int16)
        order = np.argsort(part, kind="stable") if self.n > 1 else np.arange(len(part))
        bounds = np.searchsorted(part[order], np.arange(self.n + 1))
        columns = [pa.array(hashes[order]), pa.array(lines[order]), pa.array(ok[order])]
        columns.append(keys.take(pa.array(order)))
        columns += [pa.array(values[order, j]) for j in range(values.shape[1])]
        batch = pa.record_batch(columns, schema=self.schema)
        for i in range(self.n):
            if bounds[i + 1] > bounds[i]:
                self.writers[i].write_batch(batch.slice(bounds[i], bounds[i + 1] - bounds[i]))


class _QuarantineWriter:
    """Quarantine records to one staged Parquet file, batch by batch."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer, self.rows = path, None, 0

    def __enter__(self) -> _QuarantineWriter:
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        table = pa.Table.from_pandas(
            quarantine_frame(frame), schema=QUARANTINE_ARROW, preserve_index=False
        )
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.path, QUARANTINE_ARROW)
        self.writer.write_table(table)
        self.rows += len(frame)

    def __exit__(self, *exc: object) -> None:
        if self.writer is not None:
            self.writer.close()


def quarantine_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Quarantine records with the table's column types (text columns as str, nulls kept)."""
    frame = frame[QUARANTINE_COLUMNS].copy()
    for column in ("source_file", "column", "reason", "detail", "raw"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    frame["source_line"] = frame["source_line"].astype("int64")
    return frame


def _reduce(
    spill: Path,
    n_parts: int,
    values: list[str],
    features: tuple[str, ...],
    holdout_fraction: float,
    accepted: LineCodes,
    keep_rows: bool,
) -> tuple[Moments, Moments, ProfileSketch, pd.DataFrame, tuple | None]:
    """Load each partition alone: flag repeated ids (all but the first line of each; their
    line codes become REJECTED), sum the rest into train/holdout moments and the profile.
    Returns (train, holdout, profile, duplicates, training rows if `keep_rows`)."""
    d = len(features)
    zero = moments_of(np.zeros((0, d)), np.zeros((0, len(values) - d)))
    train, holdout = zero, zero
    profile = ProfileSketch(tuple(values))
    duplicates, kept = [], []
    for i in range(n_parts):
        with ipc.open_file(spill / f"part-{i:04d}.arrow") as reader:
            table = reader.read_all()
        if not table.num_rows:
            continue
        hashes = table["hash"].to_numpy()
        lines = table["line"].to_numpy()
        repeated = _repeated_ids(hashes, lines, table[ID_COLUMN])
        if repeated.any():
            duplicates.append(
                pd.DataFrame(
                    {
                        "source_line": lines[repeated],
                        ID_COLUMN: table[ID_COLUMN].filter(pa.array(repeated)).to_pandas(),
                    }
                )
            )
            accepted.set(lines[repeated], LineCodes.REJECTED)
        use = table["ok"].to_numpy(zero_copy_only=False) & ~repeated
        data = np.column_stack([table[name].to_numpy() for name in values])
        if not use.all():
            data, hashes, lines = data[use], hashes[use], lines[use]
        is_holdout = holdout_of_hashes(hashes, holdout_fraction)
        X, y = data[:, :d], data[:, d:]
        train = train + moments_of(X[~is_holdout], y[~is_holdout])
        holdout = holdout + moments_of(X[is_holdout], y[is_holdout])
        profile.add(data, sample_keys(hashes))
        if keep_rows:
            kept.append((lines[~is_holdout], X[~is_holdout], y[~is_holdout]))
        del table, data
    rows = None
    if keep_rows:
        lines = np.concatenate([k[0] for k in kept]) if kept else np.zeros(0, np.int64)
        order = np.argsort(lines, kind="stable")
        X = np.concatenate([k[1] for k in kept])[order] if kept else np.zeros((0, d))
        y = np.concatenate([k[2] for k in kept])[order] if kept else np.zeros((0, len(values) - d))
        rows = (X, y)
    dup_frame = (
        pd.concat(duplicates, ignore_index=True).sort_values("source_line", ignore_index=True)
        if duplicates
        else pd.DataFrame(
            {"source_line": pd.Series([], dtype="int64"), ID_COLUMN: pd.Series([], dtype=object)}
        )
    )
    return train, holdout, profile, dup_frame, rows


def _repeated_ids(hashes: np.ndarray, lines: np.ndarray, ids: pa.ChunkedArray) -> np.ndarray:
    """Rows whose id appeared on an earlier line of the file (equal hashes, confirmed on the
    text)."""
    repeated = np.zeros(len(hashes), dtype=bool)
    ordered = np.sort(hashes)
    if not (ordered[1:] == ordered[:-1]).any():  # the common case: no id twice
        return repeated
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return repeated
    in_group = np.zeros(len(hashes), dtype=bool)
    in_group[1:] |= same
    in_group[:-1] |= same
    candidates = order[in_group]
    frame = pd.DataFrame(
        {
            "pos": candidates,
            "line": lines[candidates],
            "id": ids.take(pa.array(candidates)).to_pandas(),
        }
    ).sort_values("line", kind="stable")
    repeated[frame["pos"].to_numpy()[frame["id"].duplicated().to_numpy()]] = True
    return repeated


@dataclass
class FileEmit:
    """Pass 2's result for one file: staged files, per-split sums for the metrics, a sample of
    the predictions for the report."""

    predictions: Path | None
    quarantine: Path | None
    sums: dict[str, dict[str, Any]]
    sample: BottomK


@dataclass(frozen=True)
class Scoring:
    """What pass 2 predicts with: the trained model, the least-squares optimum of the training
    rows and the training mean of the targets (the baseline), all raw-scale float64."""

    W: np.ndarray
    b: np.ndarray
    W_opt: np.ndarray
    b_opt: np.ndarray
    train_mean: np.ndarray


def emit_file(
    scan: FileScan,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    staging: Path,
    scoring: Scoring | None,
    metadata: dict[bytes, bytes],
    *,
    block_bytes: int = STREAM_BLOCK_BYTES,
) -> FileEmit:
    """Pass 2 over one file (see the module docstring). Without `scoring` it only writes the
    quarantine records of the duplicate keys (a run refused for its data)."""
    source = str(scan.path)
    dup_lines = scan.duplicates["source_line"].to_numpy(dtype=np.int64)
    sums = {split: _zero_sums(len(targets)) for split in SPLITS}
    sample = BottomK(REPORT_SAMPLE_ROWS)
    pred_path = staging / "predictions" / f"part-{scan.index}.parquet"
    dup_path = staging / "quarantine" / f"part-{scan.index:05d}-1.parquet"
    if scoring is None and not len(dup_lines):
        return FileEmit(None, None, sums, sample)
    schema = predictions_arrow_schema(features, targets).with_metadata(metadata)
    with contextlib.ExitStack() as stack:
        dups = stack.enter_context(_QuarantineWriter(dup_path))
        writer = None
        if scoring is not None:
            pred_path.parent.mkdir(parents=True, exist_ok=True)
            writer = stack.enter_context(
                pq.ParquetWriter(pred_path, schema, use_dictionary=["split", "source_file"])
            )
        for batch in iter_text_batches(
            scan.path,
            required_columns(features, targets),
            allowed_columns(features, targets),
            block_bytes,
        ):
            lines = batch.lines
            repeated = np.isin(lines, dup_lines) if len(dup_lines) else None
            if repeated is not None and repeated.any():
                dups.write(
                    _duplicate_records(
                        source, batch.rows.filter(pa.array(repeated)), lines[repeated]
                    )
                )
            if writer is None:
                continue
            codes = scan.accepted.get(lines)
            keep = codes != LineCodes.REJECTED
            table = _predict_batch(
                batch.rows.filter(pa.array(keep)),
                lines[keep],
                codes[keep] == LineCodes.HOLDOUT,
                source,
                features,
                targets,
                scoring,
                sums,
                sample,
            )
            writer.write_table(table.cast(schema))
    return FileEmit(
        pred_path if writer is not None else None,
        dup_path if dups.rows else None,
        sums,
        sample,
    )


def _zero_sums(k: int) -> dict[str, Any]:
    return {"rows": 0, "sse": np.zeros(k), "sse_baseline": np.zeros(k), "sse_optimum": np.zeros(k)}


def add_sums(
    a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per-split sums of two files added."""
    return {split: {key: a[split][key] + b[split][key] for key in a[split]} for split in a}


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """Accepted number text -> float64 (pyarrow's parser; the validating parser if the text has
    padding or signs pyarrow's cast does not take)."""
    try:
        return pc.cast(column, pa.float64()).to_numpy()
    except pa.ArrowInvalid:
        return parse_numbers(column.to_pandas())[0].to_numpy()


def _predict_batch(
    rows: pa.Table,
    lines: np.ndarray,
    is_holdout: np.ndarray,
    source: str,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    scoring: Scoring,
    sums: dict[str, dict[str, Any]],
    sample: BottomK,
) -> pa.Table:
    ids = pc.utf8_trim_whitespace(rows[ID_COLUMN])
    X = (
        np.column_stack([_floats(rows[name]) for name in features])
        if len(rows)
        else np.zeros((0, len(features)))
    )
    y = (
        np.column_stack([_floats(rows[name]) for name in targets])
        if len(rows)
        else np.zeros((0, len(targets)))
    )
    pred = X @ scoring.W.T + scoring.b
    residual = y - pred
    optimum = y - (X @ scoring.W_opt.T + scoring.b_opt)
    baseline = y - scoring.train_mean
    for split, mask in zip(SPLITS, (~is_holdout, is_holdout), strict=True):
        part = sums[split]
        part["rows"] += int(mask.sum())
        part["sse"] += (residual[mask] ** 2).sum(axis=0)
        part["sse_baseline"] += (baseline[mask] ** 2).sum(axis=0)
        part["sse_optimum"] += (optimum[mask] ** 2).sum(axis=0)
    columns: dict[str, Any] = {ID_COLUMN: ids}
    for j, name in enumerate(features):
        columns[name] = X[:, j]
    for j, name in enumerate(targets):
        columns[name] = y[:, j]
    for j, name in enumerate(targets):
        columns[f"predicted_{name}"] = pred[:, j]
        columns[f"residual_{name}"] = residual[:, j]
    columns["split"] = _SPLIT_NAMES.take(pa.array(is_holdout.astype(np.int8)))
    columns["source_file"] = pa.array([source], pa.string()).take(
        pa.array(np.zeros(len(lines), np.int8))
    )
    columns["source_line"] = lines
    table = pa.table(columns)
    if len(lines):
        keys = sample_keys(lines.astype(np.uint64))
        take = np.arange(len(keys))
        if len(keys) > sample.k:
            take = np.argpartition(keys, sample.k - 1)[: sample.k]
        sample.add(keys[take], table.take(pa.array(take)).to_pandas())
    return table


def predictions_arrow_schema(features: tuple[str, ...], targets: tuple[str, ...]) -> pa.Schema:
    """The predictions table's Arrow types (the columns of tasks.evaluate.predictions_frame)."""
    fields = [(ID_COLUMN, pa.string())] + [(name, pa.float64()) for name in (*features, *targets)]
    for name in targets:
        fields += [(f"predicted_{name}", pa.float64()), (f"residual_{name}", pa.float64())]
    fields += [("split", pa.string()), ("source_file", pa.string()), ("source_line", pa.int64())]
    return pa.schema(fields)


def _duplicate_records(source: str, rows: pa.Table, lines: np.ndarray) -> pd.DataFrame:
    text = rows.to_pandas()
    return pd.DataFrame(
        {
            "source_file": source,
            "source_line": lines,
            "column": ID_COLUMN,
            "reason": "duplicate key",
            "detail": [
                f"{ID_COLUMN} {value.strip()!r} already appears earlier in this file"
                for value in text[ID_COLUMN]
            ],
            "raw": as_csv_lines(text),
        }
    )


def iter_quarantine(parts: list[Path]) -> Iterator[pd.DataFrame]:
    """A file's staged quarantine parts (pass 1 records, then duplicate keys) merged in
    line order, a row group at a time."""
    first = pq.ParquetFile(parts[0]) if parts and parts[0].name.endswith("-0.parquet") else None
    late = [p for p in parts if p.name.endswith("-1.parquet")]
    extra = pd.concat([pd.read_parquet(p) for p in late], ignore_index=True) if late else None
    groups = range(first.num_row_groups) if first is not None else []
    for g in groups:
        frame = first.read_row_group(g).to_pandas()
        if extra is not None and len(extra):
            upto = int(frame["source_line"].max())
            take = extra["source_line"] <= upto
            frame = pd.concat([frame, extra[take]], ignore_index=True).sort_values(
                "source_line", kind="stable"
            )
            extra = extra[~take]
        yield frame
    if extra is not None and len(extra):
        yield extra


@dataclass
class StreamedData:
    """All files of a streamed run after pass 1: their scans, the summed train statistics
    (`moments`, what training needs), the holdout statistics and the merged profile."""

    scans: list[FileScan]

    @property
    def files(self) -> list[FileReport]:
        return [scan.report for scan in self.scans]

    @property
    def moments(self) -> Moments:
        return _sum_moments([scan.train for scan in self.scans])

    @property
    def holdout(self) -> Moments:
        return _sum_moments([scan.holdout for scan in self.scans])

    @property
    def accepted_rows(self) -> int:
        return sum(scan.report.accepted for scan in self.scans)

    def profile(self) -> pd.DataFrame:
        merged = self.scans[0].profile
        for scan in self.scans[1:]:
            merged = merged.merge(scan.profile)
        return merged.frame()

    def training_tensors(
        self, features: tuple[str, ...], targets: tuple[str, ...], dtype: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """X [N, d] and y [N, k] of the training rows (kept by pass 1 for the direct solver)."""
        missing = [str(scan.path) for scan in self.scans if scan.rows is None]
        if missing:
            raise PipelineError(f"training rows of {', '.join(missing)} were not kept by pass 1")
        X = np.concatenate([scan.rows[0] for scan in self.scans])
        y = np.concatenate([scan.rows[1] for scan in self.scans])
        torch_dtype = DTYPES[dtype]
        X_t, y_t = torch.from_numpy(X).to(torch_dtype), torch.from_numpy(y).to(torch_dtype)
        check_shapes(X_t, y_t)
        return X_t, y_t

    def quarantine_parts(self, emits: list[FileEmit] | None = None) -> list[list[Path]]:
        """Staged quarantine files per input file: pass 1's, then pass 2's duplicates."""
        parts = []
        for i, scan in enumerate(self.scans):
            late = [] if emits is None or emits[i].quarantine is None else [emits[i].quarantine]
            parts.append([*scan.quarantine, *late])
        return parts

    def scoring(self, fit: FitResult) -> Scoring:
        """What pass 2 needs from the trained model (see Scoring)."""
        m = self.moments
        W_opt, b_opt = least_squares_of_moments(m)
        return Scoring(fit.W, fit.b, W_opt, b_opt, m.sum_y / m.n)


def _sum_moments(parts: list[Moments]) -> Moments:
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


@task(**FILE_READ_TASK)
def scan_input_file(
    path: Path,
    index: int,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    holdout_fraction: float,
    seed: int,
    staging: Path,
    keep_rows: bool,
) -> FileScan:
    """scan_file as a task (retried on transient I/O errors), logging the row counts."""
    scan = scan_file(
        path, index, features, targets, holdout_fraction, seed, staging, keep_rows=keep_rows
    )
    report = scan.report
    get_run_logger().info(
        "%s: %d data rows, %d accepted, %d quarantined (streamed)",
        path,
        report.rows,
        report.accepted,
        report.quarantined,
    )
    return scan


@task(**FILE_READ_TASK)
def emit_input_file(
    scan: FileScan,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    staging: Path,
    scoring: Scoring | None,
    metadata: dict[bytes, bytes],
) -> FileEmit:
    """emit_file as a task (retried on transient I/O errors)."""
    return emit_file(scan, features, targets, staging, scoring, metadata)


@task(cache_policy=NONE)
def evaluate_streamed(
    streamed: StreamedData,
    emits: list[FileEmit],
    fit: FitResult,
    features: tuple[str, ...],
    targets: tuple[str, ...],
) -> dict[str, pd.DataFrame]:
    """The run's small tables: weights, metrics (from pass 2's sums), profile (pass 1's)."""
    sums = emits[0].sums
    for emit in emits[1:]:
        sums = add_sums(sums, emit.sums)
    return {
        "weights": weights_frame(fit, features, targets),
        "metrics": metrics_from_sums(sums, fit, targets),
        "profile": streamed.profile(),
    }
