"""`make bench`, issue 24 item 3: how long after a file is copied into the landing folder of the
running stack (`make serve`) its training run has published, and where those seconds go.

    python -m benchmarks.landing [--trials 5] [--checkout DIR]

Starts the stack of a fresh `git clone` of --checkout (default: this checkout's HEAD) in a
temporary folder, on a free port of 127.0.0.1: server, pool, deployments, worker, watcher. Lands
one warm-up file, then --trials files one after another (each once the one before has
published), each copied in as a producer would (no announcement), and reads each stage's time
from the server: the check's flow run created (the watcher's event, the trigger), Pending (the
worker took it: its poll), Running (its process started and imported the flow), the training
subflow Running, and the `runs` table's commit (finished_at). Stops the stack; prints and
writes its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from deltalake import DeltaTable

from benchmarks.generate import generate_table, write_csv
from benchmarks.processes import REPO, clean_clone, load_average, median, prefect_processes
from benchmarks.sections import replace_section
from tasks.landing.ledger import ledger_rows

ROWS = 40
STAGES = ("check created", "check Pending", "check Running", "training Running", "published")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sales_file(path: Path, trial: int) -> None:
    """A small file of good rows (benchmarks/generate.py), ids no earlier file used."""
    write_csv(generate_table(ROWS, seed=trial, bad_fraction=0, first_id=10**8 + 1000 * trial), path)


def stack_command(clone: Path, env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "scripts.local_prefect", *args],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"local_prefect {args[0]}: {done.stdout}{done.stderr}")
    return done.stdout


def when(text: str | None) -> float:
    return datetime.fromisoformat(text).timestamp() if text else float("nan")


def states(api: str, flow_run_id: str) -> dict[str, float]:
    """Each state type the flow run went through -> when it entered it (the first time)."""
    got = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": flow_run_id}, timeout=10)
    got.raise_for_status()
    seen: dict[str, float] = {}
    for state in sorted(got.json(), key=lambda s: s["timestamp"]):
        seen.setdefault(state["type"], when(state["timestamp"]))
    return seen


def flow_runs(api: str, flow_name: str) -> list[dict]:
    body = {"flows": {"name": {"any_": [flow_name]}}, "sort": "EXPECTED_START_TIME_ASC"}
    got = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10)
    got.raise_for_status()
    return got.json()


def checks_going(api: str) -> bool:
    """Whether a landing check is under way or queued (the fallback poll's future runs aside):
    a check that runs waits out the trigger's window and would take the next file itself."""
    return any(
        run["state"]["type"] in ("SCHEDULED", "PENDING", "RUNNING", "CANCELLING")
        and run["state"]["name"] != "Scheduled"
        for run in flow_runs(api, "watch-landing")
    )


def trained(clone: Path, name: str) -> str | None:
    """The flow run id of the training run that used the landed file, once that run ended."""
    for row in ledger_rows(str(clone / "data" / "ledger")):
        if row["name"] == name and row["run_status"]:
            manifest = clone / "output" / "manifests" / f"{row['run_id']}.json"
            return json.loads(manifest.read_text())["flow_run_id"]
    return None


def runs_version(output: Path) -> int:
    """The `runs` table's version (-1 before its first commit)."""
    runs = output / "runs"
    return DeltaTable(str(runs)).version() if (runs / "_delta_log").exists() else -1


def committed(output: Path, after: int) -> float:
    """When the `runs` table's first commit after version `after` was made: the run's row (a
    trial has one training run, and its row is the run's last write)."""
    history = DeltaTable(str(output / "runs")).history()
    return min(entry["timestamp"] for entry in history if entry["version"] > after) / 1000


def wait(what: str, ready, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := ready():
            return found
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


def land_one(clone: Path, api: str, trial: int, timeout: float = 180) -> dict[str, float]:
    """Copy a file in once no check is under way; seconds from the copy to each stage."""
    wait("the landing checks before to end", lambda: not checks_going(api), timeout)
    source = clone.parent / f"bench-{trial:02d}.csv"
    sales_file(source, trial)
    before = runs_version(clone / "output")
    copied = time.time()
    (clone / "data" / "landing" / source.name).write_bytes(source.read_bytes())
    training_id = wait(f"{source.name} trained", lambda: trained(clone, source.name), timeout)
    check = min(
        (run for run in flow_runs(api, "watch-landing") if when(run["created"]) >= copied),
        key=lambda run: run["created"],
    )
    check_states, training = states(api, check["id"]), states(api, training_id)
    marks = (
        when(check["created"]),
        check_states.get("PENDING", float("nan")),
        check_states.get("RUNNING", float("nan")),
        training.get("RUNNING", float("nan")),
        committed(clone / "output", before),
    )
    return {stage: mark - copied for stage, mark in zip(STAGES, marks, strict=True)}


def render(trials: list[dict[str, float]], warmup: dict[str, float], context: str) -> str:
    lines = [
        "### Landing -> published (`benchmarks/landing.py`)",
        "",
        context,
        "",
        "| trial | " + " | ".join(STAGES) + " |",
        "|---|" + "---:|" * len(STAGES),
        "| warm-up | " + " | ".join(f"{warmup[s]:.1f}" for s in STAGES) + " |",
    ]
    for number, trial in enumerate(trials, 1):
        lines.append(f"| {number} | " + " | ".join(f"{trial[s]:.1f}" for s in STAGES) + " |")
    lines.append(
        "| **median** | "
        + " | ".join(f"{median([t[s] for t in trials]):.1f}" for s in STAGES)
        + " |"
    )
    lines.append("| max | " + " | ".join(f"{max(t[s] for t in trials):.1f}" for s in STAGES) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.landing")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--checkout", type=Path, default=REPO)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    commit = subprocess.run(
        ["git", "-C", str(args.checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-landing-") as tmp:
        clone = clean_clone(args.checkout, Path(tmp) / "checkout")
        drop = ("PREFECT_", "SALES_MODEL_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            PREFECT_HOME=str(clone / ".prefect"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
        )
        port = free_port()
        stack_command(clone, env, "start", "--port", str(port))
        api = f"http://127.0.0.1:{port}/api"
        try:
            warmup = land_one(clone, api, 0)
            trials = [land_one(clone, api, n) for n in range(1, args.trials + 1)]
        except Exception:
            kept = Path(tempfile.mkdtemp(prefix="bench-landing-logs-"))
            shutil.copytree(clone / ".run", kept / "run", ignore=shutil.ignore_patterns("*.sock"))
            shutil.copytree(clone / "data", kept / "data")
            print(f"the stack's logs and data: {kept}", file=sys.stderr)
            raise
        finally:
            stack_command(clone, env, "stop")
            left = prefect_processes(clone)
        if left:
            print(f"warning: processes left running: {left}", file=sys.stderr)
    context = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {commit}, a fresh clone's "
        f"`make serve` stack on 2 cores (load average {load_average()}): a {ROWS}-row file "
        "copied into data/landing/ (no announcement), one after another. Seconds after the "
        "copy: the check's flow run created (the watcher's event and the trigger), Pending (the "
        "worker's poll took it), Running (its process started and imported the flow), the "
        "training subflow Running, the `runs` table's commit (the run is published)."
    )
    body = render(trials, warmup, context)
    print(body)
    if not args.no_write:
        replace_section(REPO / "BENCHMARKS.md", "landing", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
