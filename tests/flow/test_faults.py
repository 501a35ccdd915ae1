"""Faults: a publish failing at each of its commits, a run killed between two commits or while it
trains, a full disk, two runs committing at once, a damaged Delta log, failed tasks, float32
overflow. Readers that go through `runs` see a run whole or not at all; earlier runs' rows and
the champion are never touched; the next run succeeds."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pytest

from flows.train import train_sales_model
from flows.watch import watch_landing
from schemas.outputs import RUNS
from schemas.outputs import TABLES as RUN_TABLES
from tasks.common.errors import InputFileError, PipelineError, TrainingError
from tasks.common.storage import format_run_id
from tasks.landing.ledger import ledger_rows
from tasks.outputs import tables
from tasks.outputs.maintenance import ALL_TABLES
from tasks.outputs.retention import ORPHAN_AFTER_SECONDS
from tests.conftest import HEADER, REPO, read_table, sales_rows
from tests.flow.hooked_train import HOOK

RUN_ID = re.compile(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}")


@pytest.fixture
def trained(write_csv, tmp_path):
    """An output root holding one committed, promoted run."""
    data = write_csv("\n".join([HEADER, *sales_rows(200, seed=4)]) + "\n")
    output = tmp_path / "out"
    manifest = train_sales_model(data=str(data), output=str(output))
    return data, output, manifest


@pytest.fixture(scope="module")
def migrated_home(tmp_path_factory):
    """A PREFECT_HOME whose database is created and migrated, to copy from."""
    home = tmp_path_factory.mktemp("prefect-home")
    subprocess.run(
        [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
        env={**os.environ, "PREFECT_HOME": str(home)},
        check=True,
        capture_output=True,
    )
    return home


@pytest.fixture
def server_home(migrated_home, tmp_path):
    """PREFECT_HOME of a temporary Prefect server for a process the test kills: its training
    slot is not the session server's, which a killed run holds until its lease runs out (a
    temporary server never takes it back, so each test gets a database of its own)."""
    home = tmp_path / "prefect-home"
    shutil.copytree(migrated_home, home)
    return home


def committed(root):
    """The runs committed under `root`: those with a row of `runs`."""
    return tables.run_ids(root, RUNS)


def seen_through_runs(root, table):
    """The runs an analyst sees in `table` when joining it with `runs` (DuckDB on the tables'
    committed files, as docs/analysts.md reads them)."""
    files = {name: tables.committed_files(root, name) for name in (table, RUNS)}
    return {
        run_id
        for (run_id,) in duckdb.sql(
            f"SELECT DISTINCT t.run_id FROM read_parquet({files[table]!r}, hive_partitioning = "
            f"true, union_by_name = true, hive_types = {{'run_id': VARCHAR}}) t JOIN "
            f"read_parquet({files[RUNS]!r}, hive_partitioning = true, "
            "hive_types = {'run_id': VARCHAR}) r USING (run_id)"
        ).fetchall()
    }


def seen(root):
    """Per table of a training run, the runs seen through `runs`."""
    return {table: seen_through_runs(root, table) for table in RUN_TABLES}


def table_rows(root, runs=None):
    """Every table's rows (of `runs` only, if given) as sorted text."""
    found = {}
    for table in ALL_TABLES:
        if tables.version_of(root, table) is not None:
            rows = tables.read(root, table).to_pylist()
            found[table] = sorted(repr(r) for r in rows if runs is None or r["run_id"] in runs)
    return found


def contents(root):
    """What readers see: every table's rows, the champion, and the readable copies."""
    return {
        **table_rows(root),
        "champion": tables.current_champion(root)[1],
        "champion.json": (root / "champion.json").read_text(),
        "manifests": sorted(p.name for p in (root / "manifests").iterdir()),
        "reports": sorted(p.name for p in (root / "reports").iterdir()),
    }


def in_tables(root, run_id):
    """The tables holding rows of `run_id` (committed or not)."""
    return {table: run_id in tables.run_ids(root, table) for table in ALL_TABLES}


