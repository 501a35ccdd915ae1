"""Pass 2: the kept rows of pass 1 -> a model's predictions, written as Parquet parts of the run.

Training runs write `predictions` (every accepted row with its prediction, residual and split)
and sum the squared errors per split for the metrics; scoring runs write `scores`. Each spill
chunk is one part, written on its own thread (Parquet encoding runs outside the GIL) straight
into the Delta table's folder, where no reader sees it until the publish step commits the run's
parts in one transaction. Nothing here reads the CSV again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandera.pandas as pandera
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NONE

from schemas.outputs import descriptions_of, predictions_schema, scores_schema
from schemas.params import RunConfig
from tasks.common import progress, store
from tasks.common.storage import working_files
from tasks.common.store import Location
from tasks.ingest.scan import FilePart, Scan
from tasks.ingest.spill import spilled_values
from tasks.ingest.stats import least_squares_of_moments
from tasks.model.evaluate import SPLITS, add_sums, zero_sums
from tasks.model.inference import meat_of_rows, prediction_interval
from tasks.outputs import tables
from tasks.outputs.promote import Uncertainty

_SPLIT_NAMES = pa.array(list(SPLITS), pa.string())  # index 0 train, 1 holdout
# The columns of few values (the split, the source file, the model's run) are built as Arrow
# dictionaries, whose codes the Parquet writer takes as they are: encoding them from text hashed
# every value (a quarter of a part's write). The parts store no Arrow schema, so every reader
# sees the table's types (text, not dictionaries). (Delta-coding the line numbers would save
# disk but Spark before 3.3 cannot read that encoding.)
_CODED = pa.dictionary(pa.int8(), pa.string())
# Rows of each written part checked against the table's pandera schema.
CHECKED_ROWS = 1000


@dataclass(frozen=True)
class Scoring:
    """What pass 2 of a training run predicts with: the trained model, the least-squares
    optimum of the training rows, the training mean of the targets (the baseline) and of the
    features (the centre of the HC meat), all raw-scale float64."""

    W: np.ndarray
    b: np.ndarray
    W_opt: np.ndarray
    b_opt: np.ndarray
    train_mean: np.ndarray
    feature_mean: np.ndarray

    @staticmethod
    def of(fit: Any, scan: Scan) -> Scoring:
        optimum = getattr(fit, "optimum", None)
        W_opt, b_opt = least_squares_of_moments(scan.train) if optimum is None else optimum
        return Scoring(fit.W, fit.b, W_opt, b_opt, scan.train.mean_y, scan.train.mean_x)


@dataclass(frozen=True)
class _Output:
    """What pass 2 writes: the table's name, `build(batch, source, sums)` making a batch's
    rows (and adding to `sums`), the pandera contract, the columns with dictionary pages and
    the numbers of targets and features (for the sums)."""

    name: str
    build: Callable[[pa.RecordBatch, str, dict], pa.Table]
    contract: pandera.DataFrameSchema
    dictionary: list[str]
    sizes: tuple[int, int]
    schema: pa.Schema


@dataclass(frozen=True)
class Emitted:
    """Pass 2's result: the parts written into the table's run folder (not committed yet),
    their Arrow schema and column descriptions, and per-split sums (training runs)."""

    parts: tuple[str, ...]
    sums: dict[str, dict[str, Any]]
    schema: pa.Schema
    described: dict[str, str]


def predictions_arrow(config: RunConfig) -> pa.Schema:
    """The predictions table's Arrow types."""
    fields = _id_fields(config) + [(name, pa.float64()) for name in config.values]
    for name in config.targets:
        fields += [(f"predicted_{name}", pa.float64()), (f"residual_{name}", pa.float64())]
    fields += [("split", pa.string()), ("source_file", pa.string()), ("source_line", pa.int64())]
    return pa.schema(fields)


def scores_arrow(model: Any, config: RunConfig) -> pa.Schema:
    """The scores table's Arrow types."""
    features, targets = model.features, model.targets
    fields = _id_fields(config) + [(name, pa.float64()) for name in features]
    for name in targets:
        fields += [(f"predicted_{name}{end}", pa.float64()) for end in ("", "_low", "_high")]
    fields += [("model_run_id", pa.string()), ("source_file", pa.string())]
    return pa.schema([*fields, ("source_line", pa.int64())])


