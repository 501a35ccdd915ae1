"""Retention and earlier releases, through real runs: runs keep the predictions, quarantine and
scores of the last N runs (and the champion's) and every run's weights, metrics, profile and
`runs` row; an output root of an earlier release is refused in one line naming `make migrate`,
and runs once migrated."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from flows.score import score_sales
from flows.train import train_sales_model
from schemas.outputs import RUNS
from tasks.outputs import tables
from tasks.outputs.maintenance import LEGACY_TABLES, migrate_outputs, vacuum_outputs
from tests.conftest import HEADER, REPO, sales_rows


@pytest.fixture
def data(write_csv):
    return write_csv("\n".join([HEADER, *sales_rows(200, seed=4)]) + "\n")


def cli(module, *args, api_url):
    """`python -m <module> ARGS` against the session's server; (exit code, stdout, stderr)."""
    env = {**os.environ, "PREFECT_API_URL": api_url}
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_four_runs_keeping_two_leave_two_runs_predictions_and_the_champions(
    data, tmp_path, prefect_api_url
):
    output = tmp_path / "out"
    champion = train_sales_model(data=str(data), output=str(output), keep_runs=2)
    # Three runs the gate refuses (not converged): the champion becomes the oldest run.
    runs = [champion["run_id"]]
    for _ in range(2):
        manifest = train_sales_model(
            data=str(data), output=str(output), keep_runs=2, max_epochs=1, lr=1e-3
        )
        runs.append(manifest["run_id"])
    code, _, stderr = cli(
        "flows.train",
        *("--data", str(data), "--output", str(output), "--keep-runs", "2"),
        *("--max-epochs", "1", "--lr", "1e-3"),
        api_url=prefect_api_url,
    )
    assert code == 0, stderr
    (last,) = tables.run_ids(output, RUNS) - set(runs)
    runs.append(last)

    assert tables.current_champion(output)[1]["run_id"] == runs[0]
    for table in ("predictions", "quarantine"):
        assert tables.run_ids(output, table) == {runs[0], runs[2], runs[3]}, table
    for table in ("weights", "metrics", "profile", RUNS):
        assert tables.run_ids(output, table) == set(runs), table
    # Time travel: the first run's weights as they were committed.
    first = tables.read(output, "weights", version=0)
    assert set(first.column("run_id").to_pylist()) == {runs[0]}
    # The pruned run's files stay for readers in flight until the window has passed.
    pruned = list((output / "predictions" / f"run_id={runs[1]}").glob("*.parquet"))
    assert pruned

    vacuum_outputs(output, hours=0)
    assert not any(path.exists() for path in pruned)
    kept = tables.read(output, "predictions").column("run_id").to_pylist()
    assert set(kept) == {runs[0], runs[2], runs[3]}
    assert tables.read(output, "weights", version=0).equals(first)


def test_scoring_runs_keep_their_last_n_scores(data, write_csv, tmp_path):
    output = tmp_path / "out"
    trained = train_sales_model(data=str(data), output=str(output))
    features = [",".join(line.split(",")[:4]) for line in sales_rows(30, seed=9)]
    rows = write_csv("\n".join(["country,avg_income_k,price_k,tax_k", *features]) + "\n", "x.csv")
    scored = [
        score_sales(data=str(rows), output=str(output), keep_runs=2)["run_id"] for _ in range(3)
    ]
    for table in ("scores", "score_quarantine"):
        assert tables.run_ids(output, table) == set(scored[1:]), table
    assert tables.run_ids(output, RUNS) == {trained["run_id"], *scored}
    assert tables.run_ids(output, "predictions") == {trained["run_id"]}


def earlier_release_of(source, run_id, target, old_ids):
    """`target` as an earlier release would have left it with runs `old_ids` (the first the
    champion), each holding run `run_id`'s rows of `source`: Hive folders
    `<table>/run_id=<id>/part-0.parquet` and manifests."""
    for table in LEGACY_TABLES:
        if tables.version_of(source, table) is None:
            continue
        rows = tables.read(source, table, filters=[("run_id", "=", run_id)])
        for old in old_ids:
            folder = target / table / f"run_id={old}"
            folder.mkdir(parents=True)
            pq.write_table(rows.drop_columns(["run_id"]), folder / "part-0.parquet")
    manifest = json.loads((source / "manifests" / f"{run_id}.json").read_text())
    (target / "manifests").mkdir()
    for old in old_ids:
        copy = {**manifest, "run_id": old, "schema_version": "2"}
        (target / "manifests" / f"{old}.json").write_text(json.dumps(copy))
    pointer = json.loads((source / "champion.json").read_text())
    pointer.update(run_id=old_ids[0], manifest=f"manifests/{old_ids[0]}.json")
    (target / "champion.json").write_text(json.dumps(pointer))


def test_an_earlier_release_is_refused_naming_make_migrate_and_runs_once_migrated(
    data, tmp_path, prefect_api_url
):
    source = tmp_path / "source"
    made = train_sales_model(data=str(data), output=str(source))
    output = tmp_path / "out"
    old_ids = ["20261101T080000.000Z-0000000a", "20261102T080000.000Z-0000000b"]
    earlier_release_of(source, made["run_id"], output, old_ids)

    code, stdout, stderr = cli(
        "flows.train", "--data", str(data), "--output", str(output), api_url=prefect_api_url
    )
    assert code == 1, stdout
    assert "Traceback" not in stderr
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "an output folder of an earlier release" in error
    assert f"run `make migrate OUTPUT={output}`" in error

    done = migrate_outputs(output)
    assert done.recorded == old_ids
    assert done.champion == old_ids[0]
    assert len(done.dropped) == 1  # the refused run's predictions, never committed
    manifest = train_sales_model(data=str(data), output=str(output))
    assert manifest["promotion"]["champion_before"] == old_ids[0]
    assert tables.run_ids(output, RUNS) == {*old_ids, manifest["run_id"]}
    for table in ("weights", "metrics", "profile", "predictions"):
        assert tables.run_ids(output, table) == {*old_ids, manifest["run_id"]}, table
