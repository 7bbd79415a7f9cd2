"""Reading a live process's identity (`reconciler.identity`) and snapshot from /proc."""

from __future__ import annotations

from reconciler.host import procfs
from reconciler.identity import Identity
from reconciler.observed import ProcInfo


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
    snapshot = procfs.read_process(pid)
    if snapshot is None or snapshot[0].zombie:
        return None
    stat, cmdline = snapshot
    return ProcInfo(identity=Identity(procfs.read_boot_id(), pid, stat.starttime),
                    cmdline=cmdline, session=stat.session, pgrp=stat.pgrp)
