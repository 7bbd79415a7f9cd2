"""Process identity: the only thing we trust to say "this is the process we started".

A PID alone is never enough because PIDs recycle. The triple (boot id, pid, start time in
clock ticks since boot) is unique for the life of the machine's boot, and stays valid across
clock steps because start time is measured from boot, not from the wall clock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from reconciler.host import procfs

if TYPE_CHECKING:
    from reconciler.host.observed import ProcInfo


class Identity(NamedTuple):
    """A tuple, so hashing and comparing it run in C: every pass compares and hashes the
    identity of every job several times."""

    boot_id: str
    pid: int
    starttime_ticks: int

    def __str__(self) -> str:
        return f"pid {self.pid} (start {self.starttime_ticks}, boot {self.boot_id[:8]})"


def identity_of(pid: int) -> Identity | None:
    """The identity of the live process `pid`; None if it is gone or a zombie (a zombie
    has finished running: it must count as dead, and signals to it do nothing)."""
    stat = procfs.read_stat(pid)
    if stat is None or stat.zombie:
        return None
    return Identity(procfs.read_boot_id(), pid, stat.starttime)


def proc_info(pid: int) -> ProcInfo | None:
    """What an operator and the planner need to know about a live process, read as one
    consistent snapshot (stat and cmdline of the same process, even if the pid recycles)."""
    from reconciler.host.observed import ProcInfo  # observed imports this module

    snapshot = procfs.read_process(pid)
    if snapshot is None or snapshot[0].zombie:
        return None
    stat, cmdline = snapshot
    return ProcInfo(identity=Identity(procfs.read_boot_id(), pid, stat.starttime),
                    cmdline=cmdline, session=stat.session, pgrp=stat.pgrp)
