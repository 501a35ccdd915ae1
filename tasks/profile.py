"""Profile and drift: summary statistics of the accepted data, and how far the new data has moved
from the champion's training data.

Drift measure: the standardized mean shift |mean_new - mean_ref| / std_ref per column. A shift
above the threshold (default 0.5: half a reference standard deviation) is flagged. Drift is
reported, never acted on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def profile_frame(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per column: count, mean, std (ddof=1, as pandas), min, quantiles, max."""
    records = []
    for column in columns:
        values = frame[column].astype("float64")
        quantiles = values.quantile(list(QUANTILES)).to_numpy() if len(values) else [np.nan] * 5
        records.append(
            {
                "column": column,
                "count": int(values.count()),
                "mean": values.mean(),
                "std": values.std(),
                "min": values.min(),
                **{f"p{round(q * 100):02d}": v for q, v in zip(QUANTILES, quantiles, strict=True)},
                "max": values.max(),
            }
        )
    return pd.DataFrame.from_records(records)


def compare_profiles(new: pd.DataFrame, reference: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per column present in both profiles: both means, the reference std, the standardized
    mean shift and whether it exceeds `threshold`."""
    both = new.merge(reference, on="column", suffixes=("_new", "_reference"))
    std = both["std_reference"].where(both["std_reference"] > 0)
    shift = (both["mean_new"] - both["mean_reference"]).abs() / std
    return pd.DataFrame(
        {
            "column": both["column"],
            "mean_new": both["mean_new"],
            "mean_reference": both["mean_reference"],
            "std_reference": both["std_reference"],
            "mean_shift": shift,
            "drifted": (shift > threshold).fillna(False).astype(bool),
        }
    )
