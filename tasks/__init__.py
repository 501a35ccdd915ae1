"""Pipeline steps: pure functions first, thin Prefect @task wrappers below them."""

from contextlib import suppress

import pyarrow as _pa

# Arrow's buffers come from jemalloc, which hands freed pages back to the system within a second;
# mimalloc (pyarrow's default) keeps about 100 MB more resident over pass 1 (make bench).
with suppress(NotImplementedError):  # a pyarrow built without jemalloc keeps its default
    _pa.set_memory_pool(_pa.jemalloc_memory_pool())
