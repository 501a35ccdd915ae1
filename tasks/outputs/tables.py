"""Delta Lake output tables: `<root>/<table>/` holds Parquet files and the `_delta_log` that says
which of them make up each version. Every table but `champions` is partitioned by `run_id`, and a
run's rows of a table arrive in one append transaction: visible whole or not at all.

Writing: `append` commits an Arrow table (the small tables); `part_path` names a file a writer
(pass 2, on many threads) fills with one Parquet part straight in the table's folder, and
`commit_parts` commits all of a run's parts at once. Reading: `read`, `committed_files` (for
DuckDB), `version_of`; pandas and polars also read the folder itself (`deltalake.DeltaTable(...)
.to_pandas()`, `polars.read_delta`). Retention: `delete_runs`, then `vacuum` once a window has
passed. The champion: `current_champion` and `swap_champion`, a compare-and-swap on the
`champions` table. `migrate` converts a table folder of an earlier release in place.

`root` is a local folder or an `s3://bucket/prefix`: without `storage_options`, delta-rs gets the
store layer's (tasks/common/store.py: on a bucket, `{"conditional_put": "etag"}` plus the AWS
environment's endpoint and region), so callers need not pass any.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import (
    CommitProperties,
    DeltaTable,
    Field,
    Schema,
    convert_to_deltalake,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError
from deltalake.fs import DeltaStorageHandler
from deltalake.transaction import AddAction, create_table_with_add_actions

from tasks.common import store
from tasks.common.errors import PipelineError

PARTITION = "run_id"
CHAMPIONS = "champions"
# The field-metadata key Spark, Databricks and Unity Catalog show as a column's description.
COMMENT = "comment"

StorageOptions = Mapping[str, str] | None

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_COMMIT_FILE = re.compile(r"(\d{20})\.json")
# Files this module and delta-rs write carry a UUID in their names; an earlier release's did not.
_UUID = re.compile(r"[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}")
_ATTEMPTS = 3

_CHAMPION_COLUMNS = {
    "run_id": (pa.string(), "Training run promoted to champion."),
    "promoted_at": (pa.timestamp("us", tz="UTC"), "When it was promoted (UTC)."),
    "reason": (pa.string(), "Why it was promoted."),
    "holdout_mse": (pa.string(), "Holdout MSE by target on the compared rows, as JSON text."),
    "previous": (pa.string(), "The champion it replaced; null for the first one."),
    "version": (
        pa.int64(),
        "Version of this table the promotion committed: the highest is the current champion.",
    ),
}


def table_uri(root: str | Path, table: str) -> str:
    """Where `table` lives: `<root>/<table>`, an absolute path (or a URI under a URI root)."""
    _check_name("table", table)
    if "://" in str(root):
        return f"{str(root).rstrip('/')}/{table}"
    return str(Path(root).absolute() / table)


def append(
    root: str | Path,
    table: str,
    data: pa.Table,
    run_id: str,
    *,
    descriptions: Mapping[str, str] | None = None,
    storage_options: StorageOptions = None,
) -> int:
    """Append `data` as run `run_id`'s rows of `table` in one transaction; return its version.

    `run_id` becomes the partition column (`data` has none). `descriptions` (column -> text) are
    stored as the columns' "comment" in the table's schema. The table is created on first use; a
    new column is added to it (earlier runs read null there); a column whose type changed is
    refused with a PipelineError.
    """
    uri = table_uri(root, table)
    schema = _with_partition(_described(data.schema, descriptions))
    run_ids = pa.repeat(pa.scalar(_checked_run(run_id)), data.num_rows)
    data = pa.Table.from_arrays([*data.columns, run_ids], schema=schema)

    def commit(dt: DeltaTable | None, properties: CommitProperties) -> None:
        write_deltalake(
            dt or uri,
            data,
            mode="append",
            partition_by=[PARTITION],
            schema_mode="merge",
            storage_options=_options(storage_options, uri),
            commit_properties=properties,
        )

    return _commit(root, table, schema, run_id, commit, storage_options, add_columns=False)


def part_path(root: str | Path, table: str, run_id: str) -> str:
    """A new file name for one Parquet part of run `run_id`'s rows of `table`:
    `<table>/run_id=<id>/part-<uuid>.parquet`, its folder created on a local root.

    Write the part's columns without `run_id` (it is the partition, taken from the path). No reader
    sees the part until `commit_parts` commits it; `vacuum` removes a part never committed once it
    is older than its window.
    """
    folder = f"{table_uri(root, table)}/{PARTITION}={_checked_run(run_id)}"
    if "://" not in folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
    return f"{folder}/part-{uuid.uuid4().hex}.parquet"


def commit_parts(
    root: str | Path,
    table: str,
    run_id: str,
    parts: Iterable[str | Path],
    schema: pa.Schema,
    *,
    descriptions: Mapping[str, str] | None = None,
    storage_options: StorageOptions = None,
) -> int:
    """Commit Parquet parts written at `part_path`s as run `run_id`'s rows of `table`, all in one
    transaction; return its version.

    `schema` is the parts' Arrow schema (without `run_id`); `descriptions` as in `append`. The
    table is created if it does not exist yet; new columns are added to it first. No parts is a
    commit of no rows.
    """
    uri = table_uri(root, table)
    schema = _with_partition(_described(schema, descriptions))
    filesystem = _filesystem(uri, storage_options)
    run_id = _checked_run(run_id)
    actions = [_add_action(filesystem, uri, str(part), run_id, schema) for part in parts]

    def commit(dt: DeltaTable | None, properties: CommitProperties) -> None:
        if dt is None:
            create_table_with_add_actions(
                uri,
                Schema.from_arrow(schema),
                actions,
                mode="error",
                partition_by=[PARTITION],
                storage_options=_options(storage_options, uri),
                commit_properties=properties,
            )
        else:
            dt.create_write_transaction(
                actions, "append", dt.schema(), [PARTITION], commit_properties=properties
            )

    return _commit(root, table, schema, run_id, commit, storage_options, add_columns=True)


def version_of(
    root: str | Path, table: str, *, storage_options: StorageOptions = None
) -> int | None:
    """`table`'s latest version, or None if nothing has been committed to it yet."""
    dt = _open(root, table, storage_options=storage_options)
    return None if dt is None else dt.version()


