"""Tensors: accepted rows -> features X [N, d] and targets y [N, k], shapes checked."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def to_tensors(
    frame: pd.DataFrame, features: tuple[str, ...], targets: tuple[str, ...], dtype: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature and target columns -> (X [N, d], y [N, k]) in the given float dtype.

    y is always 2-D, even for one target: a [N] target against [N, 1] predictions is the
    notebook's broadcasting bug.
    """
    torch_dtype = DTYPES[dtype]
    np_dtype = np.float32 if torch_dtype == torch.float32 else np.float64
    X = torch.from_numpy(frame[list(features)].to_numpy(dtype=np_dtype, copy=True))
    y = torch.from_numpy(frame[list(targets)].to_numpy(dtype=np_dtype, copy=True))
    check_shapes(X, y)
    return X, y


def check_shapes(X: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ValueError unless X is [N, d] and y is [N, k] with the same N."""
    if X.ndim != 2 or y.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(
            f"expected X [N, d] and y [N, k] with the same N, got X {tuple(X.shape)} "
            f"and y {tuple(y.shape)}"
        )
