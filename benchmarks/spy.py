"""Where a whole command-line run spends its time: one run under py-spy (all threads, sampled
from outside, so the flow's threads and the process's exit are seen too), summed by the
pipeline's own functions.

    python -m benchmarks.spy -- -m flows.train --data FILE --output DIR --no-cache
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# The packages of this repository whose functions the summary names.
OURS = ("flows", "tasks", "schemas")
IMPORT_FRAME = "_find_and_load"
RATE = 100


def profile(command: list[str], env: dict[str, str], cwd: Path, top: int = 10) -> dict:
    """Run `python COMMAND` under py-spy; its wall seconds, the sampled seconds of its active
    threads, those spent importing, those outside the pipeline's functions (Prefect, the
    libraries' own threads), and the `top` functions of ours by inclusive seconds."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "stacks.txt"
        record = [spy, "record", "--rate", str(RATE), "--format", "raw", "--threads"]
        started = time.perf_counter()
        subprocess.run(
            [*record, "--output", str(raw), "--", sys.executable, *command],
            cwd=cwd,
            env={**env, "SALES_MODEL_WARM_RUNNER": "off"},  # the run in the profiled process
            capture_output=True,
            check=False,
        )
        wall = time.perf_counter() - started
        stacks = parse(raw.read_text()) if raw.exists() else []
    return {"wall_s": wall, **summarize(stacks, top)}


def parse(text: str) -> list[tuple[str, list[str], int]]:
    """py-spy's raw lines (`thread (id): name;frame (file:line);... count`) -> (thread name,
    frames, count), each frame `function (file)`, outermost first."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
        stacks.append((thread.partition("): ")[2], frames, int(count)))
    return stacks


def file_of(frame: str) -> str:
    return frame.rpartition(" (")[2].rstrip(")")


def is_ours(frame: str) -> bool:
    path = file_of(frame)
    return "site-packages" not in path and path.split("/")[0] in OURS


def imported_package(frames: list[str]) -> str:
    """The package an import stack is loading: the first module body run in it that is not
    ours (`torch` for `<module> (torch/__init__.py)`)."""
    for frame in frames:
        path = file_of(frame)
        if frame.startswith("<module>") and not is_ours(frame) and not path.startswith("<"):
            return path.split("site-packages/")[-1].split("/")[0].removesuffix(".py")
    return "ours"


def summarize(stacks: list[tuple[str, list[str], int]], top: int) -> dict:
    """Seconds sampled in all, importing (by package), outside our functions (by thread), and
    in each of our functions (inclusive)."""
    total = 0
    imports: Counter[str] = Counter()
    outside: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    for thread, frames, count in stacks:
        total += count
        if any(frame.startswith(IMPORT_FRAME) for frame in frames):
            imports[imported_package(frames)] += count
            continue
        named = {frame for frame in frames if is_ours(frame) and not frame.startswith("<module>")}
        if not named:
            outside[re.sub(r"[-_]\d+(_\d+)?$", "", thread)] += count
        for frame in named:
            ours[frame] += count

    def seconds(counter: Counter[str], n: int) -> list[tuple[str, float]]:
        return [(name, count / RATE) for name, count in counter.most_common(n)]

    return {
        "sampled_s": total / RATE,
        "imports_s": imports.total() / RATE,
        "imports_by_package": seconds(imports, 6),
        "outside_ours_s": outside.total() / RATE,
        "outside_by_thread": seconds(outside, 4),
        "ours": seconds(ours, top),
    }


def main() -> None:
    command = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    print(json.dumps(profile(command, dict(os.environ), Path.cwd()), indent=2))


if __name__ == "__main__":
    main()