def committed_files(
    root: str | Path,
    table: str,
    version: int | None = None,
    *,
    storage_options: StorageOptions = None,
) -> list[str]:
    """The data files of `table` at `version` (the latest by default): absolute paths, or URIs
    under a URI root. For DuckDB: `read_parquet(files, hive_partitioning = true, union_by_name =
    true)` reads exactly the committed rows, `run_id` taken from the paths."""
    return _existing(root, table, version, storage_options).file_uris()


def read(
    root: str | Path,
    table: str,
    *,
    version: int | None = None,
    filters: Any = None,
    storage_options: StorageOptions = None,
) -> pa.Table:
    """`table`'s committed rows at `version` (the latest by default), `run_id` included; `filters`
    in deltalake's form, e.g. `[("run_id", "=", run_id)]` for one run's rows."""
    dt = _existing(root, table, version, storage_options)
    try:
        return dt.to_pyarrow_table(filters=filters)
    except FileNotFoundError as exc:
        raise PipelineError(
            f"{table_uri(root, table)}: a data file of version {dt.version()} is gone "
            f"({_first_line(exc)}); vacuum removes the files of versions older than its "
            "retention window"
        ) from exc


def run_ids(root: str | Path, table: str, *, storage_options: StorageOptions = None) -> set[str]:
    """The runs with rows in `table`'s latest version (from the log: no data file is read)."""
    dt = _open(root, table, storage_options=storage_options)
    if dt is None:
        return set()
    actions = pa.table(dt.get_add_actions(flatten=True))
    column = f"partition.{PARTITION}"
    return set(actions.column(column).to_pylist()) if column in actions.column_names else set()


