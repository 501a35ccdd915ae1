"""Upkeep of an output root: `make migrate` converts an earlier release's Parquet folders and
manifests into Delta tables in place, and `make vacuum` removes dead runs' rows and the files no
recent version needs. Each is one `error:` line when it cannot."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.outputs import main
from schemas.outputs import RUNS
from tasks.common.errors import PipelineError
from tasks.common.storage import format_run_id
from tasks.outputs import tables
from tasks.outputs.maintenance import migrate_outputs, vacuum_outputs
from tasks.outputs.retention import ORPHAN_AFTER_SECONDS
from tests.conftest import REPO

# Three runs of an earlier release; the last one died before its manifest.
OLD = [format_run_id(datetime(2026, 11, day, 8, tzinfo=UTC), f"{day:08x}") for day in (1, 2, 3)]


def legacy_rows(i: int) -> dict[str, pa.Table]:
    """Run `i`'s rows of each table, as that release wrote them (no run_id column)."""
    return {
        "weights": pa.table(
            {
                "target": ["y", "y"],
                "feature": ["x", "(intercept)"],
                "weight": [2.0 + i, 0.5],
            }
        ),
        "metrics": pa.table({"target": ["y"], "split": ["holdout"], "mse": [0.1 * (i + 1)]}),
        "predictions": pa.table(
            {"country": [f"C{i}a", f"C{i}b"], "prediction": [1.0 + i, 2.0 + i]}
        ),
    }


def legacy_manifest(run_id: str, promoted: bool) -> dict:
    started = datetime.strptime(run_id.split("Z-")[0], "%Y%m%dT%H%M%S.%f").replace(tzinfo=UTC)
    return {
        "run_id": run_id,
        "kind": "train",
        "status": "completed",
        "error": None,
        "started_at": started.isoformat(timespec="milliseconds"),
        "finished_at": (started + timedelta(seconds=9)).isoformat(timespec="milliseconds"),
        "flow_run_id": None,
        "schema_version": "2",
        "data_fingerprint": "f" * 64,
        "parameters": {"seed": 0},
        "inputs": [],
        "rows": {"in": 2, "accepted": 2, "quarantined": 0},
        "training": None,
        "metrics": None,
        "promotion": {"promoted": promoted, "reason": "test", "champion_before": None},
        "drift": None,
        "warnings": [],
        "outputs": {},
    }


@pytest.fixture
def earlier_release(tmp_path):
    """An output root of an earlier release: Hive folders, manifests of the first two runs,
    champion.json naming the first."""
    root = tmp_path / "out"
    for i, run_id in enumerate(OLD):
        for table, data in legacy_rows(i).items():
            folder = root / table / f"run_id={run_id}"
            folder.mkdir(parents=True)
            pq.write_table(data, folder / "part-0.parquet")
    (root / "manifests").mkdir()
    for i, run_id in enumerate(OLD[:2]):
        manifest = legacy_manifest(run_id, promoted=i == 0)
        (root / "manifests" / f"{run_id}.json").write_text(json.dumps(manifest))
    pointer = {
        "run_id": OLD[0],
        "promoted_at": "2026-11-01T08:00:10+00:00",
        "reason": "first model: no champion yet",
        "holdout_mse": {"y": 0.1},
        "manifest": f"manifests/{OLD[0]}.json",
    }
    (root / "champion.json").write_text(json.dumps(pointer))
    return root


def test_an_earlier_release_is_refused_until_migrated(earlier_release):
    with pytest.raises(PipelineError, match=r"earlier release.*run `make migrate OUTPUT="):
        tables.read(earlier_release, "weights")


def test_migrate_converts_in_place_and_keeps_committed_runs_only(earlier_release):
    root = earlier_release
    done = migrate_outputs(root)
    assert done.converted == ["weights", "metrics", "predictions"]
    assert (done.recorded, done.dropped, done.champion) == (OLD[:2], [OLD[2]], OLD[0])
    for table in done.converted:
        assert tables.run_ids(root, table) == set(OLD[:2])
        for i, run_id in enumerate(OLD[:2]):
            rows = tables.read(root, table, filters=[("run_id", "=", run_id)])
            assert rows.drop_columns(["run_id"]).to_pylist() == legacy_rows(i)[table].to_pylist()
        # The files stay where they were.
        assert {f"{root}/{table}/run_id={r}/part-0.parquet" for r in OLD[:2]} == set(
            tables.committed_files(root, table)
        )
    runs = tables.read(root, RUNS).to_pandas().set_index("run_id")
    assert sorted(runs.index) == OLD[:2]
    assert runs.loc[OLD[0], "promoted"]
    assert json.loads(runs.loc[OLD[1], "manifest"])["parameters"] == {"seed": 0}
    champion = tables.current_champion(root)[1]
    assert (champion["run_id"], champion["reason"]) == (OLD[0], "first model: no champion yet")
    assert champion["holdout_mse"] == {"y": 0.1}


def test_migrating_again_changes_nothing(earlier_release):
    migrate_outputs(earlier_release)
    versions = {t: tables.version_of(earlier_release, t) for t in ("weights", RUNS, "champions")}
    again = migrate_outputs(earlier_release)
    assert (again.converted, again.recorded, again.dropped) == ([], [], [])
    assert again.champion == OLD[0]
    assert {t: tables.version_of(earlier_release, t) for t in versions} == versions