def predict_parts(
    parts: tuple[FilePart, ...],
    scoring: Scoring,
    config: RunConfig,
    root: Location,
    run_id: str,
) -> Emitted:
    """Pass 2 of a training run over the kept rows of `parts` (see the module docstring)."""
    schema = predictions_arrow(config)

    def table(batch: pa.RecordBatch, source: str, sums: dict) -> pa.Table:
        values = spilled_values(batch, config)
        d = len(config.features)
        X, y = values[:, :d], values[:, d:]
        holdout = batch.column("holdout").to_numpy(zero_copy_only=False)
        pred = X @ scoring.W.T + scoring.b
        residual = y - pred
        optimum = y - (X @ scoring.W_opt.T + scoring.b_opt)
        baseline = y - scoring.train_mean
        for split, mask in zip(SPLITS, (~holdout, holdout), strict=True):
            part = sums[split]
            part["rows"] += int(mask.sum())
            part["sse"] += (residual[mask] ** 2).sum(axis=0)
            part["sse_baseline"] += (baseline[mask] ** 2).sum(axis=0)
            part["sse_optimum"] += (optimum[mask] ** 2).sum(axis=0)
        train = ~holdout
        sums["train"]["meat"] += meat_of_rows(X[train], optimum[train], scoring.feature_mean)
        columns = [*_ids(batch, config), *(batch.column(name) for name in config.values)]
        for j in range(len(config.targets)):
            columns += [pa.array(pred[:, j]), pa.array(residual[:, j])]
        columns.append(_coded(holdout.astype(np.int8), _SPLIT_NAMES))
        return _with_source(columns, batch, source, schema)

    # dictionary pages pay where values repeat (the input's few decimals), not for the id,
    # the model's outputs or the line
    dictionary = [*config.values, "split", "source_file"]
    contract = predictions_schema(config.features, config.targets, config.id_column)
    sizes = (len(config.targets), len(config.features))
    output = _Output("predictions", table, contract, dictionary, sizes, schema)
    return _emit(parts, root, run_id, output, config.threads)


def score_parts(
    parts: tuple[FilePart, ...],
    model: Any,
    model_run_id: str,
    config: RunConfig,
    root: Location,
    run_id: str,
) -> Emitted:
    """Pass 2 of a scoring run: every kept row with the model's predictions (`model`: W, b,
    features, targets)."""
    schema = scores_arrow(model, config)
    run_column = pa.array([model_run_id], pa.string())

    def table(batch: pa.RecordBatch, source: str, sums: dict) -> pa.Table:
        X = spilled_values(batch, config)
        pred = X @ model.W.T + model.b
        low, high = interval_of(X, model.uncertainty, len(model.targets))
        sums["train"]["rows"] += batch.num_rows
        columns = [*_ids(batch, config), *(batch.column(name) for name in model.features)]
        for j in range(len(model.targets)):
            columns += [pa.array(values[:, j], from_pandas=True) for values in (pred, low, high)]
        columns.append(_coded(np.zeros(batch.num_rows, np.int8), run_column))
        return _with_source(columns, batch, source, schema)

    dictionary = [*model.features, "model_run_id", "source_file"]
    contract = scores_schema(model.features, model.targets, config.id_column)
    output = _Output("scores", table, contract, dictionary, (len(model.targets), 0), schema)
    return _emit(parts, root, run_id, output, config.threads)


def _id_fields(config: RunConfig) -> list[tuple[str, pa.DataType]]:
    return [] if config.id_column is None else [(config.id_column, pa.string())]


def _ids(batch: pa.RecordBatch, config: RunConfig) -> list[pa.Array]:
    return [] if config.id_column is None else [batch.column(config.id_column)]


