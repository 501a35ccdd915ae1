"""Faults of an object store under a training run (`python -m flows.train` processes writing to
`s3://bucket/model`, the inputs local CSV files): the store stops answering mid-publish (a proxy
in front of the S3 server cut, then restored: moto keeps its state in memory, so a killed server
would come back empty); the store answers 503 SlowDown, now and then (retried) or always (one
error line naming the URI); two machines train into the same root at once (both runs whole, one
promotion per decision)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import duckdb
import pytest
from deltalake import DeltaTable

from schemas.outputs import RUNS
from schemas.outputs import TABLES as RUN_TABLES
from scripts import s3_server as s3_server_script
from tasks.outputs import tables
from tests.conftest import HEADER, sales_rows

# The fault tests' temporary Prefect server (server_home) for the second machine.
from tests.flow.test_faults import (  # noqa: F401
    cli,
    finish,
    migrated_home,
    one_error_line,
    server_home,
)
from tests.s3 import CuttableProxy, FaultProxy, Faults

# How long the store layer and delta-rs retry a request in these tests' processes.
RETRY_SECONDS = "1"
WAIT_SECONDS = 300  # for a hooked process to reach its pause (not a timing assertion: a hang guard)


def train_process(args, env, api_url, hook=None, prefect_home=None):
    """`python -m flows.train` (tests/flow/hooked_train.py with a `hook`) in a process group of
    its own, with `env` over this process's environment, against the Prefect server at
    `api_url` (None: a temporary one of its own under `prefect_home`)."""
    return cli(args, api_url, hook=hook, server_home=prefect_home, extra_env=env)


def machine(tmp_path, name, endpoint, root):
    """The environment of one machine: the AWS one for `endpoint`, the output root allowed, and
    its own HOME, TMPDIR and worker folder (no local state shared with another)."""
    home = tmp_path / name
    for folder in ("home", "tmp", "worker"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    return {
        **s3_server_script.environment(endpoint),
        "HOME": str(home / "home"),
        "TMPDIR": str(home / "tmp"),
        "SALES_MODEL_CACHE_DIR": str(home / "worker"),
        "SALES_MODEL_OUTPUT_ROOTS": root,
        "SALES_MODEL_STORE_RETRY_SECONDS": RETRY_SECONDS,
    }


def clean_runs(runs):
    """What `Reader.seen` finds after runs of clean data only: `runs` in every table but the
    quarantine, which has no rows."""
    return {table: set() if table == "quarantine" else set(runs) for table in RUN_TABLES}


def wait_for(path, proc):
    """Wait until the hooked process `proc` creates `path` (its pause)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not path.exists():
        assert proc.poll() is None, finish(proc)
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


class Reader:
    """An analyst reading the output root straight from the S3 server (not through a proxy)."""

    def __init__(self, endpoint, root):
        self.root = root
        self.options = {**s3_server_script.environment(endpoint), "conditional_put": "etag"}

    def exists(self, table):
        return tables.version_of(self.root, table, storage_options=self.options) is not None

    def frame(self, table):
        uri = tables.table_uri(self.root, table)
        return DeltaTable(uri, storage_options=self.options).to_pandas()

    def rows(self, table):
        """`table`'s rows (nulls stay None)."""
        uri = tables.table_uri(self.root, table)
        return DeltaTable(uri, storage_options=self.options).to_pyarrow_table().to_pylist()

    def history(self):
        """The promotions, oldest first."""
        return sorted(self.rows(tables.CHAMPIONS), key=lambda row: row["version"])

    def run_ids(self, table):
        if not self.exists(table):
            return set()
        return tables.run_ids(self.root, table, storage_options=self.options)

    def committed(self):
        """The runs with a row of `runs`."""
        return self.run_ids(RUNS)

    def seen(self):
        """Per table of a training run, the runs an analyst sees joining it with `runs` (DuckDB
        on the tables' Arrow datasets, as docs/analysts.md reads them)."""
        con, found = duckdb.connect(), {}
        for table in (RUNS, *RUN_TABLES):
            if self.exists(table):
                uri = tables.table_uri(self.root, table)
                dataset = DeltaTable(uri, storage_options=self.options).to_pyarrow_dataset()
                con.register(table, dataset)
        for table in RUN_TABLES:
            query = f"SELECT DISTINCT run_id FROM {table} JOIN {RUNS} USING (run_id)"
            rows = con.sql(query).fetchall() if self.exists(table) else []
            found[table] = {run_id for (run_id,) in rows}
        return found

    def champion(self):
        """The current champion as analysts find it: the newest promotion of a committed run."""
        promotions = self.frame(tables.CHAMPIONS)
        promotions = promotions[promotions["run_id"].isin(self.committed())]
        return promotions.sort_values("version")["run_id"].iloc[-1]


