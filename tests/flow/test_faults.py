"""Faults, each in a real process: killed writers, a full disk, a killed training run, two runs
at once, failed tasks, float32 overflow. Readers must never see a half-written file, and a run
is visible only once its manifest exists."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from flows.train import train_sales_model
from flows.watch import watch_landing
from schemas.outputs import TABLES as OUTPUT_TABLES
from tasks.common.errors import InputFileError, PipelineError, TrainingError
from tasks.landing.ledger import ledger_rows
from tasks.outputs.promote import output_lock
from tests.conftest import HEADER, REPO, sales_rows

TABLES = OUTPUT_TABLES


@pytest.fixture
def trained(write_csv, tmp_path):
    """An output root holding one completed, promoted run."""
    data = write_csv("\n".join([HEADER, *sales_rows(200, seed=4)]) + "\n")
    output = tmp_path / "out"
    manifest = train_sales_model(data=str(data), output=str(output))
    return data, output, manifest


def snapshot(root, working_files=True):
    """Every file under an output root (the lock and the pass-1 cache aside: a failed run may
    leave sound entries of the files it parsed), with size and time; without the runs' working
    files (.staging/) when `working_files` is false."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
        and p.name != ".publish.lock"
        and ".cache" not in p.relative_to(root).parts
        and (working_files or ".staging" not in p.relative_to(root).parts)
    }


def run_ids_seen(root, table):
    """The run ids each reader sees in a table: pandas, pyarrow and DuckDB."""
    path = root / table
    by_pandas = set(pd.read_parquet(path)["run_id"].astype(str))
    by_arrow = set(
        ds.dataset(path, format="parquet", partitioning="hive").to_table()["run_id"].to_pylist()
    )
    by_duckdb = {
        r[0]
        for r in duckdb.sql(
            f"select distinct run_id from read_parquet('{path}/*/*.parquet', "
            "hive_partitioning=true)"
        ).fetchall()
    }
    return by_pandas, by_arrow, by_duckdb