def cli(args, api_url, hook=None, server_home=None, extra_env=None, **kwargs):
    """The command line (tests/flow/hooked_train.py with a `hook`) against the server at
    `api_url`, or, with None, a temporary server of its own under `server_home`; `extra_env`
    over this process's environment. The process leads a process group of its own (its
    temporary server is in it)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | (extra_env or {})
    if api_url is not None:
        env["PREFECT_API_URL"] = api_url
    if server_home is not None:
        env["PREFECT_HOME"] = str(server_home)
    module = "flows.train"
    if hook is not None:
        env[HOOK] = json.dumps(hook)
        module = "tests.flow.hooked_train"
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def finish(proc, timeout=300):
    """Wait for a `cli` process, SIGKILL what is left of its group (a temporary Prefect server
    holds the pipes open), and return its stderr."""
    try:
        proc.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate()[1]


def one_error_line(stderr):
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


class CommitFaults:
    """tables.append, tables.commit_parts and tables.swap_champion, counted in the order the
    publish calls them (`calls`: "append weights", ...); the `fail_at`-th fails with ENOSPC."""

    STEPS = ("append", "commit_parts", "swap_champion")

    def __init__(self, monkeypatch, fail_at=None):
        self.fail_at, self.calls = fail_at, []
        for name in self.STEPS:
            monkeypatch.setattr(tables, name, self._wrap(name, getattr(tables, name)))

    def _wrap(self, name, real):
        def step(root, *args, **kwargs):
            table = tables.CHAMPIONS if name == "swap_champion" else args[0]
            self.calls.append(f"{name} {table}")
            if len(self.calls) == self.fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(root, *args, **kwargs)

        return step


def test_a_publish_failing_at_any_commit_leaves_no_trace_of_the_run(
    trained, write_csv, tmp_path, monkeypatch
):
    _, output, first = trained
    data = write_csv("\n".join([HEADER, *sales_rows(60, seed=20)]) + "\n", "more.csv")
    run = {"data": str(data), "promotion_tolerance": 1e6}  # promoted: the champion moves too
    probe = tmp_path / "probe"
    shutil.copytree(output, probe)
    with monkeypatch.context() as patch:
        clean = CommitFaults(patch)
        manifest = train_sales_model(output=str(probe), **run)
    assert manifest["promotion"]["promoted"]
    assert "swap_champion champions" in clean.calls
    assert clean.calls[-1] == f"append {RUNS}"  # the run's commit comes last

    before, seen_before = contents(output), seen(output)
    for fail_at, step in enumerate(clean.calls, 1):
        with monkeypatch.context() as patch:
            CommitFaults(patch, fail_at)
            with pytest.raises(PipelineError) as failed:
                train_sales_model(output=str(output), **run)
        message = str(failed.value)
        assert "No space left on device" in message, step
        assert "\n" not in message
        (run_id,) = set(RUN_ID.findall(message))
        assert committed(output) == {first["run_id"]}, step
        assert seen(output) == seen_before, step
        assert not any(in_tables(output, run_id).values()), step  # taken back
        assert contents(output) == before, step


def test_a_run_killed_between_two_commits_stays_invisible_and_is_swept_once_dead(
    trained, tmp_path, prefect_api_url, server_home
):
    data, output, first = trained
    before, seen_before = table_rows(output), seen(output)
    # Killed right after its predictions are committed: before the champion and its runs row.
    proc = cli(
        ["--data", str(data), "--output", str(output)],
        None,
        hook={"kill_after": ["commit_parts", 2]},
        server_home=server_home,
    )
    finish(proc)
    assert proc.returncode == -signal.SIGKILL
    (killed,) = tables.run_ids(output, "predictions") - {first["run_id"]}
    assert all(in_tables(output, killed)[t] for t in RUN_TABLES)  # every table but runs has it
    assert committed(output) == {first["run_id"]}
    assert seen(output) == seen_before
    assert table_rows(output, {first["run_id"]}) == before

    # A run that died long ago left rows too: older than any run can live, it is swept. (Its
    # id is made by hand: this process's run clock never goes back.)
    long_ago = datetime.now(UTC) - timedelta(seconds=ORPHAN_AFTER_SECONDS + 600)
    dead = format_run_id(long_ago, "0dead0ff")
    for table in ("weights", "predictions"):
        rows = tables.read(output, table, filters=[("run_id", "=", first["run_id"])])
        tables.append(output, table, rows.drop_columns(["run_id"]), dead)

    second = train_sales_model(data=str(data), output=str(output))
    assert second["status"] == "completed"
    assert committed(output) == {first["run_id"], second["run_id"]}
    assert not any(in_tables(output, dead).values())
    # The killed run may still be alive for all the next run knows: kept, and still invisible.
    assert in_tables(output, killed)["predictions"]
    assert seen_through_runs(output, "predictions") == {first["run_id"], second["run_id"]}
    assert table_rows(output, {first["run_id"]}) == before


def test_kill_during_training_commits_nothing_and_the_next_run_succeeds(trained, server_home):
    data, output, first = trained
    before = contents(output)
    proc = cli(
        [
            *("--data", str(data), "--output", str(output)),
            *("--lr", "1e-7", "--max-epochs", "100000000", "--tol", "1e-15", "--verbose"),
        ],
        None,
        server_home=server_home,
    )
    deadline = time.monotonic() + 180
    seen = ""
    while "epoch 0: train MSE" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    assert "epoch 0: train MSE" in seen  # training, for a hundred million epochs
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    assert contents(output) == before
    assert all(tables.run_ids(output, t) == {first["run_id"]} for t in RUN_TABLES)
    manifest = train_sales_model(data=str(data), output=str(output))
    assert manifest["status"] == "completed"
    assert committed(output) == {first["run_id"], manifest["run_id"]}


def _file_limit(limit):
    def apply():
        # The writer sees EFBIG ("File too large") instead of being killed by SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def sizes(root, run_id):
    """Sizes of the files a run writes before its first commit (its predictions parts and the
    pass-1 cache), of its weights (the first table committed), of every table's files but
    runs' (all committed before the report) and of its report's files."""
    of = lambda paths: [p.stat().st_size for p in paths]  # noqa: E731
    tables_before_report = [
        p for p in root.glob(f"*/run_id={run_id}/*.parquet") if p.parts[-3] != RUNS
    ] + list((root / tables.CHAMPIONS).glob("*.parquet"))
    return {
        "before the commit": max(
            of([*root.glob(f"predictions/run_id={run_id}/*"), *root.glob(".cache/**/*.*")])
        ),
        "weights": max(of(root.glob(f"weights/run_id={run_id}/*.parquet"))),
        "tables": max(of(tables_before_report)),
        "report": max(of((root / "reports" / run_id).iterdir())),
    }


@pytest.mark.parametrize("when", ["in a table commit", "after the tables"])
def test_disk_full_while_committing_is_one_error_line_and_changes_nothing(
    trained, write_csv, prefect_api_url, tmp_path, when
):
    _, output, first = trained
    small = write_csv("\n".join([HEADER, *sales_rows(60, seed=8)]) + "\n", "small.csv")
    args = ["--data", str(small), "--promotion-tolerance", "1e6"]
    probe = train_sales_model(data=str(small), output=str(tmp_path / "probe"))
    size = sizes(tmp_path / "probe", probe["run_id"])
    if when == "in a table commit":
        # Pass 2's parts and the cache fit; the weights, the first table committed, do not.
        assert size["before the commit"] + 256 < size["weights"], size
        limit, failing = size["weights"] - 128, "could not commit run"
    else:
        # Every table fits and the champion moves; the report's plots do not: the publish must
        # take all of that back.
        limit, failing = size["tables"] + 1024, f"{output}/reports/"
        assert size["report"] > limit + 1024, size
    before = contents(output)
    proc = cli([*args, "--output", str(output)], prefect_api_url, preexec_fn=_file_limit(limit))
    stderr = finish(proc)
    assert proc.returncode == 1, stderr
    error = one_error_line(stderr)
    assert "File too large" in error
    assert failing in error
    assert contents(output) == before
    assert committed(output) == {first["run_id"]}


def test_two_runs_committing_at_once_both_land_and_make_one_champion_each(
    trained, prefect_api_url, server_home, tmp_path
):
    data, output, first = trained
    before = table_rows(output)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    # One on the session's server, one on a server of its own: each holds its server's training
    # slot, and both wait at their first commit until the other is there too. Both are judged
    # against the first run; whichever crowns second must decide again. Other holdout splits
    # make other models (the first run's own model again would not replace it).
    args = ["--data", str(data), "--output", str(output), "--promotion-tolerance", "1e6"]
    procs = [
        cli(
            [*args, "--holdout-fraction", fraction],
            api_url,
            hook={"meet": [str(meeting), 2]},
            server_home=home,
        )
        for fraction, api_url, home in (("0.25", prefect_api_url, None), ("0.3", None, server_home))
    ]
    for proc in procs:
        stderr = finish(proc, timeout=600)
        assert proc.returncode == 0, stderr

    new = committed(output) - {first["run_id"]}
    assert len(new) == 2
    for table in RUN_TABLES:
        assert new <= tables.run_ids(output, table), table
        if table != "quarantine":  # no rows: the data is clean
            assert seen_through_runs(output, table) == {first["run_id"], *new}, table
    runs = read_table(output, RUNS).set_index("run_id")
    predictions = read_table(output, "predictions")["run_id"].value_counts()
    for run_id in new:
        assert predictions[run_id] == runs.loc[run_id, "rows_accepted"]
    assert table_rows(output, {first["run_id"]}) == before

    # One promotion per decision: consecutive versions, each replacing the one before it.
    history = read_table(output, tables.CHAMPIONS).sort_values("version")
    assert history["version"].tolist() == [0, 1, 2]
    assert history["run_id"].iloc[0] == first["run_id"]
    assert set(history["run_id"].iloc[1:]) == new
    assert history["previous"].tolist()[1:] == history["run_id"].tolist()[:-1]
    for row in history.iloc[1:].itertuples():
        assert runs.loc[row.run_id, "promoted"]
        assert runs.loc[row.run_id, "champion_before"] == row.previous  # the champion it beat
    champion = json.loads((output / "champion.json").read_text())
    assert champion["run_id"] == history["run_id"].iloc[-1]


def test_a_damaged_log_entry_is_one_error_line_naming_the_table_and_loses_nothing_else(
    trained, prefect_api_url
):
    data, output, first = trained
    before = contents(output)
    log = output / "weights" / "_delta_log"
    newest = max(log.glob("*.json"))
    text = newest.read_bytes()
    newest.write_bytes(text[: len(text) // 2])
    proc = cli(["--data", str(data), "--output", str(output)], prefect_api_url)
    stderr = finish(proc)
    assert proc.returncode == 1, stderr
    error = one_error_line(stderr)
    assert f"{output}/weights: the Delta log is damaged (_delta_log/{newest.name} " in error
    assert "the other tables are not affected" in error
    newest.write_bytes(text)  # restored from a backup
    assert contents(output) == before
    assert committed(output) == {first["run_id"]}


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
    weights = read_table(output, "weights")
    assert np.isfinite(weights["weight"]).all()
    assert manifest["status"] == "completed"

    # A target that overflows float32 when squared, trained in float32: training fails,
    # nothing is published.
    huge = [f"C{i},{u:.3f},{g:.6e}" for i, (g, u) in enumerate(zip(gdp, units, strict=True))]
    path = write_csv("\n".join(["country,units_sold_k,revenue", *huge]) + "\n", "huge.csv")
    with pytest.raises(TrainingError, match="diverged"):
        train_sales_model(
            data=str(path), output=str(output), features=["units_sold_k"], targets=["revenue"],
            dtype="float32",
        )  # fmt: skip
    assert set(read_table(output, "weights")["run_id"]) == {manifest["run_id"]}
    assert committed(output) == {manifest["run_id"]}