@pytest.fixture
def dedicated_server(tmp_path):
    """An S3 server of this test's own (the session's is not disturbed): its endpoint."""
    process, endpoint = s3_server_script.start(tmp_path / "moto.log")
    try:
        yield endpoint
    finally:
        s3_server_script.stop(process)


@pytest.fixture
def sales(write_csv):
    return write_csv("\n".join([HEADER, *sales_rows(120, seed=4)]) + "\n")


def train(args, env, api_url, **kwargs):
    """A training process run to its end: (exit code, stderr)."""
    proc = train_process(args, env, api_url, **kwargs)
    stderr = finish(proc)
    return proc.returncode, stderr


def test_a_store_that_stops_answering_mid_publish_shows_no_partial_run_and_the_next_run_succeeds(
    dedicated_server, sales, tmp_path, prefect_api_url
):
    root = s3_server_script.create_bucket(dedicated_server, "faults") + "/model"
    proxy = CuttableProxy(dedicated_server)
    env = machine(tmp_path, "worker", proxy.endpoint, root)
    reader = Reader(dedicated_server, root)
    args = ["--data", str(sales), "--output", root, "--promotion-tolerance", "1e6"]
    code, stderr = train(args, env, prefect_api_url)
    assert code == 0, stderr
    (first,) = reader.committed()
    seen_before = reader.seen()

    # Paused once its predictions are committed (every table but `runs` has its rows, the
    # champion is not judged yet); the store stops answering; it goes on.
    pause = tmp_path / "pause"
    pause.mkdir()
    hook = {"pause_after": ["commit_parts", 2, str(pause)]}
    proc = train_process(args, env, prefect_api_url, hook=hook)
    wait_for(pause / "paused", proc)
    proxy.cut()
    (pause / "resume").touch()
    stderr = finish(proc)
    assert proc.returncode == 1, stderr
    line = one_error_line(stderr)
    assert line.startswith(f"error: {root}"), line
    assert stderr.strip().splitlines()[-1] == line  # the error is one line, nothing after it

    proxy.restore()
    # Its rows stay (its undo could not reach the store either), invisible to readers.
    (partial,) = reader.run_ids("predictions") - {first}
    assert all(partial in reader.run_ids(table) for table in ("weights", "metrics", "profile"))
    assert reader.committed() == {first}
    assert reader.seen() == seen_before == clean_runs({first})
    assert reader.frame(tables.CHAMPIONS)["run_id"].tolist() == [first]

    # another split, another model (the champion's own model again would not replace it)
    code, stderr = train([*args, "--holdout-fraction", "0.3"], env, prefect_api_url)
    assert code == 0, stderr
    (second,) = reader.committed() - {first}
    runs = reader.frame(RUNS).set_index("run_id")
    assert runs.loc[second, "promoted"]
    assert runs.loc[second, "champion_before"] == first  # judged against the champion as usual
    assert reader.champion() == second
    assert [row["previous"] for row in reader.history()] == [None, first]
    assert reader.seen() == clean_runs({first, second})
    predictions = reader.frame("predictions")["run_id"].value_counts()
    assert predictions[second] == predictions[first] == runs.loc[second, "rows_accepted"]


@pytest.fixture
def faulty(s3_server, s3_bucket, tmp_path):
    """A proxy answering 503 SlowDown as its `faults` say, in front of the session's server;
    (proxy, the output root in a fresh bucket, the environment of a worker using the proxy)."""
    root = f"{s3_bucket}/model"
    proxy = FaultProxy(s3_server.endpoint, Faults())
    try:
        yield proxy, root, machine(tmp_path, "worker", proxy.endpoint, root)
    finally:
        proxy.close()


def test_transient_503s_are_retried_and_the_run_reads_back_whole(
    faulty, s3_server, sales, prefect_api_url
):
    proxy, root, env = faulty
    proxy.faults.every = 2  # every other request is answered 503 once, then served
    code, stderr = train(["--data", str(sales), "--output", root], env, prefect_api_url)
    assert code == 0, stderr
    assert proxy.faults.answered_503 > 10
    reader = Reader(s3_server.endpoint, root)
    (run_id,) = reader.committed()
    assert reader.seen() == clean_runs({run_id})
    runs = reader.frame(RUNS).set_index("run_id")
    assert runs.loc[run_id, "rows_in"] == runs.loc[run_id, "rows_accepted"] == 120
    assert len(reader.frame("predictions")) == 120
    assert reader.champion() == run_id


