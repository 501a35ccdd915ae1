"""benchmarks/startup.py's section of BENCHMARKS.md, from its results, against issue 24's
targets."""

from __future__ import annotations

from benchmarks.processes import median

IMPORT_TARGET = 1.8  # seconds of `-X importtime` for `import flows.train`
SMALL_TARGETS = {"first": None, "cold": 8.0, "process": None, "warm": 3.0}  # s, 200 rows
# rows -> (command line / polars script, peak RSS of the command line in MB)
TARGETS = {1_000_000: (3.0, 450), 10_000_000: (1.5, 600)}
SMALL_KINDS = {
    "first": "first use: no .prefect/ (no database), no server",
    "cold": "cold: server stopped, its database kept",
    "process": "server running, the run in its own process (SALES_MODEL_WARM_RUNNER=off)",
    "warm": "warm: server and warm runner running (the run forked from it)",
}


def check(value: float, target: float | None, digits: int = 2, unit: str = "") -> str:
    """`1.42 (target <= 1.3: no)`; `failed` for NaN."""
    if value != value:
        return "failed"
    shown = f"{value:.{digits}f}{unit}"
    if target is None:
        return shown
    return f"{shown} (target <= {target:g}{unit}: {'yes' if value <= target else 'no'})"


def seconds_of(runs: list[dict]) -> list[float]:
    return [r["seconds"] if r["exit"] == 0 else float("nan") for r in runs]


def ratio(runs: dict, mode: str) -> float:
    return median(seconds_of(runs[mode])) / median(seconds_of(runs["polars"]))


def peak(runs: list[dict]) -> float:
    return max((r["peak_rss_mb"] for r in runs if r["exit"] == 0), default=float("nan"))


def missed(rows: int, runs: dict) -> bool:
    """Whether the command line missed its time target (in either mode) or its memory target
    (in its own process: a forked run's RSS leaves out the runner's pages it never touches)."""
    time_target, rss_target = TARGETS.get(rows, (None, None))
    modes = ("cli_server", "cli_user")
    slow = time_target is not None and any(not ratio(runs, m) <= time_target for m in modes)
    heavy = rss_target is not None and not peak(runs["cli_server"]) <= rss_target
    return slow or heavy


def not_warm(runs: list[dict]) -> str:
    """` (N of M in their own process: no warm runner)` when the runner did not run them all."""
    cold = sum(not r.get("warm") for r in runs)
    return f" ({cold} of {len(runs)} in their own process: no warm runner)" if cold else ""


def render(results: dict) -> str:
    load = results["load"]
    lines = [
        f"## Start-up, and the whole process against the polars script ({results['measured_at']})",
        "",
        f"`benchmarks/startup.py` (part of `make bench`) at commit {results['commit']}, in a fresh"
        f" clone, on {results['cores']} cores; load average (1, 5, 15 min) at the start"
        f" {load['start']}, after the 200-row runs {load.get('small', '-')}, after the whole"
        f" runs {load.get('whole', '-')}. Wall seconds of whole commands and the peak RSS of the"
        " process that ran the pipeline (wait4's for a command in its own process; the warm"
        " runner's child's VmHWM when the runner ran it); medians, compare the ratios (taken in"
        " one run, interleaved).",
        "",
        *import_lines(results["imports"]),
        *small_lines(results["small"]),
        *whole_lines(results.get("whole", {})),
        *profile_lines(results.get("profile", {})),
        f"Prefect processes left in the clone after `make stop`: {results['left_after_stop']}"
        f" (killed); still running at the end: {results['still_running']}.",
    ]
    return "\n".join(lines)


def import_lines(imports: dict) -> list[str]:
    heaviest = ", ".join(f"{name} {s:.2f}" for name, s in imports["packages_s"].items())
    return [
        f"`import flows.train`: {check(imports['importtime_s'], IMPORT_TARGET, unit=' s')} in"
        f" `python -X importtime` (median of {listed_s(imports.get('importtime_each_s', []))});"
        f" {median(imports['wall_s']):.2f} s wall for a whole"
        f' `python -c "import flows.train"` (median of {len(imports["wall_s"])} fresh'
        f" processes). Heaviest packages, cumulative seconds: {heaviest}.",
        "",
    ]