def test_a_manifest_this_release_cannot_read_is_one_error_naming_it(earlier_release):
    (earlier_release / "manifests" / f"{OLD[1]}.json").write_text('{"run_id": "x"')
    with pytest.raises(PipelineError, match=rf"manifests/{OLD[1]}\.json: not a run manifest"):
        migrate_outputs(earlier_release)


def append_run(root, table, run_id, commit=True):
    tables.append(root, table, pa.table({"x": [1.0, 2.0]}), run_id)
    if commit:
        tables.append(root, RUNS, pa.table({"kind": ["train"]}), run_id)


def test_vacuum_sweeps_dead_runs_and_deletes_files_once_out_of_the_window(tmp_path):
    now = datetime.now(UTC)
    kept, pruned = (format_run_id(now - timedelta(hours=h), f"{h:08x}") for h in (2, 1))
    dead = format_run_id(now - timedelta(seconds=ORPHAN_AFTER_SECONDS + 60), "0dead0ff")
    young = format_run_id(now, "00a11e00")  # may still be committing
    for run_id in (kept, pruned):
        append_run(tmp_path, "predictions", run_id)
    append_run(tmp_path, "predictions", dead, commit=False)
    append_run(tmp_path, "predictions", young, commit=False)
    before = tables.delete_runs(tmp_path, "predictions", [pruned]) - 1  # as retention does
    pruned_files = list((tmp_path / "predictions" / f"run_id={pruned}").iterdir())

    swept = vacuum_outputs(tmp_path)  # the default window: a reader in flight still reads
    assert swept.orphans == [dead]
    assert tables.run_ids(tmp_path, "predictions") == {kept, young}
    assert all(path.exists() for path in pruned_files)
    old = tables.read(tmp_path, "predictions", version=before)
    assert pruned in old.column("run_id").to_pylist()

    done = vacuum_outputs(tmp_path, hours=0)
    assert done.orphans == []
    assert done.deleted["predictions"] >= len(pruned_files) + 1  # and the dead run's file
    assert not any(path.exists() for path in pruned_files)
    assert set(tables.read(tmp_path, "predictions").column("run_id").to_pylist()) == {kept, young}


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_command_line_reports_user_errors_in_one_line(earlier_release, tmp_path, capsys):
    code, _, err = run_cli(capsys, "vacuum", "--output", str(earlier_release))
    assert code == 1
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert f"run `make migrate OUTPUT={earlier_release}`" in err
    code, _, err = run_cli(capsys, "migrate", "--output", str(tmp_path / "nope"))
    assert (code, err) == (2, f"error: parameter output: folder '{tmp_path / 'nope'}' not found\n")
    code, _, err = run_cli(capsys, "vacuum", "--output", str(earlier_release), "--hours", "-1")
    assert (code, err) == (2, "error: parameter hours: must be from 0 to 8760 (got -1)\n")
    code, _, err = run_cli(capsys, "vacuum", "--output", "/etc")
    assert code == 2
    assert err.startswith("error: parameter output: '/etc' is outside the allowed folders")


def make(*args):
    """`make` in the checkout, its virtual environment taken as up to date."""
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", *args],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))},
        capture_output=True,
        text=True,
        check=False,
    )


def test_make_migrate_then_make_vacuum(earlier_release):
    listed = make("help").stdout
    assert "  vacuum " in listed
    assert "  migrate " in listed
    migrated = make("migrate", f"OUTPUT={earlier_release}")
    assert migrated.returncode == 0, migrated.stderr
    assert "converted to Delta tables: weights, metrics, predictions" in migrated.stdout
    assert f"removed the runs without a manifest (never committed): {OLD[2]}" in migrated.stdout
    assert f"champion: {OLD[0]}" in migrated.stdout
    vacuumed = make("vacuum", f"OUTPUT={earlier_release}", "HOURS=0")
    assert vacuumed.returncode == 0, vacuumed.stderr
    assert f"vacuumed {earlier_release}: " in vacuumed.stdout
    # The dropped run's files: never committed by that release, gone now.
    assert not list(earlier_release.glob(f"*/run_id={OLD[2]}/*.parquet"))
    assert tables.run_ids(earlier_release, "weights") == set(OLD[:2])


def test_the_promotion_of_a_run_that_died_before_its_commit_is_swept_with_its_rows(tmp_path):
    from schemas.outputs import RUNS_ARROW
    from tasks.outputs.retention import sweep_orphans

    now = datetime.now(UTC)
    first = format_run_id(now - timedelta(days=1), "00f1257a")
    dead = format_run_id(now - timedelta(seconds=ORPHAN_AFTER_SECONDS + 60), "0dead0ff")
    row = pa.Table.from_pylist([{"kind": "train", "status": "completed"}], schema=RUNS_ARROW)
    tables.append(tmp_path, RUNS, row, first)
    for run_id in (first, dead):  # weights, then the crown; `dead` never wrote its runs row
        tables.append(tmp_path, "weights", pa.table({"weight": [1.0]}), run_id)
        version, _ = tables.current_champion(tmp_path)
        crowned = {"run_id": run_id, "reason": "test", "holdout_mse": {}}
        assert tables.swap_champion(tmp_path, version, crowned)
    assert tables.current_champion(tmp_path)[1]["run_id"] == dead  # what the gate sees
    assert sweep_orphans(tmp_path) == [dead]
    assert tables.current_champion(tmp_path)[1]["run_id"] == first
    assert tables.run_ids(tmp_path, "weights") == {first}
