"""One entry of the pass-1 cache on disk (see tasks/ingest/cache.py): written from a file's Scan,
checked, and read back as the same Scan.

    meta.json     the key and format, the row accounting, the layout of the payload, and the
                  size and sha256 of every payload file; with a sha256 of itself
    arrays.npz    the statistics per split, the profile sketch, the excluded lines
    spill-R-C.arrow, quarantine-R.parquet, duplicates.parquet
                  the file's accepted rows and records, hard-linked from the run's staging
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks.ingest.csvfile import sha256_file
from tasks.ingest.profile import PROFILE_SAMPLE_ROWS, BottomK, ProfileSketch
from tasks.ingest.scan import FilePart, Scan
from tasks.ingest.stats import Moments
from tasks.ingest.validate import FileReport

# Bump when pass 1's code changes what it keeps (parsing, checks, records, spill layout):
# entries of another format are stale and rebuilt.
CACHE_FORMAT = 3  # 3: the statistics are a QR factor (r), not sums of products
MOMENTS = ("origin", "offset", "r")


class BadEntry(Exception):  # noqa: N818 (an outcome: the entry is not used)
    """A cache entry that must not be trusted (the message says why)."""


def write_entry(tmp: Path, key: str, scan: Scan) -> dict[str, Any]:
    """Write one file's Scan as an entry into the empty folder `tmp`; returns its meta."""
    (report,), (part,) = scan.files, scan.parts
    files: dict[str, Path] = {}

    def keep(name: str, path: Path | None) -> str | None:
        if path is None:
            return None
        files[name] = path
        return name

    spills = [
        [keep(f"spill-{r}-{c}.arrow", path) for c, path in enumerate(chunks)]
        for r, chunks in enumerate(part.spills)
    ]
    quarantines = [keep(f"quarantine-{r}.parquet", q) for r, q in enumerate(part.quarantines)]
    duplicates = keep("duplicates.parquet", part.duplicates)
    arrays = {
        f"{split}_{name}": getattr(moments, name)
        for split, moments in (("train", scan.train), ("holdout", scan.holdout))
        for name in MOMENTS
    }
    sketch = scan.profile
    arrays["excluded"] = part.excluded
    arrays["low"] = np.zeros(0) if sketch.low is None else sketch.low
    arrays["high"] = np.zeros(0) if sketch.high is None else sketch.high
    if sketch.sample.rows is not None:
        arrays |= {"sample_keys": sketch.sample.keys, "sample_rows": sketch.sample.rows}
    np.savez(tmp / "arrays.npz", **arrays)
    names = {name: link(path, tmp / name) for name, path in files.items()}
    names["arrays.npz"] = tmp / "arrays.npz"
    with ThreadPoolExecutor(2) as pool:
        sums = dict(zip(names, pool.map(sha256_file, names.values()), strict=True))
    meta = {
        "key": key,
        "format": CACHE_FORMAT,
        "report": {k: v for k, v in vars(report).items() if k != "path"},
        "train_n": scan.train.n,
        "holdout_n": scan.holdout.n,
        "features": scan.train.d,
        "columns": list(sketch.columns),
        "offsets": list(part.offsets),
        "spills": spills,
        "quarantines": quarantines,
        "duplicates": duplicates,
        "files": {name: [path.stat().st_size, sums[name]] for name, path in names.items()},
    }
    meta["bytes"] = sum(size for size, _ in meta["files"].values())
    text = json.dumps(meta, sort_keys=True)
    body = {"meta": meta, "sha256": hashlib.sha256(text.encode()).hexdigest()}
    (tmp / "meta.json").write_text(json.dumps(body, sort_keys=True))
    return meta


def link(source: Path, target: Path) -> Path:
    """Hard-link `source` to `target` (a copy across file systems)."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(source, target)
    return target


def read_meta(entry: Path, key: str) -> dict[str, Any]:
    """An entry's meta, once it matches its checksum, this code's format and `key`."""
    try:
        body = json.loads((entry / "meta.json").read_text())
        meta, checksum = body["meta"], body["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadEntry(f"unreadable meta.json: {exc}") from None
    if hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest() != checksum:
        raise BadEntry("meta.json does not match its checksum")
    if meta.get("format") != CACHE_FORMAT:
        raise BadEntry(f"stale format {meta.get('format')} (this code writes {CACHE_FORMAT})")
    if meta.get("key") != key:
        raise BadEntry(f"built for another key ({str(meta.get('key'))[:12]}...)")
    return meta


def link_all(entry: Path, folder: Path, files: dict[str, list]) -> None:
    """Link an entry's payload files into a run's `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        try:
            link(entry / name, folder / name)
        except FileNotFoundError:
            raise BadEntry(f"{name} is missing") from None


def verify(folder: Path, files: dict[str, list]) -> None:
    """Every payload file has the size and sha256 the entry recorded (2 threads)."""
    for name, (size, _) in files.items():
        if (folder / name).stat().st_size != size:
            raise BadEntry(f"{name} is {(folder / name).stat().st_size} bytes, not {size}")
    with ThreadPoolExecutor(2) as pool:
        found = list(pool.map(sha256_file, [folder / name for name in files]))
    for (name, (_, expected)), got in zip(files.items(), found, strict=True):
        if got != expected:
            raise BadEntry(f"{name} does not match its checksum")


def scan_of(meta: dict[str, Any], folder: Path, source: str, index: int) -> Scan:
    """The Scan an entry holds, its files in `folder`, for the run's file `source` at
    position `index` (the entry may have been built for the same content under another
    name or position)."""
    with np.load(folder / "arrays.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    moments = {
        split: Moments(
            meta[f"{split}_n"], *(arrays[f"{split}_{name}"] for name in MOMENTS), meta["features"]
        )
        for split in ("train", "holdout")
    }
    sample = BottomK(PROFILE_SAMPLE_ROWS)
    if "sample_keys" in arrays:
        sample.add(arrays["sample_keys"], arrays["sample_rows"])
    low, high = (arrays[name] if len(arrays[name]) else None for name in ("low", "high"))
    sketch = ProfileSketch(tuple(meta["columns"]), low, high, sample)
    part = FilePart(
        source,
        index,
        tuple(tuple(folder / name for name in spill) for spill in meta["spills"]),
        tuple(None if q is None else folder / q for q in meta["quarantines"]),
        tuple(meta["offsets"]),
        arrays["excluded"],
        None if meta["duplicates"] is None else folder / meta["duplicates"],
    )
    report = replace(FileReport(source, **meta["report"]), pass1="cached")
    return Scan((report,), (part,), moments["train"], moments["holdout"], sketch)
