"""The 10M-row training read from and written to an S3 API server against the same run on the
local disk (issue target: at most 1.3x):

    python -m benchmarks.object_store [--rows 10000000] [--repeat 2]

Both cases run the whole `train-sales-model` flow with `--no-cache` in a fresh process each,
interleaved, against one `prefect server` and one local S3 server (`moto_server`,
scripts/s3_server.py) this script starts on 127.0.0.1 and stops. The CSV is uploaded once
before any measurement. Prints seconds, peak RSS and the CPU seconds the S3 server used during
each run (on a 2-core machine they are taken from the pipeline), then best and median per case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.run import data_file, measure
from benchmarks.server import prefect_server
from scripts import s3_server

BUCKET = "bench"


def train(data: str, output: str) -> dict:
    """One training, timed, in this process (a child of main)."""
    from flows.train import train_sales_model

    started = time.perf_counter()
    manifest = train_sales_model(data=data, output=output, use_cache=False)
    return {"seconds": time.perf_counter() - started, "rows": manifest["rows"]["in"]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(data: str, output: str, env: dict) -> dict:
    return measure(["-m", "benchmarks.object_store", "--case", data, output], env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--case", nargs=2, metavar=("DATA", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(train(*args.case)))
        return
    csv = data_file(args.rows)
    scratch = Path(tempfile.mkdtemp(prefix="bench-store-"))
    moto, endpoint = s3_server.start(scratch / "moto.log")
    extra = {
        **s3_server.environment(endpoint),
        "SALES_MODEL_CACHE_DIR": str(scratch / "cache"),
        "SALES_MODEL_DATA_ROOTS": f"{csv.parent}:s3://{BUCKET}/in",
        "SALES_MODEL_OUTPUT_ROOTS": f"{scratch / 'out'}:s3://{BUCKET}/out",
    }
    try:
        with prefect_server(scratch / "prefect", **extra) as env:
            os.environ.update(s3_server.environment(endpoint))
            from tasks.common import store

            s3_server.create_bucket(endpoint, BUCKET)
            uploaded = time.perf_counter()
            with csv.open("rb") as source, store.open_output(f"s3://{BUCKET}/in/sales.csv") as sink:
                shutil.copyfileobj(source, sink, 16 << 20)
            print(
                f"uploaded {csv.stat().st_size:,} bytes in {time.perf_counter() - uploaded:.1f} s"
            )
            cases = {
                "local disk": (str(csv), str(scratch / "out" / "model")),
                "S3 server": (f"s3://{BUCKET}/in/sales.csv", f"s3://{BUCKET}/out/model"),
            }
            results: dict[str, list[dict]] = {name: [] for name in cases}
            for attempt in range(args.repeat):
                for name, (data, output) in cases.items():
                    before = cpu_seconds(moto.pid)
                    result = run_case(data, f"{output}-{attempt}", env)
                    result["s3_server_cpu_seconds"] = cpu_seconds(moto.pid) - before
                    results[name].append(result)
                    print(args.rows, name, result, flush=True)
            for name, runs in results.items():
                seconds = [r["seconds"] for r in runs if "seconds" in r]
                if seconds:
                    median = statistics.median(seconds)
                    print(f"{name}: best {min(seconds):.2f} s, median {median:.2f} s")
    finally:
        s3_server.stop(moto)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
