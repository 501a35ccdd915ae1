"""Delta Lake output tables: a run's rows commit whole, every reader sees the same committed rows,
earlier versions still read, retention deletes and vacuums, the champion is a compare-and-swap,
and a damaged or old-format folder is one clear error."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from tasks.common.errors import PipelineError
from tasks.outputs import tables

SCHEMA = pa.schema([("x", pa.float64()), ("s", pa.string())])


def frame(*values: float, extra: list | None = None) -> pa.Table:
    columns = {"x": [float(v) for v in values], "s": [f"s{v:g}" for v in values]}
    if extra is not None:
        columns["extra"] = extra
    return pa.table(columns)


def write_part(root: Path, table: str, run_id: str, data: pa.Table) -> str:
    path = tables.part_path(root, table, run_id)
    pq.write_table(data, path)
    return path


def rows(data: pd.DataFrame, columns: tuple[str, ...] = ("run_id", "x", "s")) -> list[tuple]:
    """Sorted rows of these columns, nulls as None, so readers' frames compare."""
    picked = data[list(columns)].astype(object)
    return sorted(tuple(None if pd.isna(v) else v for v in row) for row in picked.itertuples(False))


def with_pandas(root: Path, table: str) -> pd.DataFrame:
    return DeltaTable(tables.table_uri(root, table)).to_pandas()


def with_polars(root: Path, table: str) -> pd.DataFrame:
    return pl.read_delta(tables.table_uri(root, table)).to_pandas()


def with_duckdb(root: Path, table: str) -> pd.DataFrame:
    files = tables.committed_files(root, table)
    return duckdb.sql(
        f"SELECT * FROM read_parquet({files!r}, hive_partitioning = true, "
        "union_by_name = true, hive_types = {'run_id': VARCHAR})"
    ).df()


READERS = (with_pandas, with_polars, with_duckdb)


def age(path: str | Path, hours: float) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


def log_file(root: Path, table: str, version: int) -> Path:
    return root / table / "_delta_log" / f"{version:020d}.json"


# --- append, versions, descriptions ---------------------------------------------------------


def test_each_append_is_one_version_with_the_run_id_as_a_column(tmp_path: Path) -> None:
    assert tables.version_of(tmp_path, "weights") is None
    assert tables.append(tmp_path, "weights", frame(1, 2), "r1") == 0
    assert tables.append(tmp_path, "weights", frame(3), "r2") == 1
    assert tables.version_of(tmp_path, "weights") == 1
    assert rows(tables.read(tmp_path, "weights").to_pandas()) == [
        ("r1", 1.0, "s1"),
        ("r1", 2.0, "s2"),
        ("r2", 3.0, "s3"),
    ]
    one_run = tables.read(tmp_path, "weights", filters=[("run_id", "=", "r2")])
    assert one_run.column("x").to_pylist() == [3.0]


def test_descriptions_are_the_columns_comments_in_the_table_schema(tmp_path: Path) -> None:
    tables.append(tmp_path, "metrics", frame(1), "r1", descriptions={"x": "Mean squared error."})
    tables.append(tmp_path, "metrics", frame(2), "r2", descriptions={"x": "MSE, units^2."})
    fields = {f.name: f.metadata for f in DeltaTable(tmp_path / "metrics").schema().fields}
    assert fields["x"] == {"comment": "MSE, units^2."}
    assert "comment" in fields["run_id"]
    assert rows(with_pandas(tmp_path, "metrics")) == [("r1", 1.0, "s1"), ("r2", 2.0, "s2")]


def test_a_description_of_a_column_not_in_the_data_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not in the data: typo"):
        tables.append(tmp_path, "metrics", frame(1), "r1", descriptions={"typo": "text"})


def test_data_with_its_own_run_id_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run_id is the partition column"):
        tables.append(tmp_path, "metrics", frame(1).append_column("run_id", pa.array(["x"])), "r1")


