"""Pipeline steps: pure functions first, thin Prefect @task wrappers below them."""

import os as _os
from contextlib import suppress

# Every Arrow buffer from jemalloc, which hands freed pages back to the system within a second.
# Arrow's C++ code allocates from its own default pool (mimalloc here), not pyarrow's, when it
# converts to numpy or pandas: mimalloc kept 10-30 MB of a run resident to the end (make bench).
# Read once, when pyarrow first allocates: so set before the import; a user's choice stands.
_os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

import pyarrow as _pa  # after the variable above

with suppress(NotImplementedError):  # a pyarrow built without jemalloc keeps its default
    _pa.set_memory_pool(_pa.jemalloc_memory_pool())
