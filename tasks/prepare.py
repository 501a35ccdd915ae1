"""Prepare: per input file, read, validate, split and reduce the training rows to sufficient
statistics. Each file is one task, so a Dask task runner spreads the files over workers; the
statistics of all files are summed for training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from schemas.sales import ID_COLUMN, allowed_columns, required_columns
from tasks.ingest import FILE_READ_TASK, read_sales_csv
from tasks.split import split_holdout
from tasks.tensors import to_tensors
from tasks.train import Moments, moments_of
from tasks.validate import ValidatedData, validate_files


@dataclass(frozen=True)
class PreparedData:
    """Validated rows, their train/holdout split, and the float64 statistics of the training
    rows, for one file or (summed) for all of them."""

    data: ValidatedData
    is_holdout: np.ndarray
    moments: Moments

    @property
    def accepted_rows(self) -> int:
        return len(self.is_holdout)

    def training_tensors(
        self, features: tuple[str, ...], targets: tuple[str, ...], dtype: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """X [N, d] and y [N, k] of the training rows, in file order."""
        return to_tensors(self.data.accepted[~self.is_holdout], features, targets, dtype)


def prepare_file(
    path: Path,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    holdout_fraction: float,
    seed: int,
) -> PreparedData:
    """Read and validate one CSV, split its accepted rows, and sum up its training rows."""
    raw = read_sales_csv(
        path, required_columns(features, targets), allowed_columns(features, targets)
    )
    data = validate_files([raw], features, targets)
    accepted = data.accepted
    is_holdout = split_holdout(accepted[ID_COLUMN], holdout_fraction, seed)
    train = accepted[~is_holdout]
    moments = moments_of(
        train[list(features)].to_numpy(dtype=np.float64),
        train[list(targets)].to_numpy(dtype=np.float64),
    )
    return PreparedData(data, is_holdout, moments)


def combine_prepared(parts: list[PreparedData]) -> PreparedData:
    """Files in order -> one PreparedData: rows and quarantine concatenated, statistics summed."""
    data = ValidatedData(
        pd.concat([p.data.accepted for p in parts], ignore_index=True),
        pd.concat([p.data.quarantine for p in parts], ignore_index=True),
        [report for p in parts for report in p.data.files],
    )
    moments = parts[0].moments
    for part in parts[1:]:
        moments = moments + part.moments
    return PreparedData(data, np.concatenate([p.is_holdout for p in parts]), moments)


@task(**FILE_READ_TASK)
def prepare_input_file(
    path: Path,
    features: tuple[str, ...],
    targets: tuple[str, ...],
    holdout_fraction: float,
    seed: int,
) -> PreparedData:
    """prepare_file as a task, retried on transient I/O errors, logging the row counts."""
    prepared = prepare_file(path, features, targets, holdout_fraction, seed)
    report = prepared.data.files[0]
    get_run_logger().info(
        "%s: %d data rows, %d accepted, %d quarantined",
        path,
        report.rows,
        report.accepted,
        report.quarantined,
    )
    return prepared


@task(cache_policy=NONE)
def combine_files(parts: list[PreparedData]) -> PreparedData:
    """Combine the per-file results (see combine_prepared)."""
    return combine_prepared(parts)
