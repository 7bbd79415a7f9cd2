"""Process identity: the only thing we trust to say "this is the process we started".

A PID alone is never enough because PIDs recycle. The triple (boot id, pid, start time in
clock ticks since boot) is unique for the life of the machine's boot, and stays valid across
clock steps because start time is measured from boot, not from the wall clock.

Plain data, no I/O: `plan` and the records use it; `host/identity.py` reads it from /proc.
"""

from __future__ import annotations

from reconciler.tuples import NamedTuple  # typing's, without importing typing (status)


class Identity(NamedTuple):
    """A tuple, so hashing and comparing it run in C: every pass compares and hashes the
    identity of every job several times."""

    boot_id: str
    pid: int
    starttime_ticks: int

    def __str__(self) -> str:
        return f"pid {self.pid} (start {self.starttime_ticks}, boot {self.boot_id[:8]})"
