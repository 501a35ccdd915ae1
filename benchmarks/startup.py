"""`make bench`, issue 24: the import time of the flows; the 200-row run as a user runs it (first
use, server stopped, server running); the whole command-line process with `--no-cache` against
the polars script run as a process too, imports included. Prints its section of BENCHMARKS.md,
writes it there (the rest of the file is kept) and its numbers as JSON.

    python -m benchmarks.startup [--sizes 1000000 10000000] [--repeats 3] [--checkout DIR]

The command line runs in a fresh `git clone` of --checkout (default: this checkout's HEAD) in a
temporary folder, without PREFECT_API_URL and with its PREFECT_HOME in the clone's .prefect/: it
uses the server it finds or starts (Prefect's temporary one, or a local background server kept
under the clone's .run/ and .prefect/). Only the clone's .prefect/ and .run/ are ever removed;
`make stop` in the clone ends its server at the end, and no Prefect process is left there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.processes import (
    OFFLINE_ENV,
    REPO,
    clean_clone,
    data_file,
    load_average,
    peak_rss_mb,
    prefect_processes,
    prefect_server,
    stop_servers,
    timed,
    wait_for_runner,
)
from benchmarks.render_startup import render
from benchmarks.sections import replace_section

IMPORT = "import flows.train"
# Ours: their cumulative import time holds everything below them.
OURS = ("flows", "tasks", "schemas", "scripts")
SMALL_ROWS = 200
POLARS = ["-m", "benchmarks.cases", "polars_peer"]
# The command line in its own process, importing everything (flows/warm.py)
OWN_PROCESS = {"SALES_MODEL_WARM_RUNNER": "off"}


def user_env(clone: Path) -> dict[str, str]:
    """A user's environment: no Prefect server configured, no allowed-folder settings, Python
    writing its bytecode caches; Prefect's home in the clone (not this machine's ~/.prefect)."""
    drop = ("PREFECT_", "SALES_MODEL_", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **OFFLINE_ENV, "PREFECT_HOME": str(clone / ".prefect")}


def import_times(clone: Path, env: dict[str, str], runs: int = 5, traces: int = 3) -> dict:
    """`-X importtime` of `import flows.train`, the trace of median total of `traces` (the sum
    of its top-level imports, and each third-party package's cumulative seconds), and the wall
    seconds of `runs` fresh processes doing only that import (after one that writes the
    bytecode caches)."""
    timed(["-c", IMPORT], env, clone)
    parsed = sorted(
        (parse_importtime(trace_imports(clone, env)) for _ in range(traces)), key=lambda t: t[0]
    )
    total, packages = parsed[len(parsed) // 2]
    walls = [timed(["-c", IMPORT], env, clone)["seconds"] for _ in range(runs)]
    heaviest = sorted(packages.items(), key=lambda item: -item[1])[:8]
    return {
        "importtime_s": total,
        "importtime_each_s": [t for t, _ in parsed],
        "packages_s": dict(heaviest),
        "wall_s": walls,
    }


def trace_imports(clone: Path, env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-c", IMPORT],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr


def parse_importtime(stderr: str) -> tuple[float, dict[str, float]]:
    """(seconds of the imports after the interpreter's start-up, {package: cumulative seconds
    of its outermost imports}) from `-X importtime` lines (children print before parents)."""
    entries = []
    for line in stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        name = fields[2]
        entries.append(((len(name) - len(name.lstrip()) - 1) // 2, name.strip(), int(fields[1])))
    tops = [i for i, (depth, name, _) in enumerate(entries) if depth == 0 and name == "site"]
    entries = entries[tops[-1] + 1 :] if tops else entries
    total = sum(us for depth, _, us in entries if depth == 0) / 1e6
    packages: dict[str, float] = {}
    roots: list[str] = []
    for depth, name, us in reversed(entries):  # parents first
        root = name.split(".")[0]
        del roots[depth:]
        if root not in OURS and (not roots or roots[-1] != root):
            packages[root] = packages.get(root, 0.0) + us / 1e6
        roots.append(root)
    return total, packages


def small_runs(clone: Path, env: dict[str, str], repeats: int) -> dict:
    """The 200-row run, `repeats` times each: first use (the clone's .prefect/ and .run/
    removed, server stopped), cold (server stopped, its database kept), its own process with
    the server up (the warm runner off), warm (the server and the warm runner up)."""
    csv = clone / "data" / f"bench_{SMALL_ROWS}.csv"
    generate = ["-m", "benchmarks.generate", "--rows", str(SMALL_ROWS), "--out", str(csv)]
    subprocess.run([sys.executable, *generate], cwd=REPO, check=True)
    runs: dict = {"first": [], "cold": [], "process": [], "warm": []}
    for kind in runs:
        for i in range(repeats):
            if kind in ("first", "cold"):
                stop_servers(clone, env)
            if kind == "first":
                for state in (".prefect", ".run"):
                    shutil.rmtree(clone / state, ignore_errors=True)
            if kind == "warm" and not wait_for_runner(clone):
                print("no warm runner came up: the warm runs run in their own process")
            output = clone / "output" / f"bench-{kind}-{i}"
            command = ["-m", "flows.train", "--data", str(csv), "--output", str(output)]
            kind_env = {**env, **(OWN_PROCESS if kind == "process" else {})}
            runs[kind].append(timed(command, kind_env, clone))
            shutil.rmtree(output, ignore_errors=True)
    servers = prefect_processes(clone)
    runs["servers_left_running"] = {str(pid): peak_rss_mb(pid) for pid in servers}
    return runs


def confined(env: dict[str, str], csv: Path, out: Path) -> dict[str, str]:
    """`env` allowing the command line to read `csv` (also where its symlink points) and write
    `out`."""
    roots = os.pathsep.join(dict.fromkeys([str(csv.parent), str(csv.resolve().parent)]))
    return {**env, "SALES_MODEL_DATA_ROOTS": roots, "SALES_MODEL_OUTPUT_ROOTS": str(out)}


def whole_process(
    clone: Path, env: dict[str, str], sizes: list[int], repeats: int, home: Path
) -> dict:
    """At each size, interleaved `repeats` times: the polars script, the command line with
    `--no-cache` in its own process against a server started here, and the same as a user with
    no server configured (the local server and its warm runner, waited for); each a whole
    process writing to a new folder."""
    results: dict = {}
    with prefect_server(home, env) as server_env:
        modes = {"polars": env, "cli_server": {**server_env, **OWN_PROCESS}, "cli_user": env}
        if not wait_for_runner(clone):  # up since the 200-row runs
            print("no warm runner: the user's runs run in their own process")
        for rows in sizes:
            csv = data_file(rows)
            runs: dict[str, list] = {mode: [] for mode in modes}
            for _ in range(repeats):
                for mode, base in modes.items():
                    out = Path(tempfile.mkdtemp(prefix=f"bench-{mode}-"))
                    if mode == "polars":
                        command, cwd = [*POLARS, str(csv), str(out)], REPO
                    else:
                        command, cwd = cli_no_cache(csv, out), clone
                    runs[mode].append(timed(command, confined(base, csv, out), cwd))
                    shutil.rmtree(out, ignore_errors=True)
                    print(rows, mode, runs[mode][-1], flush=True)
            results[rows] = runs
    return results


def cli_no_cache(csv: Path, out: Path) -> list[str]:
    return ["-m", "flows.train", "--data", str(csv), "--output", str(out), "--no-cache"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkout", type=Path, default=REPO)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / ".data" / "startup.json")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--no-profile", action="store_true", help="no profile of a missed target")
    args = parser.parse_args()

    for rows in args.sizes:
        data_file(rows)  # before any measurement
    folder = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    clone = clean_clone(args.checkout, folder / "checkout")
    env = user_env(clone)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True
    ).stdout.strip()
    results: dict = {"measured_at": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "commit": commit}
    results["cores"] = os.cpu_count()
    try:
        results["load"] = {"start": load_average()}
        results["imports"] = import_times(clone, env)
        results["small"] = small_runs(clone, env, args.repeats)
        results["load"]["small"] = load_average()
        results["whole"] = whole_process(clone, env, args.sizes, args.repeats, folder / "home")
        results["load"]["whole"] = load_average()
        if not args.no_profile:
            results["profile"] = profile_misses(clone, env, results["whole"])
    finally:
        results["left_after_stop"] = stop_servers(clone, env)
        results["still_running"] = prefect_processes(clone)
        shutil.rmtree(folder, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    section = render(results)
    print(section)
    replace_section(args.out, "startup", section)
    print(f"wrote {args.json} and its section of {args.out}")


def profile_misses(clone: Path, env: dict[str, str], whole: dict) -> dict:
    """One run of the command line as a user runs it, under py-spy, at each size where it
    missed a target (benchmarks/render_startup.py: TARGETS)."""
    from benchmarks.render_startup import missed
    from benchmarks.spy import profile

    profiles = {}
    for rows, runs in whole.items():
        if missed(rows, runs):
            csv = data_file(rows)
            out = Path(tempfile.mkdtemp(prefix="bench-profile-"))
            own = confined({**env, **OWN_PROCESS}, csv, out)
            profiles[rows] = profile(cli_no_cache(csv, out), own, clone)
            shutil.rmtree(out, ignore_errors=True)
    return profiles


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"took {time.time() - started:.0f} s")