def delete_runs(
    root: str | Path,
    table: str,
    run_ids: Iterable[str],
    *,
    storage_options: StorageOptions = None,
) -> int | None:
    """Remove these runs' rows from `table` in one commit and return its version; None if none
    of them is there. Their files stay until `vacuum`, so earlier versions still read."""
    ids = sorted({_checked_run(run_id) for run_id in run_ids})
    dt = _open(root, table, storage_options=storage_options)
    if dt is None or not ids:
        return None
    token = uuid.uuid4().hex
    listed = ", ".join(f"'{run_id}'" for run_id in ids)
    metrics = dt.delete(
        f"{PARTITION} IN ({listed})",
        commit_properties=CommitProperties(custom_metadata={"commit_id": token}),
    )
    if not metrics["num_removed_files"]:
        return None
    return _committed_version(table_uri(root, table), token, storage_options)


def vacuum(
    root: str | Path,
    table: str,
    retention_hours: int,
    *,
    storage_options: StorageOptions = None,
) -> list[str]:
    """Delete the files of `table` no version of the last `retention_hours` needs; return them
    (paths in the table).

    Those are the files `delete_runs` removed more than that long ago, and files the log never
    listed (the parts of a run that died before its commit, a writer's that lost a race) last
    modified more than that long ago. A part written but not committed yet is protected by its
    age alone, so the window must outlast the longest run as well as the longest read. Versions
    older than the window may no longer read.
    """
    dt = _open(root, table, storage_options=storage_options)
    if dt is None:
        return []
    return dt.vacuum(
        retention_hours=retention_hours,
        dry_run=False,
        enforce_retention_duration=False,
        full=True,
    )


def current_champion(
    root: str | Path, *, storage_options: StorageOptions = None
) -> tuple[int | None, dict[str, Any] | None]:
    """The `champions` table's version and the current champion's row (run_id, promoted_at,
    reason, holdout_mse as a dict, previous, version), or (None, None) before the first
    promotion. Hand the version to `swap_champion`."""
    dt = _open(root, CHAMPIONS, storage_options=storage_options)
    if dt is None:
        return None, None
    return dt.version(), _champion_at(dt)


def swap_champion(
    root: str | Path,
    expected_version: int | None,
    row: Mapping[str, Any],
    *,
    storage_options: StorageOptions = None,
) -> bool:
    """Make `row`'s run the champion only if the `champions` table is still at `expected_version`
    (None: no table yet), as `current_champion` returned it. True if it committed; False if
    another commit came first: read `current_champion` again and decide again.

    `row`: run_id, reason, holdout_mse (target -> MSE) and optionally promoted_at (default now);
    `previous` is the champion at `expected_version`. The commit lands at exactly
    `expected_version + 1` or not at all: delta-rs told not to retry does not rebase it over
    another commit, and a version file is only ever created if absent.
    """
    uri = table_uri(root, CHAMPIONS)
    version = 0 if expected_version is None else expected_version + 1
    dt = _open(root, CHAMPIONS, version=expected_version, storage_options=storage_options)
    if (dt is None) != (expected_version is None):
        return False
    champion = _champion_at(dt) if dt is not None else None
    previous = champion["run_id"] if champion else None
    try:
        write_deltalake(
            dt or uri,
            _champion_row(row, previous, version),
            mode="append" if dt else "error",
            storage_options=_options(storage_options, uri),
            commit_properties=CommitProperties(
                custom_metadata={"run_id": str(row["run_id"])}, max_commit_retries=0
            ),
        )
    except CommitFailedError:
        return False
    except DeltaError:
        # mode="error" refuses a table that another promotion created since the check above.
        if dt is None and _open(root, CHAMPIONS, storage_options=storage_options) is not None:
            return False
        raise
    return True


def migrate(root: str | Path, table: str, *, storage_options: StorageOptions = None) -> int | None:
    """Convert `table`'s folder of an earlier release (Hive folders `run_id=<id>/*.parquet`, no
    Delta log) in place into a Delta table partitioned by `run_id`: the files stay where they are
    and version 0 lists them all. Returns 0, or None when there is nothing to convert."""
    uri = table_uri(root, table)
    filesystem = _filesystem(uri, storage_options)
    if filesystem is None or _commit_files(filesystem) or not _legacy_files(filesystem):
        return None
    try:
        convert_to_deltalake(
            uri,
            partition_by=Schema([Field(PARTITION, "string")]),
            partition_strategy="hive",
            storage_options=_options(storage_options, uri),
        )
    except DeltaError as exc:
        raise PipelineError(
            f"{uri}: could not convert the folder to a Delta table ({_first_line(exc)})"
        ) from exc
    return 0


