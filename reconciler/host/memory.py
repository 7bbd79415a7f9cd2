"""The daemon's own C heap: glibc malloc keeps one arena for the whole process.

Why: glibc gives every thread that calls malloc an arena of its own (up to 8 per core), and
each keeps the memory its thread freed for that thread alone. The daemon runs ~9 threads at
any time (the pass loop, the scheduler, the spec watcher, the exit watcher, the log capper,
the sampler, the signal reader) and more come and go (the spawn and probe pools), so it
collected ~15 arenas, ~0.45 MiB of RSS at N = 200 (docs/benchmarks.md, "Issue 13, daemon
RSS, second round"), and an arena once made is never given back. Nearly all of the daemon's
allocations happen with the GIL held, so the arenas bought no parallelism: one arena costs
no measurable time. `mallopt(M_ARENA_MAX, 1)` must be called before the threads start; an
arena that exists already stays.

glibc only (the `mallopt` symbol and the M_ARENA_MAX number are glibc's): elsewhere (musl
has no per-thread arenas) this is a no-op. The process's own C library is reached through
ctypes, which `logcap.py` loads anyway for inotify, so this costs no import.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

M_ARENA_MAX = -8  # <malloc.h>: the most arenas malloc may create
ONE_ARENA = 1


def limit_malloc_arenas(limit: int = ONE_ARENA, env: Mapping[str, str] = os.environ) -> bool:
    """Let malloc create at most `limit` arenas from now on. True when glibc took it; False
    too when the operator set the arena limit (`MALLOC_ARENA_MAX`, or `arena_max` in
    `GLIBC_TUNABLES`): their word wins, as it does for every other glibc program."""
    if "MALLOC_ARENA_MAX" in env or "arena_max" in env.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc: no per-thread arenas to limit
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, limit))