def test_a_new_nullable_column_leaves_earlier_runs_readable_in_one_query(tmp_path: Path) -> None:
    tables.append(tmp_path, "profile", frame(1), "r1")
    tables.append(tmp_path, "profile", frame(2, extra=[7]), "r2", descriptions={"extra": "New."})
    for reader in READERS:
        assert rows(reader(tmp_path, "profile"), ("run_id", "x", "extra")) == [
            ("r1", 1.0, None),
            ("r2", 2.0, 7),
        ], reader.__name__


def test_a_changed_column_type_is_one_error_naming_the_column(tmp_path: Path) -> None:
    tables.append(tmp_path, "profile", frame(1), "r1")
    changed = pa.table({"x": ["one"], "s": ["a"]})
    with pytest.raises(PipelineError, match=r"profile: column x is .* not additive"):
        tables.append(tmp_path, "profile", changed, "r2")
    assert rows(with_pandas(tmp_path, "profile")) == [("r1", 1.0, "s1")]


# --- parts written in parallel, committed at once ---------------------------------------------


def test_parts_commit_in_one_version_and_every_reader_sees_them(tmp_path: Path) -> None:
    parts = [write_part(tmp_path, "predictions", "r1", frame(v)) for v in (1, 2, 3)]
    assert tables.commit_parts(tmp_path, "predictions", "r1", parts, SCHEMA) == 0
    assert tables.append(tmp_path, "predictions", frame(4), "r2") == 1
    expected = [("r1", 1.0, "s1"), ("r1", 2.0, "s2"), ("r1", 3.0, "s3"), ("r2", 4.0, "s4")]
    for reader in READERS:
        assert rows(reader(tmp_path, "predictions")) == expected, reader.__name__
    assert "run_id" not in pq.read_schema(parts[0]).names


def test_uncommitted_parts_are_read_by_no_reader(tmp_path: Path) -> None:
    committed = write_part(tmp_path, "predictions", "r1", frame(1))
    tables.commit_parts(tmp_path, "predictions", "r1", [committed], SCHEMA)
    pending = [write_part(tmp_path, "predictions", "r2", frame(v)) for v in (2, 3)]
    for reader in READERS:
        assert rows(reader(tmp_path, "predictions")) == [("r1", 1.0, "s1")], reader.__name__

    tables.commit_parts(tmp_path, "predictions", "r2", pending, SCHEMA)
    for reader in READERS:
        assert len(reader(tmp_path, "predictions")) == 3, reader.__name__


def test_parts_of_a_first_run_that_never_committed_are_no_table(tmp_path: Path) -> None:
    write_part(tmp_path, "scores", "r1", frame(1))
    assert tables.version_of(tmp_path, "scores") is None


def test_part_paths_are_unique_files_in_the_run_folder(tmp_path: Path) -> None:
    first, second = (Path(tables.part_path(tmp_path, "scores", "r1")) for _ in range(2))
    assert first != second
    assert first.parent == second.parent == tmp_path / "scores" / "run_id=r1"
    assert first.parent.is_dir()


def test_a_run_with_no_parts_commits_no_rows(tmp_path: Path) -> None:
    assert tables.commit_parts(tmp_path, "scores", "r1", [], SCHEMA) == 0
    assert tables.read(tmp_path, "scores").num_rows == 0
    assert tables.read(tmp_path, "scores").schema.names == ["x", "s", "run_id"]


def test_parts_with_a_new_column_add_it_to_the_table(tmp_path: Path) -> None:
    old = write_part(tmp_path, "scores", "r1", frame(1))
    tables.commit_parts(tmp_path, "scores", "r1", [old], SCHEMA)
    new = write_part(tmp_path, "scores", "r2", frame(2, extra=[5]))
    wider = SCHEMA.append(pa.field("extra", pa.int64()))
    tables.commit_parts(tmp_path, "scores", "r2", [new], wider, descriptions={"extra": "New."})
    for reader in READERS:
        assert rows(reader(tmp_path, "scores"), ("run_id", "x", "extra")) == [
            ("r1", 1.0, None),
            ("r2", 2.0, 5),
        ], reader.__name__


