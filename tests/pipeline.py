"""Test helpers: pass 1 over files in this process (no Prefect), and what it kept, as frames."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from schemas.outputs import QUARANTINE_ARROW
from schemas.params import RunConfig
from schemas.sales import DEFAULT_FEATURES, DEFAULT_TARGETS
from tasks.ingest.scan import Scan, scan_file, sum_scans

F, T = DEFAULT_FEATURES, DEFAULT_TARGETS
# How the files of a test are cut: as the flow does, in blocks of a line or two, and in byte
# ranges of a few lines (several per file, as on a cluster), each on two threads.
LAYOUTS = {
    "one block": {},
    "tiny blocks": {"block_bytes": 64},
    "tiny ranges": {"block_bytes": 64, "split_bytes": 150},
}


def config(layout: str = "one block", **settings) -> RunConfig:
    """The run's settings for the sales columns (or others given), cut as `layout` says."""
    return RunConfig(**{"features": F, "targets": T, "threads": 2, **LAYOUTS[layout], **settings})


def scan_paths(paths: list[Path], config: RunConfig, staging: Path) -> Scan:
    """Pass 1 over every file, summed."""
    return sum_scans([scan_file(path, i, config, staging) for i, path in enumerate(paths)])


def quarantine(scan: Scan) -> pd.DataFrame:
    """Every quarantine record of a scan, in file and line order."""
    frames = [frame for part in scan.parts for frame in part.quarantine()]
    if not frames:
        return QUARANTINE_ARROW.empty_table().to_pandas()
    return pd.concat(frames, ignore_index=True)


def kept_rows(scan: Scan) -> pd.DataFrame:
    """Every accepted row as kept for pass 2, with its source file, in file and line order."""
    frames = []
    for part in scan.parts:
        for chunk in part.chunks():
            for batch in part.batches(chunk):
                frame = pa.Table.from_batches([batch]).to_pandas()
                frames.append(frame.assign(source_file=part.source))
    if not frames:
        return pd.DataFrame(columns=["source_file", "line"])
    rows = pd.concat(frames, ignore_index=True)
    return rows.sort_values(["source_file", "line"], ignore_index=True)
