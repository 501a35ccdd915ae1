"""The process's C allocator, told to hand memory back between the passes.

glibc's malloc gives each thread that allocates an arena of its own (up to 8 per core): pass 1's
pool threads and obstore's I/O threads each keep the blocks they freed in theirs, so a run's
resident memory grew by what every thread once held (about 100 MB at 10M rows). Two arenas bound
that at no measured cost in time, and a trim at the end of each pass gives back what the pass
freed. Elsewhere (macOS, musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
ARENAS = 2


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@functools.cache
def limit_arenas() -> None:
    """At most ARENAS malloc arenas from now on (threads that allocated before keep theirs)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, ARENAS)


def give_back() -> None:
    """Return the pages malloc and Arrow's pool hold free to the system (malloc_trim, and
    jemalloc's purge rather than its decay: what a pass freed is not resident while the next
    step imports and allocates)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
