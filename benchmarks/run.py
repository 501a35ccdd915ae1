"""`make bench`: measure the floor, the pandas/pandera/scikit-learn peer, this pipeline's steps
and the whole flow through Prefect, side by side in one run, and write BENCHMARKS.md.

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

from benchmarks.generate import generate_table, write_csv
from flows.cli import OFFLINE_ENV
from scripts.local_prefect import HOST, free_port, wait_healthy

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CASES = ("floor", "peer", "steps", "flow")


def data_file(rows: int) -> Path:
    path = HERE / ".data" / f"sales_{rows}.csv"
    if not path.exists():
        write_csv(generate_table(rows, seed=0), path)
    return path


def run_case(case: str, csv: Path, out: Path, env: dict) -> dict:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.cases", case, str(csv), str(out)],
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
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    port = free_port()
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://{HOST}:{port}/api",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    results: dict[int, dict[str, dict]] = {}
    try:
        wait_healthy(env["PREFECT_API_URL"], server, home / "server.log", timeout=90)
        for rows in args.sizes:
            csv = data_file(rows)
            results[rows] = {}
            for case in CASES:
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
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    args.out.write_text(render(results))
    print(f"wrote {args.out}")


def render(results: dict[int, dict[str, dict]]) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `make bench` on "
        f"{os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}; one run, all cases"
        " side by side, each in a fresh process (peak RSS from wait4). Input: a generated sales CSV"
        " (`benchmarks/generate.py`, seed 0, correlated features, 2% of rows with one bad value).",
        "",
        "Cases:",
        "- **floor**: pyarrow `read_csv` (inferred types, all threads) + writing a"
        " predictions-sized Parquet file.",
        "- **peer**: pandas `read_csv` + pandera (lazy, failing rows dropped) + scikit-learn"
        " `LinearRegression` + `to_parquet`.",
        "- **steps**: this pipeline's functions called directly: read, validate (quarantine with"
        " reasons), split, tensors, train (`moments` solver), evaluate, publish every table, the"
        " report and the manifest.",
        "- **flow**: the whole `train-sales-model` flow (`--solver moments`) against a running"
        " `prefect server` on 127.0.0.1.",
        "",
        "| rows | case | seconds | peak RSS (MB) | notes |",
        "|---:|---|---:|---:|---|",
    ]
    for rows, cases in results.items():
        for case, r in cases.items():
            note = r.get("error", "")
            if "relative_gap" in r:
                note = f"gap to least squares {r['relative_gap']:.1e}"
            if "epochs" in r:
                note += f", {r['epochs']} epochs"
            seconds = r.get("seconds", float("nan"))
            lines.append(
                f"| {rows:,} | {case} | {seconds:.2f} | {r.get('peak_rss_mb', float('nan')):.0f} "
                f"| {note} |"
            )
    lines += [
        "",
        "Ratios and targets (targets are for 10M rows):",
        "",
        "| rows | steps / floor | peer / steps | flow - steps (s) | steps peak RSS (MB) |"
        " gap to optimum |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for rows, c in results.items():
        if any("error" in r for r in c.values()):
            continue
        lines.append(
            f"| {rows:,} | {c['steps']['seconds'] / c['floor']['seconds']:.1f}x "
            f"| {c['peer']['seconds'] / c['steps']['seconds']:.2f}x "
            f"| {c['flow']['seconds'] - c['steps']['seconds']:+.1f} "
            f"| {c['steps']['peak_rss_mb']:.0f} | {c['steps']['relative_gap']:.1e} |"
        )
    lines += [
        "| target | <= 1.3x | >= 2.5x | <= +3.0 | <= 1024 | <= 1e-9 |",
        "",
        "Reproduce: `make bench` (a few minutes; the generated CSVs are cached in"
        " `benchmarks/.data/`, which git ignores). Absolute seconds drift on these shared"
        " machines; compare the ratios, which come from one run.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"took {time.time() - started:.0f} s")
