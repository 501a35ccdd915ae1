"""Split: a deterministic train/holdout assignment per row."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def split_holdout(
    frame: pd.DataFrame, key_columns: list[str], holdout_fraction: float, seed: int
) -> np.ndarray:
    """Boolean mask of holdout rows.

    A row's split depends only on its values and the seed (a keyed hash of the row), so the same
    row lands in the same split on every run, whatever file or position it comes from.
    """
    key = hashlib.sha256(f"sales-split:{seed}".encode()).hexdigest()[:16]
    hashed = pd.util.hash_pandas_object(frame[key_columns], index=False, hash_key=key)
    unit = (hashed.to_numpy(dtype=np.uint64) >> np.uint64(11)).astype(np.float64) / 2.0**53
    return unit < holdout_fraction