def _commit(
    root: str | Path,
    table: str,
    schema: pa.Schema,
    run_id: str,
    commit: Callable[[DeltaTable | None, CommitProperties], None],
    storage_options: StorageOptions,
    *,
    add_columns: bool,
) -> int:
    """Run `commit(table or None, properties)` until it lands; return the version it made.
    `add_columns`: whether `schema`'s new columns need a commit of their own first (a write
    with schema_mode="merge" adds them in its own commit).

    A table is only ever created as version 0 (no retries): delta-rs would otherwise rebase a
    creation over a racing creator's and replace that one's schema with its own. A lost creation
    race, or a schema change committed meanwhile, is retried against the table as it is now.
    """
    uri = table_uri(root, table)
    token = uuid.uuid4().hex
    for attempt in range(_ATTEMPTS):
        dt = _open(root, table, storage_options=storage_options)
        if dt is not None:
            _evolve(uri, dt, schema, run_id, add_columns=add_columns)
        properties = CommitProperties(
            custom_metadata={"run_id": run_id, "commit_id": token},
            max_commit_retries=0 if dt is None else None,
        )
        try:
            commit(dt, properties)
        except SchemaMismatchError as exc:
            raise PipelineError(f"{uri}: run {run_id} does not fit the table ({exc})") from exc
        except DeltaError as exc:
            if attempt == _ATTEMPTS - 1 or not _raced(exc, dt):
                raise
            continue
        return _committed_version(uri, token, storage_options)
    raise AssertionError("unreachable")


def _raced(exc: DeltaError, dt: DeltaTable | None) -> bool:
    """Whether a failed commit lost a race: to another commit, or to another creator."""
    return isinstance(exc, CommitFailedError) or (dt is None and "already exists" in str(exc))


def _committed_version(uri: str, token: str, storage_options: StorageOptions) -> int:
    """The version whose commit carries `token`: a commit may have been rebased over others, so
    its version is looked up in the newest entries of the history."""
    dt = DeltaTable(uri, storage_options=_options(storage_options, uri), without_files=True)
    limit = 8
    while True:
        entries = dt.history(limit)
        for entry in entries:
            if entry.get("commit_id") == token:
                return int(entry["version"])
        if len(entries) < limit:
            raise PipelineError(f"{uri}: a commit just made is not in the table's history")
        limit *= 4


def _evolve(uri: str, dt: DeltaTable, schema: pa.Schema, run_id: str, *, add_columns: bool) -> None:
    """Refuse a changed type; add `schema`'s new columns to the table if `add_columns`, and update
    changed descriptions: a metadata commit each, rare (a release that adds a column or rewords a
    description; merging would refuse the latter)."""
    have = {field.name: field for field in dt.schema().fields}
    wanted = Schema.from_arrow(schema).fields
    for field in wanted:
        if field.name in have and field.type != have[field.name].type:
            raise PipelineError(
                f"{uri}: column {field.name} is {have[field.name].type.type} in the table "
                f"but {field.type.type} in run {run_id}; a change of type is not additive: "
                "write it as a new column"
            )
    new = [
        Field(f.name, f.type, nullable=True, metadata=f.metadata)
        for f in wanted
        if f.name not in have
    ]
    if new and add_columns:
        dt.alter.add_columns(new)
    for field in wanted:
        comment = field.metadata.get(COMMENT)
        if field.name in have and comment and have[field.name].metadata.get(COMMENT) != comment:
            dt.alter.set_column_metadata(field.name, {COMMENT: comment})


