"""The pass-1 cache on its own (no Prefect): an entry gives back the Scan it was built from,
and a truncated, corrupted, foreign, stale or half-written entry is never trusted; the size
limit evicts the least recently used entry; concurrent stores do not corrupt it."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pytest

import tasks.ingest.cache
import tasks.ingest.cache_entry
from tasks.ingest.cache import STALE_TMP_SECONDS, Pass1Cache, pass1_key
from tasks.ingest.csvfile import sha256_file
from tests.conftest import messy_csv
from tests.pipeline import config, kept_rows, quarantine, scan_paths

RUN = config("tiny ranges")


def built(tmp_path, seed=0, name="in.csv", rows=300):
    """A messy file, its scan in a staging folder of its own, and its entry key."""
    path = messy_csv(tmp_path / name, seed, rows=rows)
    scan = scan_paths([path], RUN, tmp_path / f"stage-{name}")
    return path, scan, pass1_key(sha256_file(path), RUN)


def assert_same_scan(got, want):
    assert [vars(f) | {"pass1": None} for f in got.files] == [
        vars(f) | {"pass1": None} for f in want.files
    ]
    pd.testing.assert_frame_equal(kept_rows(got), kept_rows(want))
    pd.testing.assert_frame_equal(quarantine(got), quarantine(want))
    for name in ("n", "origin", "offset", "sxx", "sxy", "syy"):
        np.testing.assert_array_equal(getattr(got.train, name), getattr(want.train, name))
        np.testing.assert_array_equal(getattr(got.holdout, name), getattr(want.holdout, name))
    pd.testing.assert_frame_equal(got.profile_table(), want.profile_table())


def test_an_entry_gives_back_the_scan_it_was_built_from_under_any_name(tmp_path):
    path, scan, key = built(tmp_path)
    cache = Pass1Cache(tmp_path / "cache", 1 << 30)
    cache.store(key, scan)
    shutil.rmtree(tmp_path / "stage-in.csv")  # the run that built it is over
    copy = shutil.copy(path, tmp_path / "renamed.csv")  # the same content, another name
    got = cache.load(key, str(copy), 3, tmp_path / "run2")
    assert got.files[0].pass1 == "cached"
    assert got.parts[0].index == 3
    assert set(quarantine(got)["source_file"]) == {str(copy)}
    assert_same_scan(got, scan_paths([copy], RUN, tmp_path / "fresh"))


def test_the_key_changes_with_everything_that_changes_pass_one(tmp_path):
    path = messy_csv(tmp_path / "in.csv", 1)
    sha = sha256_file(path)
    base = pass1_key(sha, RUN)
    changed = [
        RUN.with_changes(seed=1),
        RUN.with_changes(holdout_fraction=0.3),
        RUN.with_changes(features=RUN.features[:2]),
        RUN.with_changes(id_column=None),
        RUN.with_changes(targets=("tax_k",), features=("avg_income_k", "price_k")),
    ]
    assert len({base, *(pass1_key(sha, c) for c in changed)}) == 1 + len(changed)
    assert pass1_key("0" * 64, RUN) != base
    # how the work is cut and what training does afterwards do not change pass 1
    same = RUN.with_changes(threads=1, block_bytes=1 << 20, split_bytes=0, lr=0.1)
    assert pass1_key(sha, same) == base


def test_the_key_changes_with_the_row_contract(monkeypatch):
    # a release that changes what a valid row is (a bound, a nullable column, ids no longer
    # unique) must not reuse what an older release kept
    base, real = pass1_key("0" * 64, RUN), tasks.ingest.cache.sales_schema

    def key_with(change):
        monkeypatch.setattr(tasks.ingest.cache, "sales_schema", lambda *args: change(real(*args)))
        return pass1_key("0" * 64, RUN)

    def not_unique(schema):
        schema.unique = None
        return schema

    keys = [
        key_with(lambda s: s.update_column("price_k", checks=[pandera.Check.le(5.0)])),
        key_with(lambda s: s.update_column("tax_k", nullable=True)),
        key_with(not_unique),
    ]
    assert len({base, *keys}) == 1 + len(keys)


def corrupt_truncate(entry):
    spill = next(entry.glob("spill-*.arrow"))
    spill.write_bytes(spill.read_bytes()[:-100])


def corrupt_flip(entry):
    spill = next(entry.glob("spill-*.arrow"))
    data = bytearray(spill.read_bytes())
    data[len(data) // 2] ^= 0x01
    spill.write_bytes(bytes(data))


def corrupt_meta(entry):
    meta = entry / "meta.json"
    meta.write_text(meta.read_text().replace('"accepted": ', '"accepted": 1'))


def corrupt_missing(entry):
    next(entry.glob("quarantine-*.parquet")).unlink()


def corrupt_arrays(entry):
    """The statistics and profile sketch training reads, one bit changed."""
    arrays = entry / "arrays.npz"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0x01
    arrays.write_bytes(bytes(data))


def make_stale(entry):
    body = json.loads((entry / "meta.json").read_text())
    body["meta"]["format"] = 0  # written by an older release, checksum consistent
    text = json.dumps(body["meta"], sort_keys=True)
    body["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (entry / "meta.json").write_text(json.dumps(body, sort_keys=True))


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (corrupt_truncate, "bytes, not"),
        (corrupt_flip, "does not match its checksum"),
        (corrupt_arrays, "arrays.npz does not match its checksum"),
        (corrupt_meta, "meta.json does not match its checksum"),
        (corrupt_missing, "is missing"),
        (make_stale, "stale format 0"),
    ],
)
def test_a_damaged_entry_is_detected_logged_removed_and_never_trusted(
    tmp_path, caplog, damage, why
):
    path, scan, key = built(tmp_path)
    cache = Pass1Cache(tmp_path / "cache", 1 << 30)
    cache.store(key, scan)
    damage(cache.entry(key))
    assert cache.load(key, str(path), 0, tmp_path / "run2") is None
    assert why in caplog.text
    assert not cache.entry(key).exists()  # removed: the next run rebuilds it
    fresh = scan_paths([path], RUN, tmp_path / "rebuilt")  # (the damage hit `scan`'s links too)
    cache.store(key, fresh)
    assert_same_scan(cache.load(key, str(path), 0, tmp_path / "run3"), fresh)


def test_an_entry_under_another_files_key_is_foreign(tmp_path, caplog):
    _, scan, key = built(tmp_path)
    _, _, other = built(tmp_path, seed=1, name="other.csv")
    cache = Pass1Cache(tmp_path / "cache", 1 << 30)
    cache.store(key, scan)
    shutil.copytree(cache.entry(key), cache.entry(other))
    assert cache.load(other, "other.csv", 0, tmp_path / "run2") is None
    assert "built for another key" in caplog.text


def test_a_store_that_fails_midway_leaves_no_entry(tmp_path, monkeypatch):
    _, scan, key = built(tmp_path)
    cache = Pass1Cache(tmp_path / "cache", 1 << 30)
    real, calls = tasks.ingest.cache_entry.link, []

    def failing(source, target):
        calls.append(target)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(source, target)

    monkeypatch.setattr(tasks.ingest.cache_entry, "link", failing)
    with pytest.raises(OSError, match="No space left"):
        cache.store(key, scan)
    assert not cache.entry(key).exists()
    assert not list(cache.folder.glob("tmp-*"))
    # a store killed outright leaves its tmp- folder, which is not an entry and is swept later
    (cache.folder / "tmp-killed").mkdir()
    assert cache.load(key, "in.csv", 0, tmp_path / "run2") is None


def test_the_size_limit_evicts_the_least_recently_used_entry(tmp_path):
    entries = [built(tmp_path, seed=s, name=f"f{s}.csv") for s in range(4)]
    sizer = Pass1Cache(tmp_path / "sizes", 1 << 30)
    sizes = []
    for _, scan, key in entries:
        sizer.store(key, scan)
        sizes.append(json.loads((sizer.entry(key) / "meta.json").read_text())["meta"]["bytes"])
    # room for every entry but f1's
    cache = Pass1Cache(tmp_path / "cache", sum(sizes) - sizes[1] + min(sizes) // 2)
    for _, scan, key in entries[:3]:
        cache.store(key, scan)
    past = 1_000_000_000
    for i, (_, _, key) in enumerate(entries[:3]):  # stored long ago, in order
        os.utime(cache.entry(key), (past + i, past + i))
    assert cache.load(entries[0][2], "f0.csv", 0, tmp_path / "use") is not None  # now recent
    cache.store(entries[3][2], entries[3][1])
    kept = {key for _, _, key in entries if cache.entry(key).exists()}
    assert kept == {entries[0][2], entries[2][2], entries[3][2]}  # f1 was least recently used


def _store_many(folder, keys_and_stages):
    from tasks.ingest.scan import scan_file

    cache = Pass1Cache(folder, 1 << 30)
    for key, path, stage in keys_and_stages:
        cache.store(key, scan_file(path, 0, RUN, stage))


def test_two_processes_filling_the_cache_at_once_leave_only_sound_entries(tmp_path):
    files = [messy_csv(tmp_path / f"c{i}.csv", i, rows=200) for i in range(4)]
    keys = [pass1_key(sha256_file(path), RUN) for path in files]
    folder = tmp_path / "cache"
    context = multiprocessing.get_context("spawn")  # (fork would copy pass 1's thread pools)
    jobs = [(key, path, i) for i, (key, path) in enumerate(zip(keys, files, strict=True))]
    workers = [
        context.Process(
            target=_store_many,
            args=(folder, [(key, path, tmp_path / f"w{w}-{i}") for key, path, i in jobs[::step]]),
        )
        for w, step in enumerate((1, -1))  # the same files, in opposite orders
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cache = Pass1Cache(folder, 1 << 30)
    assert sorted(p.name for p in (folder / "entries").iterdir()) == sorted(keys)
    for i, (key, path) in enumerate(zip(keys, files, strict=True)):
        got = cache.load(key, str(path), 0, tmp_path / f"check-{i}")
        assert_same_scan(got, scan_paths([path], RUN, tmp_path / f"fresh-{i}"))


def test_a_stores_sweep_removes_the_folders_of_stores_killed_long_ago(tmp_path):
    _, scan, key = built(tmp_path)
    cache = Pass1Cache(tmp_path / "cache", 1 << 30)
    killed, running = cache.folder / "tmp-killed", cache.folder / "tmp-running"
    for folder in (killed, running):
        (folder / "spill-0-0.arrow").parent.mkdir(parents=True)
        (folder / "spill-0-0.arrow").write_bytes(b"x" * 100)
    past = time.time() - STALE_TMP_SECONDS - 60
    os.utime(killed, (past, past))
    cache.store(key, scan)
    assert not killed.exists()
    assert running.exists()  # (another run's store, still writing)


def test_loads_racing_stores_and_evictions_get_a_whole_scan_or_none(tmp_path):
    entries = [built(tmp_path, seed=s, name=f"f{s}.csv", rows=40) for s in range(3)]
    sizer = Pass1Cache(tmp_path / "sizes", 1 << 30)
    for _, scan, key in entries:
        sizer.store(key, scan)
    one = max(json.loads((sizer.entry(k) / "meta.json").read_text())["meta"]["bytes"]
              for _, _, k in entries)  # fmt: skip
    cache = Pass1Cache(tmp_path / "cache", one)  # room for one entry: each store evicts

    def work(worker):
        got = []
        for i in range(20):
            _, scan, key = entries[(worker + i) % 3]
            cache.store(key, scan)
            path, _, other = entries[(worker + i + 1) % 3]
            got.append((other, cache.load(other, str(path), 0, tmp_path / f"w{worker}-{i}")))
        return got

    with ThreadPoolExecutor(4) as pool:
        loads = [load for got in pool.map(work, range(4)) for load in got]
    want = {key: scan for _, scan, key in entries}
    assert any(scan is not None for _, scan in loads)
    for key, scan in loads:
        if scan is not None:
            assert_same_scan(scan, want[key])