# Where the store starts answering 503 to every request: before the run starts, when the run
# reads the champion to judge its model (delta-rs reads), after its predictions are committed.
PAUSES = {
    "from the start": None,
    "judging the model": {"pause_before": ["current_champion", 1]},
    "mid-publish": {"pause_after": ["commit_parts", 2]},
}


@pytest.mark.parametrize("when", PAUSES)
def test_permanent_503s_are_one_error_line_naming_the_uri_and_nothing_is_committed(
    faulty, s3_server, sales, tmp_path, prefect_api_url, when
):
    proxy, root, env = faulty
    args = ["--data", str(sales), "--output", root]
    if PAUSES[when] is None:
        proxy.faults.always = True
        code, stderr = train(args, env, prefect_api_url)
    else:
        pause = tmp_path / "pause"
        pause.mkdir()
        hook = {name: [*at, str(pause)] for name, at in PAUSES[when].items()}
        proc = train_process(args, env, prefect_api_url, hook=hook)
        wait_for(pause / "paused", proc)
        proxy.faults.always = True
        (pause / "resume").touch()
        stderr = finish(proc)
        code = proc.returncode
    assert code == 1, stderr
    line = one_error_line(stderr)
    assert line.startswith(f"error: {root}"), line
    assert "the object store answered 503 Service Unavailable" in line
    assert stderr.strip().splitlines()[-1] == line
    reader = Reader(s3_server.endpoint, root)
    assert reader.committed() == set()
    assert not reader.exists(tables.CHAMPIONS)


@pytest.mark.parametrize("champion", ["none yet", "one"])
def test_two_machines_training_at_once_both_commit_whole_with_one_promotion_per_decision(
    s3_server,
    s3_bucket,
    sales,
    tmp_path,
    prefect_api_url,
    server_home,  # noqa: F811
    champion,
):
    root = f"{s3_bucket}/model"
    reader = Reader(s3_server.endpoint, root)
    machines = [machine(tmp_path, name, s3_server.endpoint, root) for name in ("a", "b")]
    args = ["--output", root, "--promotion-tolerance", "1e6"]
    before = set()
    if champion == "one":
        code, stderr = train([*args, "--data", str(sales)], machines[0], prefect_api_url)
        assert code == 0, stderr
        before = reader.committed()
    # Each machine has its copy of the input and a Prefect server of its own (its training slot);
    # both wait at their first commit until the other is there too.
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    procs = []
    # other holdout splits than the champion's: other models (its own again would not win)
    for fraction, env, api_url, home in (
        ("0.25", machines[0], prefect_api_url, None),
        ("0.3", machines[1], None, server_home),
    ):
        data = Path(env["HOME"]) / "sales.csv"
        shutil.copy(sales, data)
        run = [*args, "--data", str(data), "--holdout-fraction", fraction]
        hook = {"meet": [str(meeting), 2]}
        procs.append(train_process(run, env, api_url, hook=hook, prefect_home=home))
    for proc in procs:
        stderr = finish(proc, timeout=600)
        assert proc.returncode == 0, stderr

    new = reader.committed() - before
    assert len(new) == 2
    assert reader.seen() == clean_runs(before | new)
    accepted = {row["run_id"]: row["rows_accepted"] for row in reader.rows(RUNS)}
    predictions = reader.frame("predictions")["run_id"].value_counts()
    weights = reader.frame("weights")["run_id"].value_counts()
    for run_id in new:
        assert predictions[run_id] == accepted[run_id] == 120
        assert weights[run_id] == weights.iloc[0]

    # One promotion per decision: consecutive versions, each replacing the one before it; the
    # run crowned second decided again, against the one crowned first.
    history, runs = reader.history(), {row["run_id"]: row for row in reader.rows(RUNS)}
    promoted = [row["run_id"] for row in history]
    assert [row["version"] for row in history] == list(range(len(before) + 2))
    assert sorted(promoted) == sorted(before | new)
    assert [row["previous"] for row in history] == [None, *promoted[:-1]]
    for row in history:
        assert runs[row["run_id"]]["promoted"]
        assert runs[row["run_id"]]["champion_before"] == row["previous"]  # the champion it beat
    assert reader.champion() == promoted[-1]
