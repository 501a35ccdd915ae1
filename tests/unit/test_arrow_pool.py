"""Arrow's buffers, those its C++ code allocates when it converts to numpy too, come from
jemalloc (tasks/__init__.py), which gives freed pages back; a user's ARROW_DEFAULT_MEMORY_POOL
stands. In a fresh process: the pool is chosen when pyarrow first allocates."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# A conversion Arrow's C++ code allocates for from its default pool, not pyarrow's.
CONVERT = """
import tasks, numpy as np, pyarrow as pa
column = pa.chunked_array([pa.array(np.arange(1000.0)), pa.array(np.arange(1000.0))])
values = column.to_numpy()
print(pa.jemalloc_memory_pool().bytes_allocated() > 0, pa.mimalloc_memory_pool().bytes_allocated())
"""


@pytest.mark.parametrize(("chosen", "expected"), [(None, "True 0"), ("mimalloc", "False 16000")])
def test_conversions_allocate_from_the_chosen_pool(chosen, expected):
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    done = subprocess.run(
        [sys.executable, "-c", CONVERT], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == expected