def test_a_part_outside_its_run_folder_or_off_the_schema_is_refused(tmp_path: Path) -> None:
    elsewhere = write_part(tmp_path, "scores", "r2", frame(1))
    with pytest.raises(ValueError, match="not a part_path of run r1"):
        tables.commit_parts(tmp_path, "scores", "r1", [elsewhere], SCHEMA)
    off = write_part(tmp_path, "scores", "r1", pa.table({"x": ["text"], "s": ["a"]}))
    with pytest.raises(ValueError, match="column x is string"):
        tables.commit_parts(tmp_path, "scores", "r1", [off], SCHEMA)
    assert tables.version_of(tmp_path, "scores") is None


# --- time travel, retention -------------------------------------------------------------------


def test_version_0_still_reads_after_appends_and_deletes_until_vacuumed(tmp_path: Path) -> None:
    tables.append(tmp_path, "weights", frame(1), "r1")
    tables.append(tmp_path, "weights", frame(2), "r2")
    tables.append(tmp_path, "weights", frame(3, extra=[1]), "r3")
    assert tables.delete_runs(tmp_path, "weights", ["r1"]) == 3
    first = [("r1", 1.0, "s1")]
    assert rows(tables.read(tmp_path, "weights", version=0).to_pandas()) == first
    files = tables.committed_files(tmp_path, "weights", version=0)
    assert len(files) == 1
    assert Path(files[0]).exists()

    tables.vacuum(tmp_path, "weights", retention_hours=0)
    with pytest.raises(PipelineError, match="vacuum"):
        tables.read(tmp_path, "weights", version=0)


def test_delete_and_vacuum_leave_the_kept_runs_readable(tmp_path: Path) -> None:
    for n, run_id in enumerate(("r1", "r2", "r3")):
        part = write_part(tmp_path, "predictions", run_id, frame(n))
        tables.commit_parts(tmp_path, "predictions", run_id, [part], SCHEMA)
    deleted = tables.committed_files(tmp_path, "predictions", version=1)
    assert tables.delete_runs(tmp_path, "predictions", ["r1", "r2", "never"]) == 3

    removed = tables.vacuum(tmp_path, "predictions", retention_hours=0)
    assert len(removed) == 2
    assert not any(Path(f).exists() for f in deleted if "run_id=r3" not in f)
    for reader in READERS:
        assert rows(reader(tmp_path, "predictions")) == [("r3", 2.0, "s2")], reader.__name__


def test_deleting_runs_that_are_not_there_commits_nothing(tmp_path: Path) -> None:
    assert tables.delete_runs(tmp_path, "weights", ["r1"]) is None
    tables.append(tmp_path, "weights", frame(1), "r1")
    assert tables.delete_runs(tmp_path, "weights", ["r9"]) is None
    assert tables.delete_runs(tmp_path, "weights", []) is None
    assert tables.version_of(tmp_path, "weights") == 0


def test_vacuum_spares_an_uncommitted_part_until_it_is_older_than_the_window(
    tmp_path: Path,
) -> None:
    tables.append(tmp_path, "scores", frame(1), "r1")
    pending = write_part(tmp_path, "scores", "r2", frame(2))
    assert tables.vacuum(tmp_path, "scores", retention_hours=1) == []
    assert Path(pending).exists()

    age(pending, hours=2)
    assert tables.vacuum(tmp_path, "scores", retention_hours=1) == [
        str(Path(pending).relative_to(tmp_path / "scores"))
    ]
    assert rows(tables.read(tmp_path, "scores").to_pandas()) == [("r1", 1.0, "s1")]


# --- the champion: compare-and-swap with history ------------------------------------------------


def promotion(run_id: str) -> dict:
    return {"run_id": run_id, "reason": f"{run_id} is better", "holdout_mse": {"units": 1.5}}


