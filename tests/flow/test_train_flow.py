"""The train-sales-model flow end to end on real files, read back with DuckDB."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pty
import re
import subprocess
import sys
import time

import duckdb
import numpy as np
import pytest

from flows.train import train_sales_model
from tasks.common.errors import DataQualityError, InputFileError, TrainingError
from tests.conftest import HEADER, REPO, read_table, sales_rows
from tests.reference import least_squares

FEATURES = ["avg_income_k", "price_k", "tax_k"]
BAD_LINES = [
    'X001,"1,234.50",0.5,0.1,3',  # not a number
    "X002,50,-0.5,0.1,3",  # out of range
    "X003,50,0.5,,3",  # missing value
    "X004,50,0.5",  # wrong field count
    "",  # blank line
]


@pytest.fixture
def sales_csv(write_csv):
    lines = sales_rows(80, seed=5)
    for i, bad in enumerate(BAD_LINES):
        lines.insert(10 * i + 5, bad)
    return write_csv("\n".join([HEADER, *lines]) + "\n")


def test_flow_publishes_tables_that_agree_with_each_other(sales_csv, tmp_path):
    output = tmp_path / "out"
    manifest = train_sales_model(data=str(sales_csv), output=str(output), seed=3)
    run_id = manifest["run_id"]

    predictions = read_table(output, "predictions")
    quarantine = read_table(output, "quarantine")
    weights = read_table(output, "weights")
    metrics = read_table(output, "metrics")
    assert set(predictions["run_id"]) == {run_id}

    # Accounting: every data row is accepted or quarantined, never both, never neither.
    lines_in = 80 + len(BAD_LINES)
    quarantined = quarantine[["source_file", "source_line"]].drop_duplicates()
    assert len(predictions) + len(quarantined) == lines_in
    assert set(predictions["source_line"]).isdisjoint(quarantined["source_line"])
    assert manifest["rows"] == {"in": lines_in, "accepted": 80, "quarantined": 5}
    assert sorted(quarantine["reason"]) == sorted(
        ["not a number", "out of range", "missing value", "wrong field count", "blank line"]
    )

    # Weights equal least squares on the train split.
    train = predictions[predictions["split"] == "train"]
    W_opt, b_opt = least_squares(train[FEATURES].to_numpy(), train[["units_sold_k"]].to_numpy())
    w = weights.set_index("feature")["weight"]
    scale = np.abs(W_opt).max()
    np.testing.assert_allclose(w[FEATURES].to_numpy(), W_opt[0], atol=2e-3 * scale)
    assert w["(intercept)"] == pytest.approx(b_opt[0], rel=2e-3)

    # Metrics agree with the published predictions.
    for row in metrics.itertuples():
        part = predictions[predictions["split"] == row.split]
        assert row.rows == len(part)
        assert row.mse == pytest.approx((part["residual_units_sold_k"] ** 2).mean(), rel=1e-9)
    train_metrics = metrics.set_index("split").loc["train"]
    assert abs(train_metrics["relative_gap"]) < 1e-6
    assert bool(train_metrics["converged"])

    # The run's row of `runs` is its commit; the manifest on disk is its copy and lists the
    # outputs.
    on_disk = json.loads((output / "manifests" / f"{run_id}.json").read_text())
    assert on_disk["status"] == "completed"
    assert set(on_disk["outputs"]) == {
        "predictions",
        "weights",
        "metrics",
        "quarantine",
        "profile",
        "report",
    }
    (row,) = read_table(output, "runs").to_dict("records")
    assert (row["run_id"], row["status"], row["kind"]) == (run_id, "completed", "train")
    assert row["data_fingerprint"] == on_disk["data_fingerprint"]
    assert json.loads(row["manifest"]) == on_disk
    assert not list(output.rglob(".*.tmp"))


def test_runs_accumulate_and_one_query_reads_them_all(sales_csv, tmp_path):
    output = tmp_path / "out"
    first = train_sales_model(data=str(sales_csv), output=str(output))
    second = train_sales_model(data=str(sales_csv), output=str(output), dtype="float64")
    runs = duckdb.sql(
        f"select run_id, count(*) n from read_parquet('{output}/weights/*/*.parquet', "
        "hive_partitioning=true) group by run_id order by run_id"
    ).fetchall()
    assert runs == sorted([(first["run_id"], 4), (second["run_id"], 4)])
    # Same data, same seed: same split, same fingerprint.
    assert first["data_fingerprint"] == second["data_fingerprint"]


def test_both_solvers_publish_the_same_model(sales_csv, tmp_path):
    direct = train_sales_model(data=str(sales_csv), output=str(tmp_path / "a"), dtype="float64")
    stats = train_sales_model(data=str(sales_csv), output=str(tmp_path / "b"), solver="moments")
    w_direct = read_table(tmp_path / "a", "weights").set_index("feature")["weight"]
    w_stats = read_table(tmp_path / "b", "weights").set_index("feature")["weight"]
    np.testing.assert_allclose(w_stats, w_direct, rtol=1e-6)
    assert direct["metrics"][0]["mse"] == pytest.approx(stats["metrics"][0]["mse"], rel=1e-9)


def test_too_many_bad_rows_fail_the_run_but_keep_the_quarantine(write_csv, tmp_path):
    path = write_csv("\n".join([HEADER, *sales_rows(6), "Z1,x,1,1,1", "Z2,1,x,1,1"]) + "\n")
    output = tmp_path / "out"
    with pytest.raises(DataQualityError, match=r"2 of 8 rows \(25.0%\).*max_bad_fraction=0.1"):
        train_sales_model(data=str(path), output=str(output))
    (manifest_file,) = (output / "manifests").glob("*.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["status"] == "failed"
    assert "max_bad_fraction" in manifest["error"]
    assert len(read_table(output, "quarantine")) == 2
    assert not (output / "predictions").exists()
    assert not (output / "weights").exists()


def test_rejected_file_publishes_nothing(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(InputFileError, match=r"missing\.csv: file not found"):
        train_sales_model(data=str(tmp_path / "missing.csv"), output=str(output))
    assert not output.exists()


def test_divergence_fails_the_run_and_publishes_nothing(sales_csv, tmp_path):
    output = tmp_path / "out"
    state = train_sales_model(data=str(sales_csv), output=str(output), lr=100.0, return_state=True)
    assert state.is_failed()
    with pytest.raises(TrainingError, match="diverged"):
        state.result()
    assert not (output / "manifests").exists()
    assert not (output / "weights").exists()
    assert not (output / "predictions").exists()


def run_cli(args, api_url):
    env = {**os.environ, "PREFECT_API_URL": api_url}
    return subprocess.run(
        [sys.executable, "-m", "flows.train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_trains_and_prints_where_the_outputs_are(sales_csv, tmp_path, prefect_api_url):
    output = tmp_path / "cli-out"
    result = run_cli(
        ["--data", str(sales_csv), "--output", str(output), "--seed", "2"], prefect_api_url
    )
    assert result.returncode == 0, result.stderr
    assert "80 accepted, 5 quarantined" in result.stdout
    assert f"outputs: {output}" in result.stdout
    assert len(read_table(output, "predictions")) == 80
    # the run is named for what it does from its first log line on, and its log (the UI's Logs
    # tab, `--watch`) ends with its result, before the engine's own "Finished in state ..."
    run_id = result.stdout.split()[1]
    manifest = json.loads((output / "manifests" / f"{run_id}.json").read_text())
    name, logs, summary, weights = flow_run_page(manifest["flow_run_id"])
    assert re.fullmatch(rf"train-{re.escape(sales_csv.name)}-\d{{8}}T\d{{6}}", name), name
    assert logs[0] == f"Beginning flow run '{name}' for flow 'train-sales-model'"
    *_, last, finished = logs
    assert finished.startswith("Finished in state Completed")
    assert last.startswith(f"run {run_id} completed: 85 rows in, 80 accepted, 5 quarantined; ")
    assert "; holdout MSE units_sold_k=" in last
    assert last.endswith("; promoted to champion: first model: no champion yet")
    # the run's page: the summary carries its plots and says where the report is; the weights
    # table reads estimate and interval first, to 6 significant digits
    images = re.findall(r"!\[[^\]]*\]\(data:image/png;base64,([^)]+)\)", summary)
    assert len(images) == 5
    assert all(base64.b64decode(image).startswith(b"\x89PNG") for image in images)
    assert "file://" not in summary
    assert f"**Report**: `{output}/reports/{run_id}/report.md`" in summary
    assert list(weights[0])[:5] == ["target", "feature", "ls_weight", "ci_low", "ci_high"]
    numbers = [v for row in weights for v in row.values() if isinstance(v, float)]
    assert numbers
    assert all(float(f"{v:.6g}") == v for v in numbers)


def test_an_interactive_terminal_shows_each_pass_and_then_only_the_summary(
    sales_csv, tmp_path, prefect_api_url
):
    env = {**os.environ, "PREFECT_API_URL": prefect_api_url, "TERM": "xterm"}
    env["SALES_MODEL_PROGRESS_AFTER"] = "0"  # shown at once, not after the usual 2 s
    terminal, child = pty.openpty()
    output = str(tmp_path / "o")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.train", "--data", str(sales_csv), "--output", output],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=child, stderr=child,
    )  # fmt: skip
    os.close(child)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the run has closed its end
        while chunk := os.read(terminal, 1 << 16):
            shown += chunk
    os.close(terminal)
    assert proc.wait(timeout=300) == 0, shown
    text = shown.decode(errors="replace")
    assert "pass 1: reading" in text
    assert "pass 2: writing" in text
    assert "rows" in text
    # erased when done: the terminal ends with the summary
    assert text.rstrip().endswith(".json")
    assert "80 accepted, 5 quarantined" in text.split("pass 2: writing")[-1]


def flow_run_page(flow_run_id):
    """What the UI shows of a flow run: its name; the messages it logged itself (not its task
    runs), oldest first; its run summary's markdown; its weights table's rows."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.client.schemas.sorting import LogSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
            sort=LogSort.TIMESTAMP_ASC,
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    by_key = {artifact.key: artifact.data for artifact in artifacts}
    table = by_key["sales-model-weights"]
    weights = json.loads(table) if isinstance(table, str) else table
    own = [log.message for log in logs if log.task_run_id is None]
    return run.name, own, by_key["sales-model-run"], weights


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--max-epochs", "-5"],
            2,
            "error: parameter max_epochs: Input should be greater than or equal to 1 (got '-5')",
        ),
        (["--holdout-fraction", "1.5"], 2, "error: parameter holdout_fraction:"),
        (["--dtype", "float16"], 2, "error: parameter dtype:"),
        (["--data", "data/no-such-file.csv"], 1, "error: data/no-such-file.csv: file not found"),
        (["--data", "/etc/passwd"], 2, "error: parameter data: '/etc/passwd' is outside"),
        (
            ["--features", "price_k", "--targets", "price_k"],
            2,
            "error: parameters features and targets: ['price_k'] cannot be both",
        ),
    ],
)
def test_cli_user_errors_are_one_line_without_traceback(
    args, code, message, tmp_path, prefect_api_url
):
    result = run_cli([*args, "--output", str(tmp_path / "o")], prefect_api_url)
    assert result.returncode == code
    (line,) = result.stderr.splitlines()  # one line and nothing else: no Prefect log lines
    assert line.startswith(message)
    assert result.stdout == ""


