"""`make bench` rewrites only its own sections of BENCHMARKS.md (the hand-written ones stay), and
reads Python's import times as they are: each package's outermost imports, ours left out."""

from __future__ import annotations

from pathlib import Path

from benchmarks.run import LEGACY_SECTION, SECTION, render
from benchmarks.sections import replace_section
from benchmarks.startup import parse_importtime

HAND_WRITTEN = """# Benchmarks

## Certified accuracy (2026-12-05)

Measured by hand against the release before.

| measure | before | after |
|---|---:|---:|
| pass 1 | 7.10 | 7.12 |

The table below is the last `make bench`.

Measured 2026-12-01 15:57 UTC by `make bench` on 2 cores; an old generated table.

| rows | case | seconds |
|---:|---|---:|
| 1,000,000 | floor | 0.84 |

Reproduce: `make bench` (about fifteen minutes).

## Object storage (2026-12-05)

Written by hand after the generated table.
"""

RESULTS = {1_000_000: {"floor": {"seconds": 1.25, "peak_rss_mb": 200.0}}}


def test_the_generated_table_is_replaced_and_the_hand_written_sections_kept(tmp_path: Path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(HAND_WRITTEN)

    replace_section(path, SECTION, render(RESULTS), legacy=LEGACY_SECTION)
    text = path.read_text()

    assert "| 1,000,000 | floor | 1.25 |" in text
    assert "an old generated table" not in text
    assert "| 0.84 |" not in text
    before, after = HAND_WRITTEN.split("Measured 2026-12-01")[0], "## Object storage"
    assert text.startswith(before)
    assert text.index("| 1,000,000 | floor | 1.25 |") < text.index(after)
    assert "Written by hand after the generated table." in text


def test_a_second_run_replaces_its_section_again_and_appends_a_new_one_once(tmp_path: Path):
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(HAND_WRITTEN)
    for seconds in (1.25, 2.5):
        results = {1_000_000: {"floor": {"seconds": seconds, "peak_rss_mb": 200.0}}}
        replace_section(path, SECTION, render(results), legacy=LEGACY_SECTION)
        replace_section(path, "startup", f"## Start-up\n\nimport: {seconds} s")
    text = path.read_text()

    assert "| 1.25 |" not in text
    assert "| 1,000,000 | floor | 2.50 |" in text
    assert text.count("## Start-up") == 1
    assert "import: 2.5 s" in text
    assert text.count("Written by hand after the generated table.") == 1
    assert text.index("Written by hand") < text.index("## Start-up")


def test_a_new_file_gets_a_title_and_the_section(tmp_path: Path):
    path = tmp_path / "BENCHMARKS.md"

    replace_section(path, "startup", "## Start-up\n\nimport: 1.5 s")

    assert path.read_text().startswith("# Benchmarks\n")
    assert "import: 1.5 s" in path.read_text()


# `python -X importtime` prints a module once its import finished: children before their parent,
# two spaces deeper. The interpreter's own start-up (up to `site`) comes first.
IMPORTTIME = """import time: self [us] | cumulative | imported package
import time:       100 |        100 |   encodings.aliases
import time:       200 |        300 | encodings
import time:      1000 |       1000 | site
import time:     50000 |      50000 |     numpy.core
import time:     10000 |      60000 |   numpy
import time:    200000 |     300000 |     torch._C
import time:     40000 |     400000 |   torch
import time:      5000 |     465000 | tasks.model
import time:     30000 |      30000 |   pandas
import time:      1000 |      31000 | flows
import time:      2000 |      98000 |     prefect.flows
import time:     10000 |     100000 |   prefect
import time:      3000 |     103000 | flows.train
"""


def test_import_time_is_what_the_command_imported_each_package_counted_at_its_outermost():
    total, packages = parse_importtime(IMPORTTIME)

    assert total == 0.599
    assert packages == {"torch": 0.4, "numpy": 0.06, "prefect": 0.1, "pandas": 0.03}