def test_the_champion_swaps_only_from_the_version_it_was_read_at(tmp_path: Path) -> None:
    assert tables.current_champion(tmp_path) == (None, None)
    assert tables.swap_champion(tmp_path, None, promotion("r1"))
    assert not tables.swap_champion(tmp_path, None, promotion("r2"))
    version, champion = tables.current_champion(tmp_path)
    assert (version, champion["run_id"], champion["previous"]) == (0, "r1", None)
    assert champion["holdout_mse"] == {"units": 1.5}
    assert champion["promoted_at"].utcoffset().total_seconds() == 0

    assert tables.swap_champion(tmp_path, version, promotion("r2"))
    assert not tables.swap_champion(tmp_path, version, promotion("r3"))
    version, champion = tables.current_champion(tmp_path)
    assert (version, champion["run_id"], champion["previous"]) == (1, "r2", "r1")
    history = tables.read(tmp_path, "champions").to_pandas().sort_values("version")
    assert list(history.run_id) == ["r1", "r2"]


def _race_result(run_id: str, version: int | None, root: Path, barrier, results) -> None:
    barrier.wait()
    results.put((run_id, tables.swap_champion(root, version, promotion(run_id))))


def _assert_one_winner(root: Path, version: int, outcomes: dict[str, bool]) -> None:
    assert sorted(outcomes.values()) == [False, True]
    winner = next(run_id for run_id, won in outcomes.items() if won)
    loser = next(run_id for run_id, won in outcomes.items() if not won)
    now, champion = tables.current_champion(root)
    assert (now, champion["run_id"], champion["previous"]) == (version + 1, winner, "r0")
    # The loser decides again from the new version: nothing is lost.
    assert tables.swap_champion(root, now, promotion(loser))
    history = tables.read(root, "champions").to_pandas().sort_values("version")
    assert list(history.run_id) == ["r0", winner, loser]
    assert list(history.previous.fillna("")) == ["", "r0", winner]


def test_two_threads_swapping_from_one_version_make_one_champion(tmp_path: Path) -> None:
    tables.swap_champion(tmp_path, None, promotion("r0"))
    version, _ = tables.current_champion(tmp_path)
    barrier, results = threading.Barrier(2), _ThreadResults()
    threads = [
        threading.Thread(target=_race_result, args=(run_id, version, tmp_path, barrier, results))
        for run_id in ("a", "b")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    _assert_one_winner(tmp_path, version, dict(results.items))


def test_two_processes_swapping_from_one_version_make_one_champion(tmp_path: Path) -> None:
    tables.swap_champion(tmp_path, None, promotion("r0"))
    version, _ = tables.current_champion(tmp_path)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_race_result, args=(run_id, version, tmp_path, barrier, results))
        for run_id in ("a", "b")
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    _assert_one_winner(tmp_path, version, outcomes)


class _ThreadResults:
    def __init__(self) -> None:
        self.items: list[tuple[str, bool]] = []
        self._lock = threading.Lock()

    def put(self, item: tuple[str, bool]) -> None:
        with self._lock:
            self.items.append(item)


# --- concurrent appends -----------------------------------------------------------------------


def _append_runs(root: Path, run_id: str, wide: bool, barrier, done) -> None:
    for table in ("t0", "t1", "t2", "t3"):
        data = frame(1, extra=[9]) if wide else frame(1)
        barrier.wait()
        tables.append(root, table, data, run_id)
    done.put(run_id)


def test_two_processes_appending_at_once_both_land(tmp_path: Path) -> None:
    # Four fresh tables, so the two also race to create each one, with different columns: the
    # table that results has both runs and both runs' columns.
    context = multiprocessing.get_context("spawn")
    barrier, done = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_append_runs, args=(tmp_path, run_id, wide, barrier, done))
        for run_id, wide in (("narrow", False), ("wide", True))
    ]
    for process in processes:
        process.start()
    assert sorted(done.get(timeout=120) for _ in processes) == ["narrow", "wide"]
    for process in processes:
        process.join(timeout=60)
    for table in ("t0", "t1", "t2", "t3"):
        assert rows(with_pandas(tmp_path, table), ("run_id", "x", "extra")) == [
            ("narrow", 1.0, None),
            ("wide", 1.0, 9),
        ], table
        assert tables.version_of(tmp_path, table) == 1


