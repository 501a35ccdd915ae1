"""Wiring shared by the flows: pass 1 over the inputs and pass 2 over the kept rows, as Prefect
tasks. On the default thread runner one byte range is scanned at a time, its blocks on every
core; on a cluster (the Dask runner) every byte range is a task of its own, all at once, and the
kept rows are staged where any worker can read them (on an object-store root: the bucket, see
tasks/common/storage.py staging_area)."""

from __future__ import annotations

from pathlib import Path

from prefect.context import FlowRunContext
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from schemas.params import RunConfig
from tasks.common import memory, progress, store
from tasks.common.runlog import run_logger
from tasks.common.store import Location
from tasks.ingest.cache import Pass1Cache, lookup_task, store_task
from tasks.ingest.csvfile import ByteRange, CsvFile
from tasks.ingest.range_scan import scan_range_task
from tasks.ingest.scan import Scan, finish_input_task, hash_input_task, open_input_task, sum_scans
from tasks.outputs.predict import Emitted, combine_emitted

# Byte ranges per task on a cluster when the run does not say (split_mb).
CLUSTER_SPLIT_BYTES = 64 << 20


def on_cluster() -> bool:
    """Whether this flow run's tasks run outside this process (a Dask task runner)."""
    context = FlowRunContext.get()
    return context is not None and not isinstance(context.task_runner, ThreadPoolTaskRunner)


def for_runner(config: RunConfig) -> RunConfig:
    """The settings of how the work is cut, for this flow run's task runner."""
    if on_cluster():
        return config.with_changes(threads=1, split_bytes=config.split_bytes or CLUSTER_SPLIT_BYTES)
    return config


def open_inputs(paths: list[Path], config: RunConfig) -> list[tuple[CsvFile, list[ByteRange]]]:
    """Every input file's header checked (before anything is read or written), each file cut
    into its byte ranges."""
    plans = [open_input_task.submit(path, config) for path in paths]
    wait(plans)
    return [plan.result() for plan in plans]


def pass1_cache(root: Location, staging: Location, config: RunConfig) -> Pass1Cache | None:
    """The run's pass-1 cache (tasks/ingest/cache.py), if it uses one. The cache is on a disk
    (the root's, or each worker's) and takes the staged files by hard link: a run staging on
    an object store (a cluster on a bucket) goes without it."""
    if not config.use_cache:
        return None
    if store.is_remote(staging):
        run_logger().info("pass-1 cache not used: the run's working files are on the store")
        return None
    return Pass1Cache.under(root)


def scan_inputs(
    plans: list[tuple[CsvFile, list[ByteRange]]],
    config: RunConfig,
    staging: Location,
    cache: Pass1Cache | None = None,
) -> Scan:
    """Pass 1 over every input file (see tasks/ingest/range_scan.py), summed: one Scan. With a
    `cache`, a file whose pass-1 result is cached is not parsed, and every file parsed is
    cached."""
    memory.limit_arenas()  # before pass 1's threads start
    lookups = []
    if cache is not None:
        for index, (file, spans) in enumerate(plans):
            lookups.append(lookup_task.submit(cache, file, spans, index, config, staging))
    wait(lookups)
    found = [lookup.result() for lookup in lookups] or [None] * len(plans)
    progress.phase("pass 1: reading", _bytes_to_parse(plans, found), "bytes")
    cluster = on_cluster()
    submitted = []
    for index, ((file, spans), lookup) in enumerate(zip(plans, found, strict=True)):
        if lookup is not None and lookup.scan is not None:
            continue
        ranges = [
            scan_range_task.submit(file, span, config, staging, f"{index:05d}-{span.index:04d}")
            for span in spans
        ]
        hashed = lookup.hashed if lookup is not None else None
        if hashed is None and len(spans) > 1:  # what the ranges read is checked against it
            hashed = hash_input_task.submit(file, spans)
        if not cluster:
            wait(ranges)  # one file at a time: each already uses every core
        submitted.append((index, file, ranges, hashed))
    scans = {i: lookup.scan for i, lookup in enumerate(found) if lookup and lookup.scan}
    finished = {}
    for index, file, ranges, hashed in submitted:
        scanned = [future.result() for future in ranges]  # a file's own error, in file order
        finished[index] = finish_input_task.submit(file, index, scanned, hashed, config, staging)
    wait(list(finished.values()))
    scans |= {index: future.result() for index, future in finished.items()}
    if cache is not None:
        wait([store_task.submit(cache, found[i], scans[i]) for i in finished])
    log_parsed(scans)
    memory.give_back()
    return sum_scans([scans[i] for i in range(len(plans))])


def _bytes_to_parse(plans: list[tuple[CsvFile, list[ByteRange]]], found: list) -> int:
    return sum(
        span.end - span.start
        for (_, spans), lookup in zip(plans, found, strict=True)
        if lookup is None or lookup.scan is None
        for span in spans
    )


def log_parsed(scans: dict[int, Scan]) -> None:
    """One log line: how much of the data pass 1 parsed and how much came from the cache."""
    reports = [scan.files[0] for scan in scans.values()]
    parsed = [r for r in reports if r.pass1 == "parsed"]
    cached = [r for r in reports if r.pass1 == "cached"]
    run_logger().info(
        "pass 1 parsed %d file(s), %s bytes, %s rows; %d file(s), %s bytes, read from the cache",
        len(parsed),
        f"{sum(r.size_bytes for r in parsed):,}",
        f"{sum(r.rows for r in parsed):,}",
        len(cached),
        f"{sum(r.size_bytes for r in cached):,}",
    )


def run_pass2(task, scan: Scan, *args) -> Emitted:
    """Pass 2 (`task`: predict_task or score_task) over every file's kept rows."""
    progress.phase("pass 2: writing", scan.accepted, "rows")
    futures = [task.submit(part, *args) for part in scan.parts]
    wait(futures)
    memory.give_back()
    return combine_emitted([future.result() for future in futures])
