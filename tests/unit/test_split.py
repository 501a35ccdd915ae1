"""The train/holdout split's row hashes: the same for a row whatever else runs at once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from tasks.ingest.split import hash_text


def test_hashes_taken_on_several_threads_with_other_seeds_are_those_of_one_thread():
    # each seed has tables of its own; runs with other seeds in the same process (a served
    # flow, a Dask worker) build theirs meanwhile
    ids = pa.array([f"C{i:05d}" for i in range(2000)])
    jobs = [seed % 5 for seed in range(40)]
    alone = {seed: hash_text(ids, seed) for seed in set(jobs)}
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda seed: hash_text(ids, seed), jobs))
    for seed, got in zip(jobs, together, strict=True):
        np.testing.assert_array_equal(got, alone[seed])