def cli(args, api_url, **kwargs):
    """The command line against the server at `api_url` (None: a temporary server of its own)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    return subprocess.Popen(
        [sys.executable, "-m", "flows.train", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def big_csv(path, rows):
    """A sales CSV big enough that writing its predictions takes a while."""
    rng = np.random.default_rng(0)
    income = rng.uniform(10, 90, rows)
    price = 0.2 + 0.01 * income + rng.uniform(0, 0.3, rows)
    tax = price * rng.uniform(0.05, 0.25, rows)
    units = 9 + 0.1 * income - 3 * price - 8 * tax + rng.normal(0, 0.5, rows)
    frame = pd.DataFrame(
        {
            "country": [f"K{i:07d}" for i in range(rows)],
            "avg_income_k": income.round(3),
            "price_k": price.round(4),
            "tax_k": tax.round(4),
            "units_sold_k": units.round(3),
        }
    )
    frame.to_csv(path, index=False)
    return path


def predictions_being_written(root):
    """Staged predictions parts with bytes in them: pass 2 at work (they are moved into
    predictions/ only by the publish step)."""
    return [p for p in root.glob(".staging/*/predictions/*.parquet") if p.stat().st_size > 0]


def test_sigkill_during_a_runs_parquet_write_leaves_readers_and_champion_intact(
    trained, tmp_path, prefect_api_url
):
    _, output, first = trained
    champion = (output / "champion.json").read_text()
    manifests_before = sorted(p.name for p in (output / "manifests").iterdir())
    seen_before = {table: run_ids_seen(output, table) for table in TABLES}
    assert seen_before["predictions"] == ({first["run_id"]},) * 3
    data = big_csv(tmp_path / "big.csv", 400_000)
    proc = cli(["--data", str(data), "--output", str(output)], prefect_api_url)
    deadline = time.monotonic() + 180
    while not (parts := predictions_being_written(output)) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert parts, "the run was never caught writing its predictions"
    staging = parts[0].parents[1]
    assert staging.exists()  # killed mid-write: its working files are left behind

    assert {table: run_ids_seen(output, table) for table in TABLES} == seen_before
    assert sorted(p.name for p in (output / "manifests").iterdir()) == manifests_before
    assert (output / "champion.json").read_text() == champion

    second = train_sales_model(data=str(trained[0]), output=str(output))
    assert not staging.exists()  # swept by the next run
    assert not list(output.rglob(".*.tmp"))
    assert run_ids_seen(output, "predictions")[2] == {first["run_id"], second["run_id"]}


def _file_limit(limit):
    def apply():
        # The writer sees EFBIG ("File too large") instead of being killed by SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def output_sizes(root, run_id):
    """Sizes of a run's tables (Parquet) and of its report's files."""
    tables = [p.stat().st_size for p in root.glob(f"*/run_id={run_id}/*.parquet")]
    report = [p.stat().st_size for p in (root / "reports" / run_id).iterdir()]
    return max(tables), max(report)


@pytest.mark.parametrize("when", ["working files", "after the tables"])
def test_disk_full_while_writing_is_a_clear_error_and_changes_nothing(
    trained, write_csv, prefect_api_url, tmp_path, when
):
    _, output, _ = trained
    before = snapshot(output)
    big = write_csv("\n".join([HEADER, *sales_rows(3000, seed=8)]) + "\n", "big.csv")
    small = write_csv("\n".join([HEADER, *sales_rows(60, seed=8)]) + "\n", "small.csv")
    if when == "working files":
        # pass 2's staged predictions outgrow the limit: the run stops before publishing
        data, limit, failing = big, 48_000, ".staging"
    else:
        # The largest table fits, the report's plots do not: tables are written, then the
        # publish fails and must take them back.
        probe = train_sales_model(data=str(small), output=str(tmp_path / "probe"))
        largest_table, largest_report = output_sizes(tmp_path / "probe", probe["run_id"])
        data, limit, failing = small, largest_table + 1024, "reports"
        assert largest_report > limit + 1024
    proc = cli(
        ["--data", str(data), "--output", str(output)],
        prefect_api_url,
        preexec_fn=_file_limit(limit),
    )
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in stderr
    assert stderr.splitlines()[0].startswith("error:"), stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    if when == "working files":
        assert "could not write the run's working files (File too large)" in error
    else:
        assert "could not write (File too large); the previous contents are unchanged" in error
    assert f"{output}/{failing}/" in error
    assert snapshot(output) == before  # whatever the run had written is gone again
    assert not list(output.rglob(".*.tmp"))


class RenameFaults:
    """os.replace and os.rename (Path.replace, Path.rename and shutil.move go through them),
    counting the calls that move something into sight under an output root (not into its
    working files or the pass-1 cache) and failing the `fail_at`-th with ENOSPC."""

    def __init__(self, monkeypatch, root, fail_at=None):
        self.root, self.fail_at, self.calls = root.resolve(), fail_at, 0
        for name in ("replace", "rename"):
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, real):
        def move(src, dst, *args, **kwargs):
            if self._in_sight(dst):
                self.calls += 1
                if self.calls == self.fail_at:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
            return real(src, dst, *args, **kwargs)

        return move

    def _in_sight(self, path):
        path = Path(path).resolve()
        if not path.is_relative_to(self.root):
            return False
        return not {".staging", ".cache"} & set(path.relative_to(self.root).parts)


def digests(root, run_id):
    """sha256 of every file of one run (its tables' parts, manifest and report) and of the
    champion pointer."""
    files = [
        *root.glob(f"*/run_id={run_id}/*"),
        root / "manifests" / f"{run_id}.json",
        *(root / "reports" / run_id).iterdir(),
        root / "champion.json",
    ]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def parts_read(root, table, run_id):
    """How many Parquet files of a run DuckDB reads in a table."""
    ((count,),) = duckdb.sql(
        f"select count(distinct filename) from read_parquet('{root}/{table}/*/*.parquet', "
        f"hive_partitioning=true, filename=true) where run_id = '{run_id}'"
    ).fetchall()
    return count


def what_readers_see(root):
    """Per table, the run ids the analysts' readers see; the manifests; the report folders;
    the champion pointer."""
    return {
        "tables": {t: run_ids_seen(root, t) for t in TABLES if (root / t).exists()},
        "manifests": sorted(p.name for p in (root / "manifests").iterdir()),
        "reports": sorted(p.name for p in (root / "reports").iterdir()),
        "champion": (root / "champion.json").read_text(),
    }


def test_a_publish_failing_at_any_step_leaves_no_trace_of_the_run(
    trained, write_csv, tmp_path, monkeypatch
):
    _, output, first = trained
    # Three input files: at least three predictions parts, so a failure can fall between two.
    files = [
        str(
            write_csv(
                "\n".join([HEADER, *sales_rows(60, seed=20 + i, start=100 * i)]) + "\n",
                f"part{i}.csv",
            )
        )
        for i in range(3)
    ]
    run = {"data": files, "promotion_tolerance": 1e6}  # promoted: the champion moves too
    probe = tmp_path / "probe"
    shutil.copytree(output, probe)
    with monkeypatch.context() as patch:
        clean = RenameFaults(patch, probe)
        manifest = train_sales_model(output=str(probe), **run)
    assert manifest["promotion"]["promoted"]
    assert parts_read(probe, "predictions", manifest["run_id"]) >= 3
    assert clean.calls, "the publish moves nothing into place: inject its faults another way"

    before, earlier = what_readers_see(output), digests(output, first["run_id"])
    for fail_at in range(1, clean.calls + 1):
        with monkeypatch.context() as patch:
            RenameFaults(patch, output, fail_at)
            with pytest.raises(PipelineError) as failed:
                train_sales_model(output=str(output), **run)
        message = str(failed.value)
        assert "No space left on device" in message, fail_at
        assert "\n" not in message
        assert what_readers_see(output) == before, f"failure at move {fail_at}"
        assert digests(output, first["run_id"]) == earlier, f"failure at move {fail_at}"


def test_kill_during_training_publishes_nothing_and_the_next_run_succeeds(trained, prefect_api_url):
    data, output, _ = trained
    before = snapshot(output)
    proc = cli(
        [
            "--data",
            str(data),
            "--output",
            str(output),
            "--lr",
            "1e-7",
            "--max-epochs",
            "100000000",
            "--tol",
            "1e-15",
            "--verbose",
        ],
        prefect_api_url,
    )
    deadline = time.monotonic() + 120
    seen = ""
    while "epoch 0: train MSE" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert "epoch 0: train MSE" in seen
    time.sleep(1)  # well into the epochs
    proc.kill()
    proc.wait()
    assert snapshot(output, working_files=False) == before  # nothing published
    manifest = train_sales_model(data=str(data), output=str(output))
    assert manifest["status"] == "completed"
    assert not (output / ".staging").exists()  # the killed run's working files swept


def _read_lines(stream, into):
    for line in stream:
        into.append(line)


def test_two_runs_at_once_wait_for_the_publish_lock_and_both_publish(trained, prefect_api_url):
    data, output, _ = trained
    # On one server the training slot runs trainings one at a time; the publish lock is what
    # keeps apart runs of different servers sharing an output folder: one on the session's
    # server, one on a temporary server of its own. This test holds the lock, so both runs must
    # reach the publish step and wait there.
    with output_lock(output, timeout_seconds=5):
        procs = [
            cli(["--data", str(data), "--output", str(output), "--seed", str(seed)], api_url)
            for seed, api_url in ((11, prefect_api_url), (12, None))
        ]
        stderr = [[], []]
        readers = [
            threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True)
            for proc, lines in zip(procs, stderr, strict=True)
        ]
        for reader in readers:
            reader.start()
        waiting = f"waiting for the publish lock on {output}: another run (pid {os.getpid()})"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not all(
            any(waiting in line for line in lines) for lines in stderr
        ):
            assert all(proc.poll() is None for proc in procs), stderr
            time.sleep(0.1)
        assert all(any(waiting in line for line in lines) for lines in stderr), stderr
        time.sleep(1)
        assert len(list((output / "manifests").glob("*.json"))) == 1  # nothing published yet
    for proc, reader in zip(procs, readers, strict=True):
        assert proc.wait(timeout=300) == 0, stderr
        reader.join(timeout=10)
    manifests = {p.stem: json.loads(p.read_text()) for p in (output / "manifests").glob("*.json")}
    assert len(manifests) == 3
    assert all(m["status"] == "completed" for m in manifests.values())
    champion = json.loads((output / "champion.json").read_text())
    assert champion["run_id"] in manifests
    assert (output / "weights" / f"run_id={champion['run_id']}" / "part-0.parquet").exists()
    counts = dict(
        duckdb.sql(
            f"select run_id, count(*) from read_parquet('{output}/predictions/*/*.parquet', "
            "hive_partitioning=true) group by run_id"
        ).fetchall()
    )
    assert counts == {run_id: m["rows"]["accepted"] for run_id, m in manifests.items()}


def test_failed_training_fails_the_watch_flow_and_is_recorded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the dataset's base file is data/sales.csv
    landing = tmp_path / "landing"
    landing.mkdir()
    # Base data with a third of its rows bad: the training run on the dataset fails its check.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sales.csv").write_text(
        "\n".join([HEADER, *sales_rows(20), *[f"X{i},x,1,1,1" for i in range(10)]])
    )
    (landing / "new.csv").write_text("\n".join([HEADER, *sales_rows(10, seed=3, start=50)]))
    old = time.time() - 60
    os.utime(landing / "new.csv", (old, old))
    state = watch_landing(
        landing=str(landing),
        ledger=str(tmp_path / "ledger"),
        output=str(tmp_path / "out"),
        return_state=True,
    )
    assert state.is_failed()
    (row,) = ledger_rows(tmp_path / "ledger")
    assert (row["status"], row["run_status"]) == ("accepted", "failed")


def test_one_failed_file_task_fails_the_whole_run(write_csv, tmp_path):
    good = write_csv("\n".join([HEADER, *sales_rows(50)]) + "\n", "good.csv")
    broken = write_csv("country;price_k\nA;1\n", "broken.csv")
    output = tmp_path / "out"
    state = train_sales_model(data=[str(good), str(broken)], output=str(output), return_state=True)
    assert state.is_failed()
    with pytest.raises(InputFileError, match=r"broken\.csv: header does not match"):
        state.result()
    assert not output.exists()


def test_float32_overflow_never_publishes_nan_weights(write_csv, tmp_path):
    rng = np.random.default_rng(0)
    gdp = rng.uniform(1e29, 1e30, 60)  # a column outside the contract: no range check
    units = rng.uniform(1, 10, 60)
    lines = [f"C{i},{g:.6e},{u:.3f}" for i, (g, u) in enumerate(zip(gdp, units, strict=True))]
    path = write_csv("\n".join(["country,gdp,units_sold_k", *lines]) + "\n")
    output = tmp_path / "out"
    manifest = train_sales_model(
        data=str(path), output=str(output), features=["gdp"], targets=["units_sold_k"]
    )
    weights = pd.read_parquet(output / "weights")
    assert np.isfinite(weights["weight"]).all()
    assert manifest["status"] == "completed"

    # A target that overflows float32 when squared: training fails, nothing is published.
    huge = [f"C{i},{u:.3f},{g:.6e}" for i, (g, u) in enumerate(zip(gdp, units, strict=True))]
    path = write_csv("\n".join(["country,units_sold_k,revenue", *huge]) + "\n", "huge.csv")
    with pytest.raises(TrainingError, match="diverged"):
        train_sales_model(
            data=str(path), output=str(output), features=["units_sold_k"], targets=["revenue"]
        )
    assert set(pd.read_parquet(output / "weights")["run_id"].astype(str)) == {manifest["run_id"]}