def interval_of(
    X: np.ndarray, uncertainty: Uncertainty | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction intervals [N, k] for new rows X [N, d], around the least-squares prediction
    the inference describes (NaN, written as null, where the model has no uncertainty or it is
    undefined for a target)."""
    if uncertainty is None:
        nan = np.full((len(X), k), np.nan)
        return nan, nan
    u = uncertainty
    centre = X @ u.W.T + u.b
    return prediction_interval(X, centre, u.covariance, u.residual_variance, u.dof, u.confidence)


def _with_source(columns: list, batch: pa.RecordBatch, source: str, schema: pa.Schema) -> pa.Table:
    source_column = _coded(np.zeros(batch.num_rows, np.int8), pa.array([source], pa.string()))
    columns = [*columns, source_column, batch.column("line")]
    return pa.Table.from_arrays(columns, schema=_as_written(schema))


def _coded(codes: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), values)


def _as_written(schema: pa.Schema) -> pa.Schema:
    """The table's schema as pass 2 builds its rows: the columns of few values coded."""
    coded = {"split", "source_file", "model_run_id"}
    return pa.schema([f.with_type(_CODED) if f.name in coded else f for f in schema])


def _emit(
    parts: tuple[FilePart, ...], root: Location, run_id: str, output: _Output, threads: int
) -> Emitted:
    """Write one part per spill chunk into the table's run folder (committed later, by the
    publish), on `threads` threads; sums are added up in chunk order, so the result does not
    depend on timing. The Arrow schema is fixed; the first rows of every part are validated
    against the table's pandera contract as well."""
    units = [(part, chunk) for part in parts for chunk in part.chunks()]
    folder = store.parent_of(tables.part_path(root, output.name, run_id))

    def write(unit: tuple[FilePart, tuple[int, int]]) -> tuple[str | None, dict]:
        part, chunk = unit
        path = tables.part_path(root, output.name, run_id)
        sums = zero_sums(*output.sizes)
        writer = None
        # The part is streamed to the store (a multipart upload on a bucket): the writer's
        # footer first, then the upload's end, whatever happens.
        with contextlib.ExitStack() as closing:
            for batch in part.batches(chunk):
                if not batch.num_rows:
                    continue
                out = output.build(batch, part.source, sums)
                if writer is None:
                    head = out.slice(0, CHECKED_ROWS).cast(output.schema)
                    output.contract.validate(head.to_pandas(), lazy=True)
                    sink = closing.enter_context(store.open_output(path))
                    writer = closing.enter_context(_part_writer(sink, out.schema, output))
                writer.write_table(out, row_group_size=len(out))
        return (None if writer is None else path), sums

    results = []
    with working_files(folder), ThreadPoolExecutor(max(1, threads)) as pool:
        for result in pool.map(write, units):  # in order, as each is written
            results.append(result)
            rows = sum(split["rows"] for split in result[1].values())
            progress.advance(rows, rows)
    sums = zero_sums(*output.sizes)
    for _, part_sums in results:
        sums = add_sums(sums, part_sums)
    parts_written = tuple(path for path, _ in results if path is not None)
    return Emitted(parts_written, sums, output.schema, descriptions_of(output.contract))


def _part_writer(sink: Any, schema: pa.Schema, output: _Output) -> pq.ParquetWriter:
    return pq.ParquetWriter(sink, schema, use_dictionary=output.dictionary, store_schema=False)


@task(cache_policy=NONE, task_run_name="predict-{part.index}")
def predict_task(
    part: FilePart,
    scoring: Scoring,
    config: RunConfig,
    root: Location,
    run_id: str,
) -> Emitted:
    """predict_parts as a task, for one file's rows."""
    return predict_parts((part,), scoring, config, root, run_id)


@task(cache_policy=NONE, task_run_name="score-{part.index}")
def score_task(
    part: FilePart,
    model: Any,
    model_run_id: str,
    config: RunConfig,
    root: Location,
    run_id: str,
) -> Emitted:
    """score_parts as a task, for one file's rows."""
    return score_parts((part,), model, model_run_id, config, root, run_id)


def combine_emitted(parts: list[Emitted]) -> Emitted:
    """Pass 2's results of several files as one."""
    sums = parts[0].sums
    for part in parts[1:]:
        sums = add_sums(sums, part.sums)
    paths = tuple(path for part in parts for path in part.parts)
    return Emitted(paths, sums, parts[0].schema, parts[0].described)