def _add_action(
    filesystem: pafs.FileSystem | None, uri: str, part: str, run_id: str, schema: pa.Schema
) -> AddAction:
    """The log entry of one written part, checked to be in the run's folder with the table's
    columns (and no `run_id` column, which readers take from the path)."""
    relative = part.removeprefix(f"{uri}/")
    if not relative.startswith(f"{PARTITION}={run_id}/") or "/" in relative.split("/", 1)[1]:
        raise ValueError(f"{part}: not a part_path of run {run_id} in {uri}")
    info = filesystem.get_file_info(relative) if filesystem else None
    if info is None or info.type != pafs.FileType.File:
        raise PipelineError(f"{part}: the part to commit is missing (not written, or vacuumed)")
    with filesystem.open_input_file(relative) as handle:
        parquet = pq.ParquetFile(handle)
        rows, columns = parquet.metadata.num_rows, parquet.schema_arrow
    for field in columns:
        if field.name not in schema.names or field.name == PARTITION:
            raise ValueError(f"{part}: column {field.name} is not in the table's schema")
        if field.type != schema.field(field.name).type:
            raise ValueError(f"{part}: column {field.name} is {field.type}, not the schema's")
    return AddAction(
        relative,
        info.size,
        {PARTITION: run_id},
        int(info.mtime.timestamp() * 1000),
        True,
        json.dumps({"numRecords": rows}),
    )


def _open(
    root: str | Path,
    table: str,
    *,
    version: int | None = None,
    storage_options: StorageOptions = None,
) -> DeltaTable | None:
    """The table at `version` (latest by default), or None if it has no log yet. A damaged log
    or an earlier release's folder is a PipelineError saying what to do."""
    uri = table_uri(root, table)
    with _store_errors(uri):
        filesystem = _filesystem(uri, storage_options)
        sizes = _commit_files(filesystem) if filesystem else {}
        if not sizes:
            if filesystem and _legacy_files(filesystem):
                raise PipelineError(
                    f"{uri}: an output folder of an earlier release (Parquet files under "
                    f"run_id=*/, no Delta log); run `make migrate OUTPUT={root}` to convert it"
                )
            return None
        _check_log(uri, filesystem, sizes, version)
        try:
            return DeltaTable(uri, version=version, storage_options=_options(storage_options, uri))
        except DeltaError as exc:
            bad = _unparsable(filesystem, sizes) or (None, _first_line(exc))
            raise PipelineError(_damaged(uri, *bad, newest=bad[0] == max(sizes))) from exc


@contextlib.contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """A bucket that still fails once delta-rs has retried (503s, an endpoint that does not
    answer) is one PipelineError naming the table, not a traceback."""
    try:
        yield
    except OSError as exc:
        if not store.is_remote(uri):
            raise
        raise PipelineError(f"{uri}: {store.describe(exc)}") from exc


def _existing(
    root: str | Path, table: str, version: int | None, storage_options: StorageOptions
) -> DeltaTable:
    dt = _open(root, table, version=version, storage_options=storage_options)
    if dt is None:
        raise PipelineError(f"{table_uri(root, table)}: no such table yet (no run has written it)")
    return dt


def _check_log(
    uri: str, filesystem: pafs.FileSystem, sizes: dict[int, int], version: int | None
) -> None:
    """Commit files missing or empty from the last checkpoint on (delta-rs reads an empty commit
    file as a commit of nothing, silently dropping its rows), or a version that is not there."""
    newest = max(sizes)
    if version is not None and not 0 <= version <= newest:
        raise PipelineError(f"{uri}: there is no version {version} (the latest is {newest})")
    for number in range(_last_checkpoint(filesystem) or 0, newest + 1):
        if number not in sizes:
            raise PipelineError(_damaged(uri, number, "is missing", newest=False))
        if sizes[number] == 0:
            raise PipelineError(_damaged(uri, number, "is empty", newest=number == newest))


def _damaged(uri: str, version: int | None, problem: str, *, newest: bool) -> str:
    where = "the log" if version is None else f"_delta_log/{version:020d}.json"
    drop = ", or delete it to drop that last commit (its run must be run again)" if newest else ""
    return (
        f"{uri}: the Delta log is damaged ({where} {problem}); restore it from a backup{drop}; "
        "the other tables are not affected"
    )