# --- damaged logs, earlier releases -----------------------------------------------------------


@pytest.fixture
def three_runs(tmp_path: Path) -> Path:
    for n, run_id in enumerate(("r1", "r2", "r3")):
        tables.append(tmp_path, "weights", frame(n), run_id)
    tables.append(tmp_path, "metrics", frame(1), "r1")
    return tmp_path


def test_a_truncated_log_entry_is_one_error_naming_the_table_and_file(three_runs: Path) -> None:
    damaged = log_file(three_runs, "weights", 1)
    damaged.write_bytes(damaged.read_bytes()[:150])
    message = (
        rf"{three_runs / 'weights'}: the Delta log is damaged \(_delta_log/0+1\.json is not valid "
        r"JSON at line 1\); restore it from a backup; the other tables are not affected"
    )
    with pytest.raises(PipelineError, match=message):
        tables.read(three_runs, "weights")
    with pytest.raises(PipelineError, match=message):
        tables.append(three_runs, "weights", frame(9), "r4")
    assert rows(tables.read(three_runs, "metrics").to_pandas()) == [("r1", 1.0, "s1")]


def test_a_missing_log_entry_is_one_error_naming_the_table_and_file(three_runs: Path) -> None:
    log_file(three_runs, "weights", 1).unlink()
    with pytest.raises(PipelineError, match=r"weights: .*_delta_log/0+1\.json is missing"):
        tables.version_of(three_runs, "weights")


def test_an_emptied_newest_log_entry_is_an_error_not_a_silent_loss(three_runs: Path) -> None:
    # delta-rs itself reads an empty commit file as a commit of nothing: run r3 would vanish.
    log_file(three_runs, "weights", 2).write_bytes(b"")
    with pytest.raises(PipelineError, match=r"0+2\.json is empty.*delete it to drop that last"):
        tables.read(three_runs, "weights")


def earlier_release(root: Path) -> Path:
    """A table folder as the earlier release wrote it: Hive folders, no Delta log, a column
    added by the second run."""
    first = root / "predictions" / "run_id=20250101T000000.000Z-aaaa" / "part-0.parquet"
    second = (
        root / "predictions" / "run_id=20250102T000000.000Z-bbbb" / "part-00000-0000-0001.parquet"
    )
    for path in (first, second):
        path.parent.mkdir(parents=True)
    pq.write_table(frame(1, 2), first)
    pq.write_table(frame(3, extra=[4]), second)
    return root


def test_an_earlier_release_folder_is_refused_naming_make_migrate(tmp_path: Path) -> None:
    earlier_release(tmp_path)
    message = (
        rf"{tmp_path / 'predictions'}: .*earlier release.*run `make migrate OUTPUT={tmp_path}`"
    )
    with pytest.raises(PipelineError, match=message):
        tables.read(tmp_path, "predictions")
    with pytest.raises(PipelineError, match=message):
        tables.append(tmp_path, "predictions", frame(5), "r5")


def test_migrate_converts_in_place_and_earlier_runs_stay_readable(tmp_path: Path) -> None:
    earlier_release(tmp_path)
    assert tables.migrate(tmp_path, "predictions") == 0
    assert tables.migrate(tmp_path, "predictions") is None
    tables.append(tmp_path, "predictions", frame(5), "r5")
    for reader in READERS:
        assert rows(reader(tmp_path, "predictions"), ("run_id", "x", "extra")) == [
            ("20250101T000000.000Z-aaaa", 1.0, None),
            ("20250101T000000.000Z-aaaa", 2.0, None),
            ("20250102T000000.000Z-bbbb", 3.0, 4),
            ("r5", 5.0, None),
        ], reader.__name__
    assert tables.read(tmp_path, "predictions", version=0).num_rows == 3
