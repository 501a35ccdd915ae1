"""`make bench`: measure the floor, the pandas/pandera/scikit-learn peer, this pipeline's steps
and the whole flow through Prefect, side by side in one run, and write their section of
BENCHMARKS.md (benchmarks/sections.py: the rest of the file is kept).

    python -m benchmarks.run [--sizes 1000000 10000000] [--out BENCHMARKS.md]

Each case runs in a fresh process (its peak RSS is its own, read with wait4); the flow case
talks to a `prefect server` this script starts on 127.0.0.1 and stops when done.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.processes import data_file
from benchmarks.sections import replace_section, unmarked_block
from benchmarks.server import prefect_server

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Above this many rows the peers and the whole-file floor would need tens of GB: the streaming
# floor stands in.
BIG_ROWS = 50_000_000


def cases_for(rows: int) -> tuple[str, ...]:
    if rows > BIG_ROWS:
        return ("stream_floor", "steps")
    cases = ("floor", "stream_floor", "peer", "polars_peer", "steps", "score", "flow")
    return (*cases, "incremental", "stats") if rows == 10_000_000 else cases


def run_case(case: str, csv: Path, out: Path, env: dict) -> dict:
    return measure(["-m", "benchmarks.cases", case, str(csv), str(out)], env)


def measure(command: list[str], env: dict) -> dict:
    """`python COMMAND` in a fresh process: the JSON of its last output line, with its peak RSS
    (wait4), or {"error": ...} when it failed."""
    proc = subprocess.Popen(
        [sys.executable, *command],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}"}
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000, 100_000_000]
    )
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()

    inputs = {rows: data_file(rows) for rows in args.sizes}  # before any measurement
    home = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    results: dict[int, dict[str, dict]] = {}
    try:
        with prefect_server(home) as env:
            for rows in args.sizes:
                csv = inputs[rows]
                results[rows] = {}
                for case in cases_for(rows):
                    out = Path(tempfile.mkdtemp(prefix=f"bench-{case}-"))
                    case_env = {
                        **env,
                        "SALES_MODEL_DATA_ROOTS": str(csv.parent),
                        "SALES_MODEL_OUTPUT_ROOTS": str(out),
                    }
                    results[rows][case] = run_case(case, csv, out, case_env)
                    shutil.rmtree(out, ignore_errors=True)
                    print(rows, case, results[rows][case], flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    replace_section(args.out, SECTION, render(results), legacy=LEGACY_SECTION)
    print(f"wrote its section of {args.out}")


# rows -> (steps / floor, peer / steps, peak RSS in MB), the targets; the floor of
# the 100M row is the streaming one, and no peer runs there.
TARGETS = {1_000_000: (1.5, 2.5, 700), 10_000_000: (1.3, 3.0, 800), 100_000_000: (1.5, None, 800)}


# This script's section of BENCHMARKS.md; before it had markers, the block from its first line
# to its last.
SECTION = "benchmarks.run"
LEGACY_SECTION = unmarked_block(
    lambda line: line.startswith("Measured ") and "by `make bench`" in line,
    lambda line: line.startswith("Reproduce: `make bench`"),
)


def render(results: dict[int, dict[str, dict]]) -> str:
    """This script's section of BENCHMARKS.md: every measurement, then the ratios against the
    targets."""
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench` on "
        f"{os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}; one run, all cases side by side, each in a fresh process"
        " (peak RSS from wait4; about 400 MB of it is the imports of torch, polars, pandera and"
        " Prefect). Input: a generated sales CSV (`benchmarks/generate.py`, seed 0, correlated"
        " features, 2% of rows with one bad value).",
        "",
        "Cases:",
        "- **floor**: pyarrow `read_csv` (inferred types, all threads) + writing a"
        " predictions-sized Parquet file.",
        "- **stream_floor**: pyarrow `open_csv` (8 MB blocks) + a batched Parquet write of the"
        " same size: the floor for inputs bigger than memory.",
        "- **peer**: pandas `read_csv` + pandera (lazy, failing rows dropped) + scikit-learn"
        " `LinearRegression` + `to_parquet`.",
        "- **polars_peer**: polars `read_csv` (bad numbers null) + pandera[polars] (lazy,"
        " failing rows dropped) + numpy `lstsq` + `write_parquet`.",
        "- **steps**: this pipeline's steps called directly, default options: pass 1 (read,"
        " check, quarantine with reasons, duplicate keys, statistics), training (the default"
        " solver), pass 2 (predictions), publish every table, the report and the manifest.",
        "- **stats** (10M rows): pass 1's statistics alone, the QR factor of 10M generated rows"
        " (three features and the target, float64) in 120k-row blocks merged in order, the"
        " fastest of 5: the part of pass 1 that grows with the design's columns.",
        "- **score**: `score-sales`' steps on the same file: pass 1 of the features, the scores,"
        " publish.",
        "- **flow**: the whole `train-sales-model` flow, default options, against a running"
        " `prefect server` on 127.0.0.1 (a first run: it parses everything and fills the"
        " pass-1 cache).",
        "- **incremental** (10M rows): the flow on the file alone fills the pass-1 cache; then"
        " on the file plus a landed file of 100k rows: the retrain, the same run again (an"
        " unchanged dataset) and a `--no-cache` run.",
        "",
        "| rows | case | seconds | peak RSS (MB) | notes |",
        "|---:|---|---:|---:|---|",
    ]
    for rows, cases in results.items():
        for case, r in cases.items():
            note = r.get("error", "")
            if "relative_gap" in r:
                note = f"gap to least squares {r['relative_gap']:.1e}"
            if "solver" in r:
                note += f", {r['solver']} solver, {r['epochs']} epochs"
            seconds = r.get("seconds", float("nan"))
            lines.append(
                f"| {rows:,} | {case} | {seconds:.2f} | {r.get('peak_rss_mb', float('nan')):.0f} "
                f"| {note} |"
            )
    lines += [
        "",
        "Against the targets (met: yes/no):",
        "",
        "| rows | steps / floor | peer / steps | steps peak RSS (MB) | gap to optimum |"
        " flow - steps (s) | score / floor |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rows, c in results.items():
        # a case that failed or did not run: its measures NaN ("not run")
        seconds = {case: c.get(case, {}).get("seconds", np.nan) for case in cases_for(rows)}
        steps = c.get("steps", {})
        floor = seconds["floor"] if "floor" in c else seconds["stream_floor"]
        target = TARGETS.get(rows, (None, None, None))
        ratio = seconds["steps"] / floor
        peer = seconds["peer"] / seconds["steps"]
        at_10m = rows == 10_000_000
        flow_extra = seconds["flow"] - seconds["steps"]
        score = seconds["score"] / floor
        cells = [
            _against(ratio, target[0], "x", lower=True),
            _against(peer, target[1], "x", lower=False),
            _against(steps.get("peak_rss_mb", np.nan), target[2], "", lower=True, digits=0),
            _against(steps.get("relative_gap", np.nan), 1e-9, "", lower=True, exp=True),
            _against(flow_extra, 2.0 if at_10m else None, " s", lower=True),
            _against(score, 1.3 if at_10m else None, "x", lower=True),
        ]
        lines.append(f"| {rows:,} | {' | '.join(cells)} |")
    lines += incremental_lines(results)
    lines += [
        "",
        "Reproduce: `make bench` (about fifteen minutes; the generated CSVs, 3.4 GB for 100M rows,"
        " are cached in `benchmarks/.data/`, which git ignores). Absolute seconds drift on these"
        " shared machines; compare the ratios, which come from one run.",
        "",
    ]
    return "\n".join(lines)


def incremental_lines(results: dict[int, dict[str, dict]]) -> list[str]:
    """The pass-1 cache's rows: each run's seconds and what it parsed, against --no-cache."""
    runs = results.get(10_000_000, {}).get("incremental", {}).get("runs")
    if not runs:
        return []
    base = runs["no_cache"]["seconds"]
    lines = [
        "",
        "Pass-1 cache, 10M rows + a landed file of 100k rows (one process, in this order):",
        "",
        "| run | seconds | of --no-cache | in the training slot (s) | of --no-cache | rows"
        " parsed | bytes parsed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    targets = {"retrain": 0.5, "unchanged": None, "no_cache": None}
    slot_base = runs["no_cache"]["in_slot"]
    for name, run in runs.items():
        share = _against(run["seconds"] / base, targets[name], "", lower=True)
        in_slot = _against(run["in_slot"] / slot_base, targets[name], "", lower=True)
        lines.append(
            f"| {name} | {run['seconds']:.2f} | {share} | {run['in_slot']:.2f} | {in_slot} | "
            f"{run['parsed_rows']:,} | {run['parsed_bytes']:,} |"
        )
    lines += [
        "",
        "Seconds are the flow call's; \"in the training slot\" counts from the run's start "
        "(`started_at`, taken once the run holds the training slot: Prefect made a run right "
        "after another wait up to 1.8 s for it) to its return.",
    ]
    return lines


def _against(
    value: float,
    target: float | None,
    unit: str,
    *,
    lower: bool,
    digits: int = 2,
    exp: bool = False,
) -> str:
    """`1.42x (target <= 1.3x: no)`; `not run` for a case that did not run."""
    if value != value:
        return "not run"
    shown = f"{value:.1e}" if exp else f"{value:.{digits}f}{unit}"
    if target is None:
        return shown
    met = value <= target if lower else value >= target
    bound = f"{target:.0e}" if exp else f"{target:g}{unit}"
    return f"{shown} (target {'<=' if lower else '>='} {bound}: {'yes' if met else 'no'})"


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"took {time.time() - started:.0f} s")