def test_every_path_problem_is_reported_at_once_before_prefect_starts(tmp_path):
    # No PREFECT_API_URL: a temporary server would start (5-20 s) if the paths were checked late.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flows.train", "--data", "/etc/passwd", "--output", "/etc/out"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2  # parameters refused
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: parameter data: '/etc/passwd' is outside the allowed folders")
    assert "; parameter output: '/etc/out' is outside the allowed folders" in line
    assert "Starting temporary server" not in result.stderr
    assert time.monotonic() - started < 30


def test_a_file_rejected_during_the_run_is_one_error_line(write_csv, tmp_path, prefect_api_url):
    bad = write_csv("country;price_k\nA;1\n", "semicolons.csv")
    result = run_cli(["--data", str(bad), "--output", str(tmp_path / "o")], prefect_api_url)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {bad}: header does not match the expected columns (country, avg_income_k, "
        "price_k, tax_k, units_sold_k); the file seems to be delimited by ';', expected ','"
    ]
    verbose = run_cli(
        ["--data", str(bad), "--output", str(tmp_path / "o"), "--verbose"], prefect_api_url
    )
    assert "Finished in state Failed" in verbose.stderr  # Prefect's logs, on request
    assert verbose.stderr.count("error:") == 1
    assert "Traceback" not in verbose.stderr
