"""Publishing a predictions-like table of N rows (10 float64 columns, an id and a split column):

    python -m benchmarks.delta_publish [--rows 10000000] [--parts 20] [--repeat 3]

- parquet parts:  today's cost, pyarrow writes the parts on a thread pool (no commit);
- parts + commit: the same parts written at `tables.part_path`, then one `tables.commit_parts`;
- write_deltalake: the whole table through `tables.append` (delta-rs' Rust writer).

Prints seconds (best and median of the repeats, the cases interleaved) and bytes on disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.outputs import tables

FLOATS = 10


def predictions(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    columns = {"id": pa.array(np.char.add("C", np.arange(rows).astype("U10")))}
    for n in range(FLOATS):
        columns[f"value_{n}"] = rng.normal(size=rows)
    columns["split"] = np.where(rng.random(rows) < 0.8, "train", "holdout")
    return pa.table(columns)


def slices(data: pa.Table, parts: int) -> list[pa.Table]:
    size = -(-data.num_rows // parts)
    return [data.slice(start, size) for start in range(0, data.num_rows, size)]


def write_parts(paths: list[str], chunks: list[pa.Table], threads: int) -> None:
    def write(unit: tuple[str, pa.Table]) -> None:
        path, chunk = unit
        with pq.ParquetWriter(path, chunk.schema, use_dictionary=["split"]) as writer:
            writer.write_table(chunk, row_group_size=len(chunk))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(write, zip(paths, chunks, strict=True)))


def plain_parts(root: Path, chunks: list[pa.Table], threads: int) -> None:
    folder = root / "predictions" / "run_id=r1"
    folder.mkdir(parents=True)
    paths = [str(folder / f"part-{n:05d}.parquet") for n in range(len(chunks))]
    write_parts(paths, chunks, threads)


def parts_and_commit(root: Path, chunks: list[pa.Table], threads: int) -> None:
    paths = [tables.part_path(root, "predictions", "r1") for _ in chunks]
    write_parts(paths, chunks, threads)
    tables.commit_parts(root, "predictions", "r1", paths, chunks[0].schema)


def deltalake_writer(root: Path, data: pa.Table) -> None:
    tables.append(root, "predictions", data, "r1")


def disk_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--parts", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: CPU count")
    args = parser.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))

    data = predictions(args.rows)
    chunks = slices(data, args.parts)
    cases = {
        "parquet parts (today)": lambda root: plain_parts(root, chunks, threads),
        "parts + commit_parts": lambda root: parts_and_commit(root, chunks, threads),
        "write_deltalake (append)": lambda root: deltalake_writer(root, data),
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    sizes: dict[str, int] = {}
    for _ in range(args.repeat):
        for name, case in cases.items():
            root = Path(tempfile.mkdtemp(prefix="delta-bench-"))
            try:
                started = time.perf_counter()
                case(root)
                seconds[name].append(time.perf_counter() - started)
                sizes[name] = disk_bytes(root)
            finally:
                shutil.rmtree(root, ignore_errors=True)
    print(f"{args.rows} rows, {len(chunks)} parts, {threads} threads, {args.repeat} repeats")
    for name, times in seconds.items():
        print(
            f"{name:28s} best {min(times):6.2f} s  median {statistics.median(times):6.2f} s  "
            f"{sizes[name] / 1e6:8.1f} MB"
        )


if __name__ == "__main__":
    main()
