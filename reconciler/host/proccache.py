"""Process snapshots that stay true while a pidfd says so.

Every pass must know which of its jobs still run. Reading `/proc/<pid>/stat` and `cmdline`
for each costs about ten syscalls a process, most of a pass at a thousand jobs. A pidfd
answers the same question for all of them in one `poll()`: it refers to one process, not to
a pid, and turns readable the moment that process exits (zombies included). So a snapshot
taken with a pidfd open on its process is still that process's identity for as long as the
pidfd is not readable; a recycled pid cannot fool it.

The pidfd is opened *before* `/proc` is read. If the pid was recycled in between, the pidfd
names the old, dead process and is readable at the next poll, which drops the entry: a
snapshot is never trusted on the word of a pidfd for another process.

A process some other holder already has a verified pidfd for (our own children, the exit
watcher's: host/pidfd.py) is not given a pidfd of its own: the shared one was opened before
this read too, and the snapshot is kept only if /proc shows the identity that fd names.

Snapshots are re-read after `max_age` seconds anyway: the command line changes on exec
(every job execs once, right after its gate opens) and a process may change its session.
Where the kernel has no pidfds, nothing is cached and every lookup reads `/proc`.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterable, KeysView
from dataclasses import dataclass

from reconciler.host.identity import proc_info
from reconciler.host.pidfd import SYSTEM, Pidfds
from reconciler.host.spawn import GATE_ARGV0
from reconciler.observed import ProcInfo


@dataclass(slots=True)
class _Entry:
    fd: int
    info: ProcInfo
    taken_at: float
    shared: bool  # held through `Pidfds.acquire_pid`: released there, not closed here


class ProcCache:
    """Snapshots of the processes a pass asks about by pid. Owned by one thread."""

    def __init__(self, max_age: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, *,
                 pidfds: Pidfds = SYSTEM) -> None:
        self.max_age = max_age
        self.clock = clock
        self._pidfds = pidfds
        self._entries: dict[int, _Entry] = {}
        self._by_fd: dict[int, int] = {}  # fd -> pid
        self._sessions: dict[int, int] = {}  # session -> how many cached processes in it
        self._poller = select.epoll()  # answers with the ready fds only: see `_drop_exited`

    def lookup(self, pids: Iterable[int], *, forget_others: bool = True) -> dict[int, ProcInfo]:
        """The live processes among `pids`, like `proc_info` for each. Entries for pids not
        asked about are dropped (the caller asks about everything it still cares about),
        unless `forget_others` is false: a keyed pass asks about a few jobs only."""
        wanted = set(pids)
        self._drop_exited()
        now = self.clock()
        if forget_others:
            stale = [p for p, e in self._entries.items()
                     if p not in wanted or now - e.taken_at >= self.max_age]
        else:
            stale = self._expired(now)
        for pid in stale:
            self._drop(pid)
        entries = self._entries
        found = {pid: e.info for pid in wanted if (e := entries.get(pid)) is not None}
        for pid in wanted - found.keys():
            info = self._take(pid, now)
            if info is not None:
                found[pid] = info
        return found

    def sessions(self) -> KeysView[int]:
        """The sessions of the cached processes that had not exited at the last lookup (no
        new poll), without a walk over them."""
        return self._sessions.keys()

    def close(self) -> None:
        for pid in list(self._entries):
            self._drop(pid)

    def __len__(self) -> int:
        return len(self._entries)

    # --- helpers ----------------------------------------------------------------------------

    def _expired(self, now: float) -> list[int]:
        """Entries are kept in the order they were taken (a re-take comes after a drop), so
        the expired ones are the first few: a keyed pass pays for those, not for all."""
        stale = []
        for pid, entry in self._entries.items():
            if now - entry.taken_at < self.max_age:
                break
            stale.append(pid)
        return stale

    def _drop_exited(self) -> None:
        """One epoll_wait for every cached process: a readable pidfd means it exited. (A
        poll() costs the kernel a look at every fd, 0.5 ms at 2000; epoll keeps the ready
        ones, so a keyed pass pays for the exits, not for the jobs.)"""
        if not self._entries:
            return
        for fd, _events in self._poller.poll(0, max(1, len(self._by_fd))):
            pid = self._by_fd.get(fd)
            if pid is not None:
                self._drop(pid)

    def _take(self, pid: int, now: float) -> ProcInfo | None:
        held = self._pidfds.acquire_pid(pid)  # an fd opened before the read below
        if held is not None:
            identity, shared_fd = held
            info = proc_info(pid)
            if info is None or info.identity == identity:
                if info is None or _changing(info):
                    self._pidfds.release(identity)
                else:
                    self._keep(_Entry(shared_fd, info, now, shared=True))
                return info
            self._pidfds.release(identity)  # the pid was recycled: open our own below
        fd = self._pidfds.try_open(pid)  # first: see the module docstring
        info = proc_info(pid)
        if fd is None:
            return info
        if info is None or _changing(info):
            os.close(fd)
            return info
        self._keep(_Entry(fd, info, now, shared=False))
        return info

    def _keep(self, entry: _Entry) -> None:
        fd, info = entry.fd, entry.info
        self._entries[info.pid] = entry
        self._sessions[info.session] = self._sessions.get(info.session, 0) + 1
        self._by_fd[fd] = info.pid
        self._poller.register(fd, select.EPOLLIN)

    def _drop(self, pid: int) -> None:
        entry = self._entries.pop(pid)
        left = self._sessions[entry.info.session] - 1
        if left:
            self._sessions[entry.info.session] = left
        else:
            del self._sessions[entry.info.session]
        del self._by_fd[entry.fd]
        self._poller.unregister(entry.fd)
        if entry.shared:
            self._pidfds.release(entry.info.identity)
        else:
            os.close(entry.fd)


def _changing(info: ProcInfo) -> bool:
    """Its command line is about to change: it is still the spawn gate's shell
    (host/spawn.py), or it is in the middle of an exec (the kernel shows no cmdline then)."""
    return not info.cmdline or (len(info.cmdline) > 3 and info.cmdline[3] == GATE_ARGV0)