def _unparsable(filesystem: pafs.FileSystem, sizes: dict[int, int]) -> tuple[int, str] | None:
    """The first commit file that is not JSON lines, with what is wrong in it."""
    for number in sorted(sizes):
        with filesystem.open_input_stream(f"_delta_log/{number:020d}.json") as handle:
            text = handle.read().decode("utf-8", "replace")
        for line_number, line in enumerate(text.splitlines(), 1):
            try:
                json.loads(line)
            except ValueError:
                return number, f"is not valid JSON at line {line_number}"
    return None


def _commit_files(filesystem: pafs.FileSystem) -> dict[int, int]:
    """Version -> size of the commit files in `_delta_log` (log cleanup keeps the one of the
    last checkpoint, so a table always has one)."""
    listed = filesystem.get_file_info(pafs.FileSelector("_delta_log", allow_not_found=True))
    matches = ((_COMMIT_FILE.fullmatch(info.base_name), info.size) for info in listed)
    return {int(match.group(1)): size for match, size in matches if match}


def _last_checkpoint(filesystem: pafs.FileSystem) -> int | None:
    path = "_delta_log/_last_checkpoint"
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as handle:
        return int(json.loads(handle.read())["version"])


def _legacy_files(filesystem: pafs.FileSystem) -> bool:
    """Whether the folder holds Parquet files of an earlier release under run_id=*/."""
    listed = filesystem.get_file_info(pafs.FileSelector("", allow_not_found=True, recursive=True))
    return any(
        info.path.startswith(f"{PARTITION}=")
        and info.base_name.endswith(".parquet")
        and not _UUID.search(info.base_name)
        for info in listed
    )


def _filesystem(uri: str, storage_options: StorageOptions) -> pafs.FileSystem | None:
    """The table's folder as a pyarrow filesystem over delta-rs' own object store (so the same
    storage_options apply); None for a local folder that does not exist."""
    if "://" not in uri and not Path(uri).is_dir():
        return None
    return pafs.PyFileSystem(DeltaStorageHandler(uri, options=_options(storage_options, uri)))


def _described(schema: pa.Schema, descriptions: Mapping[str, str] | None) -> pa.Schema:
    unknown = set(descriptions or {}) - set(schema.names)
    if unknown:
        raise ValueError(f"descriptions of columns not in the data: {', '.join(sorted(unknown))}")
    if PARTITION in schema.names:
        raise ValueError(f"{PARTITION} is the partition column: pass it as run_id, not as data")
    return pa.schema(
        [
            field.with_metadata({**(field.metadata or {}), COMMENT.encode(): text.encode()})
            if (text := (descriptions or {}).get(field.name))
            else field
            for field in schema
        ]
    )


def _with_partition(schema: pa.Schema) -> pa.Schema:
    described = {COMMENT: "Run that wrote the row: the table's partition column."}
    return schema.append(pa.field(PARTITION, pa.string(), metadata=described))


def _champion_at(dt: DeltaTable) -> dict[str, Any] | None:
    rows = dt.to_pyarrow_table().to_pylist()
    if not rows:
        return None
    row = max(rows, key=lambda r: r["version"])
    mse = row["holdout_mse"]
    return {**row, "holdout_mse": None if mse is None else json.loads(mse)}


def _champion_row(row: Mapping[str, Any], previous: str | None, version: int) -> pa.Table:
    mse = row.get("holdout_mse")
    values = {
        "run_id": str(row["run_id"]),
        "promoted_at": row.get("promoted_at") or datetime.now(UTC),
        "reason": row.get("reason"),
        "holdout_mse": None if mse is None else json.dumps(mse, sort_keys=True),
        "previous": previous,
        "version": version,
    }
    schema = pa.schema(
        pa.field(name, kind, metadata={COMMENT: text})
        for name, (kind, text) in _CHAMPION_COLUMNS.items()
    )
    return pa.Table.from_pylist([values], schema=schema)


def _checked_run(run_id: str) -> str:
    return _check_name("run_id", run_id)


def _check_name(what: str, name: str) -> str:
    # Partition values and table names become path segments and SQL literals: keep them plain.
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def _options(storage_options: StorageOptions, uri: str) -> dict[str, str] | None:
    """The caller's options, or the store layer's for the table's location (on a bucket:
    commits by conditional write, the endpoint from the AWS environment)."""
    return dict(storage_options) if storage_options else store.storage_options(uri)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
