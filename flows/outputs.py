"""Upkeep of an output root between runs: vacuum its tables, or migrate an earlier release's.

    .venv/bin/python -m flows.outputs vacuum --output DIR [--hours N]     (make vacuum)
    .venv/bin/python -m flows.outputs migrate --output DIR               (make migrate)

`vacuum` removes the rows of runs that died before their commit and deletes the files no version
of the last N hours needs (SALES_MODEL_VACUUM_HOURS, default 24: runs vacuum that way after
their commit too). `migrate` converts an output root of an earlier release (Parquet folders
committed by manifests) into Delta tables in place.
"""

from __future__ import annotations

import argparse
import sys

from flows.cli import exit_now
from schemas.params import DEFAULT_OUTPUT
from tasks.common.errors import ParameterError, PipelineError, exit_code
from tasks.common.paths import existing_folder, output_roots
from tasks.common.storage import output_root
from tasks.common.store import Location, is_remote
from tasks.outputs.maintenance import migrate_outputs, vacuum_outputs
from tasks.outputs.retention import (
    DEFAULT_VACUUM_HOURS,
    MAX_VACUUM_HOURS,
    VACUUM_HOURS_ENV,
    vacuum_hours,
)


def vacuum(root: Location, hours: float) -> str:
    """Vacuum `root`; what was removed, as lines for the terminal."""
    if not 0 <= hours <= MAX_VACUUM_HOURS:
        raise ParameterError(
            f"parameter hours: must be from 0 to {MAX_VACUUM_HOURS:g} (got {hours:g})"
        )
    done = vacuum_outputs(root, hours)
    files = sum(done.deleted.values())
    tables = ", ".join(f"{table} {count}" for table, count in done.deleted.items() if count)
    return (
        f"vacuumed {root}: rows of {len(done.orphans)} run(s) that died before their commit "
        f"removed; {files} file(s) no version of the last {hours:g} h needs deleted"
        + (f" ({tables})" if tables else "")
    )


def migrate(root: Location) -> str:
    """Migrate `root`; what was done, as lines for the terminal."""
    done = migrate_outputs(root)
    if not (done.converted or done.recorded):
        return f"nothing to migrate in {root}: its tables are Delta tables already"
    lines = [
        f"converted to Delta tables: {', '.join(done.converted) or 'none'}",
        f"runs recorded from their manifests: {len(done.recorded)}",
    ]
    if done.dropped:
        dropped = ", ".join(done.dropped)
        lines.append(f"removed the runs without a manifest (never committed): {dropped}")
    if done.champion:
        lines.append(f"champion: {done.champion}")
    return "\n".join(lines)


def output_folder(output: str) -> Location:
    """The output root to work on: an existing local folder, or an s3:// root whose bucket
    answers (a prefix has no folder to exist)."""
    if is_remote(output):
        return output_root(output)
    return existing_folder(output, output_roots(), "output")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m flows.outputs", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    vacuum_command = commands.add_parser("vacuum", help="vacuum the output root's tables")
    vacuum_command.add_argument(
        "--hours",
        type=float,
        help="keep the files the versions of the last this many hours need (default "
        f"{VACUUM_HOURS_ENV}, or {DEFAULT_VACUUM_HOURS:g}); 0 breaks reads and runs in flight",
    )
    migrate_command = commands.add_parser("migrate", help="convert an earlier release's outputs")
    for command in (vacuum_command, migrate_command):
        command.add_argument(
            "--output", default=DEFAULT_OUTPUT, help=f"the output root (default {DEFAULT_OUTPUT})"
        )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 done, 2 for a parameter refused, 1 for another user error."""
    args = parse_args(argv)
    try:
        root = output_folder(args.output)
        if args.command == "vacuum":
            print(vacuum(root, vacuum_hours() if args.hours is None else args.hours))
        else:
            print(migrate(root))
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code(exc)
    return 0


if __name__ == "__main__":
    # Without the interpreter's teardown: delta-rs' and Arrow's threads can abort it
    # ("terminate called without an active exception") after the work is done.
    exit_now(main())