def small_lines(small: dict) -> list[str]:
    lines = [
        "`python -m flows.train --data <200-row CSV> --output <new folder>`, no PREFECT_API_URL:",
        "",
        "| run | seconds (median) | each run | peak RSS (MB) |",
        "|---|---:|---:|---:|",
    ]
    for kind, text in SMALL_KINDS.items():
        runs = small[kind]
        each = ", ".join(f"{s:.2f}" for s in seconds_of(runs))
        shown = check(median(seconds_of(runs)), SMALL_TARGETS[kind], unit=" s")
        flag = not_warm(runs) if kind == "warm" else ""
        lines.append(f"| {text}{flag} | {shown} | {each} | {peak(runs):.0f} |")
    errors = {r["error"] for kind in SMALL_KINDS for r in small[kind] if "error" in r}
    servers = small["servers_left_running"]
    lines += [
        "",
        (
            "After the warm runs these kept running (the Prefect server, its supervisor and the"
            " warm runner): peak RSS (MB) by PID "
            + ", ".join(f"{pid}: {mb:.0f}" for pid, mb in servers.items())
            + " (not in the runs' RSS; a forked run shares the runner's pages)."
            if servers
            else "After the warm runs no Prefect process was running: each run started and"
            " stopped its own server (its RSS is in the run's: wait4 counts waited children)."
        ),
        *(f"Failed: {error}" for error in sorted(errors)),
        "",
    ]
    return lines


def whole_lines(whole: dict) -> list[str]:
    if not whole:
        return []
    lines = [
        "Whole processes, `--no-cache` (polars: `benchmarks/cases.py polars_peer` as a process,"
        " its imports included), seconds (median), peak RSS in MB (largest):",
        "",
        "| rows | polars s | CLI in its own process (running server): s | / polars | CLI as a"
        " user (local server, warm runner): s | / polars | polars RSS | CLI RSS, own process"
        " | CLI RSS, warm runner's child |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rows, runs in whole.items():
        time_target, rss_target = TARGETS.get(int(rows), (None, None))
        cells = [
            f"{median(seconds_of(runs['polars'])):.2f}",
            f"{median(seconds_of(runs['cli_server'])):.2f}",
            check(ratio(runs, "cli_server"), time_target, unit="x"),
            f"{median(seconds_of(runs['cli_user'])):.2f}",
            check(ratio(runs, "cli_user"), time_target, unit="x"),
            f"{peak(runs['polars']):.0f}",
            check(peak(runs["cli_server"]), rss_target, digits=0),
            f"{peak(runs['cli_user']):.0f}{not_warm(runs['cli_user'])}",
        ]
        lines.append(f"| {int(rows):,} | {' | '.join(cells)} |")
    errors = {
        r["error"] for runs in whole.values() for m in runs.values() for r in m if "error" in r
    }
    return [*lines, *(f"Failed: {error}" for error in sorted(errors)), ""]


def profile_lines(profiles: dict) -> list[str]:
    lines = []
    for rows, p in profiles.items():
        lines += [
            f"Where the time goes, one CLI run at {int(rows):,} rows in its own process (under"
            f" py-spy, all threads: {p['wall_s']:.1f} s wall, {p['sampled_s']:.1f} s sampled over"
            " its active threads, in seconds):",
            "",
            f"- importing: {p['imports_s']:.2f} ({listed(p['imports_by_package'])})",
            f"- outside the pipeline's functions (Prefect's engine and its workers, library"
            f" threads): {p['outside_ours_s']:.2f} ({listed(p['outside_by_thread'])})",
            f"- the pipeline's functions, inclusive (nested ones count in their callers too):"
            f" {listed(p['ours'], quoted=True)}",
            "",
        ]
    return lines


def listed_s(values: list[float]) -> str:
    return ", ".join(f"{value:.2f}" for value in values)


def listed(items: list, quoted: bool = False) -> str:
    mark = "`" if quoted else ""
    return ", ".join(f"{mark}{name}{mark} {seconds:.2f}" for name, seconds in items)
