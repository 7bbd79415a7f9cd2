"""What each process on the host was found to be, so a crash sweep reads what changed only.

A crash sweep (host/members.py) looks for a dead job's processes: the rest of its session,
and anything outside the running jobs' sessions that carries its `RECONCILER_JOB_ID` (a
daemon that double-forked, a setsid() child a crash left behind). Reading every process's
environment costs a read each, so a sweep cost what the HOST runs (40 ms with 1270 foreign
processes) instead of what changed. `HostMarkers` remembers, per process, its session and
the job id its environment carries, and the next sweep reads only new processes and the
few that may matter.

Why a remembered answer stays true while the process lives:

* Which process: the inode number of /proc/<pid> (readdir's d_ino, `procfs.iter_pid_inodes`)
  is new for every new process, also on a recycled pid, and a process keeps its own. (A
  dentry dropped under memory pressure comes back with a new number: read again, no harm.)
* Its session: a process cannot join a session that exists; setsid() only makes a new one
  named by the caller's pid, and the kernel does not reuse a pid while it names a session.
  So a process seen in session S is now in S or in the session named by its own pid. Its
  session is asked again (getsid) only where S is one the sweep looks into: a session named
  by its own pid is looked into only if it is a job's live main process (a recycled pid's
  old session is refused by `procs.session_still_ours`), never listed as a member.
* Its job id: the marker sits in the initial environment, which changes only by exec. An
  environment that reads empty is read once more at the next sweep before it counts as
  "no job id": a process caught inside exec reads empty for a moment (procfs.read_environ_var),
  and one wrong answer would be kept for its life. A
  process that execs with another environment escapes by design (members.py); one that was
  seen without a wanted job id and later execs WITH one is not found either, as a forgery
  would not be. (The one process given a job id at exec is a job's main process, spawned by
  us and followed by its identity, never by its marker.)

Errors can only hide a process, never add one: every candidate is read again (stat,
cmdline and environment through one dir fd) before it counts, and the caller verifies its
identity through a pidfd before it signals. Owned by the loop thread of one controller;
`forget` (SIGHUP) starts afresh.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection, Container
from typing import TypeVar

from reconciler.host import procfs
from reconciler.host.spawn import JOB_ID_VAR

UNREAD = "\0"  # a marker not read yet: no environment value can hold a NUL
AGAIN = "\0\0"  # read once and found empty (caught inside exec?): read at the next sweep
RELIST_SECONDS = 10.0  # /proc is listed at least this often (see `HostMarkers._refresh`)
RELIST_SPAN = 64  # at least this many new pids since the last sweep are looked up alone
UNSEEN_SECONDS = 1.0  # how long a pid handed out but not in /proc yet is looked for
LISTING_LAG = 64  # the last pids before a listing that it misses are looked up once more
Candidate = tuple[int, int, str | None]
_K = TypeVar("_K")  # pid, session, the wanted job id (None: by session)


class HostMarkers:
    """Sessions and job ids of the processes on the host, by pid, for one controller.
    `reads`: environments read by the last sweep; `new`: processes it saw first. A process's
    environment is read once, at the first sweep that sees it, and again only as a
    candidate (and once more if it read empty)."""

    def __init__(self, relist_every: float = RELIST_SECONDS, relist_span: int = RELIST_SPAN,
                 clock: Callable[[], float] = time.monotonic,
                 last_pid: Callable[[], int] = procfs.last_pid,
                 lister: Callable[[], dict[int, str]] = procfs.listing_by_inode) -> None:
        self.relist_every = relist_every
        self.relist_span = relist_span
        self.clock = clock
        self.last_pid = last_pid
        self.lister = lister  # /proc's entries by inode (a seam: tests replay a recycled pid)
        self._listing: dict[int, str] = {}  # /proc's entries as last listed: inode -> name
        self._inodes: dict[int, int] = {}  # pid -> inode, of those learnt since that listing
        self._facts: dict[int, tuple[int, str | None]] = {}  # pid -> session, job id
        # the same facts indexed, so a sweep costs what it looks at, not what the host runs
        self._by_session: dict[int, set[int]] = {}  # session -> pids
        self._by_marker: dict[str, set[int]] = {}  # job id read -> pids
        self._unread: dict[int, set[int]] = {}  # session -> pids whose job id is UNREAD
        self._top = 0  # procfs.last_pid() before the last look
        self._listed_at = -math.inf  # clock() of the last listing
        self._unseen: dict[int, float] = {}  # pid handed out, not in /proc yet -> since
        self.reads = 0
        self.new = 0
        self.listed = False  # whether the last sweep listed /proc

    def forget(self) -> None:
        self._listing, self._inodes, self._facts, self._unseen = {}, {}, {}, {}
        self._by_session, self._by_marker, self._unread = {}, {}, {}
        self._listed_at = -math.inf

    def __len__(self) -> int:
        return len(self._facts)

    def candidates(self, sessions: Collection[int], wanted: Collection[str],
                   skipped: Container[int], excluded: Container[int]) -> list[Candidate]:
        """Every process in one of `sessions` (job id None), and every process outside
        them and outside `skipped` (running jobs' sessions) whose environment carries one
        of the `wanted` job ids, as last read; by pid. Pids ≤ 1 and `excluded` are never
        candidates. Costs the new processes (see `_refresh`) and an environment read for
        each, the members of `sessions` and the processes carrying a wanted job id: the
        facts are indexed by session and job id."""
        self.reads = 0
        self._refresh()
        found: dict[int, Candidate] = {}
        for session in sessions:
            for pid in list(self._by_session.get(session, ())):
                sid = _getsid(pid)  # it may have left by setsid() since
                if sid != session:
                    self._set(pid, sid, self._facts[pid][1])
                if sid in sessions:
                    found[pid] = (pid, sid, None)
        if wanted:
            for job_id in wanted:
                for pid in self._by_marker.get(job_id, ()):
                    sid = self._facts[pid][0]
                    if sid not in sessions and sid not in skipped and sid >= 0:
                        found[pid] = (pid, sid, job_id)
            # every process not read yet, the running jobs' own too: read once, each is
            # then found by its job id alone, so what a sweep reads is what is new (the
            # first sweep reads the host once)
            for sid in [sid for sid in self._unread if sid not in sessions and sid >= 0]:
                self._read_markers(sid, skipped, wanted, found)
        return sorted(c for c in found.values() if c[0] > 1 and c[0] not in excluded)

    def _read_markers(self, sid: int, skipped: Container[int], wanted: Collection[str],
                      found: dict[int, Candidate]) -> None:
        """Read the job id of every process of session `sid` whose job id is UNREAD."""
        for pid in list(self._unread[sid]):
            marker = _settled(self._facts[pid][1],
                              procfs.read_environ_var(pid, JOB_ID_VAR, blank=AGAIN))
            self.reads += 1
            self._set(pid, sid, marker)
            if marker in wanted and sid not in skipped:
                found[pid] = (pid, sid, marker)

    def _set(self, pid: int, sid: int, marker: str | None) -> None:
        old = self._facts.get(pid)
        if old is not None:
            self._unindex(pid, old)
        self._facts[pid] = (sid, marker)
        self._by_session.setdefault(sid, set()).add(pid)
        if marker in (UNREAD, AGAIN):
            self._unread.setdefault(sid, set()).add(pid)
        elif marker is not None:
            self._by_marker.setdefault(marker, set()).add(pid)

    def _drop(self, pid: int) -> None:
        old = self._facts.pop(pid, None)
        if old is not None:
            self._unindex(pid, old)

    def _unindex(self, pid: int, fact: tuple[int, str | None]) -> None:
        sid, marker = fact
        _discard(self._by_session, sid, pid)
        if marker in (UNREAD, AGAIN):
            _discard(self._unread, sid, pid)
        elif marker is not None:
            _discard(self._by_marker, marker, pid)

    def _refresh(self) -> None:
        """Learn the processes started since the last sweep. Pids are handed out in order,
        so they are the pids above the last one handed out then (procfs.last_pid): each is
        looked up alone, no listing of /proc, whose readdir costs what the host runs (3.5
        ms of a 4.6 ms sweep at 3300 processes). A recycled pid is handed out again, so
        it is among them too. /proc is listed instead when the counter wrapped around,
        when more pids were handed out than a listing costs, and every `relist_every`
        seconds: a listing is what drops the processes that ended (until then they only
        cost a failed read when they are candidates) and bounds how long a counter that
        wrapped all the way round could go unnoticed."""
        top = self.last_pid()  # before looking: whatever starts meanwhile is above it
        now = self.clock()
        span = max(self.relist_span, len(self._facts) // 16)  # a lookup: ~16 listed entries
        if top < self._top or top - self._top > span \
                or now - self._listed_at >= self.relist_every:
            self._top, self._listed_at = top, now
            self._relist()
            # the last pids handed out before it that it does not show (a thread's id, or a
            # process whose fork was not done: /proc shows it a moment after) are looked up
            # at the next sweep, as a lookup that misses one is: pids up to `top` are not
            # looked at again until the next listing
            shown = set(self._listing.values())
            self._unseen = {pid: now for pid in range(max(top - LISTING_LAG, 1) + 1, top + 1)
                            if str(pid) not in shown}
            return
        self.listed, self.new = False, 0
        fresh = [*range(self._top + 1, top + 1), *self._unseen]
        self._top = top
        for pid in fresh:
            inode = procfs.pid_dir_inode(pid)
            if inode is not None:
                self._unseen.pop(pid, None)
                self._learn(pid, inode)
            elif procfs.pid_exists(pid):  # a thread's id: never a process of its own
                self._unseen.pop(pid, None)
            elif now - self._unseen.setdefault(pid, now) >= UNSEEN_SECONDS:
                del self._unseen[pid]  # it ended before we saw it
            # else: its fork is not done yet (/proc shows it a moment after its pid is
            # handed out): looked for again at the next sweep

    def _learn(self, pid: int, inode: int) -> None:
        """A process seen for the first time (a pid's old facts were of another one)."""
        old = self._inodes.pop(pid, None)
        if old is not None:
            self._listing.pop(old, None)
        self._listing[inode] = str(pid)
        self._inodes[pid] = inode
        self._set(pid, _getsid(pid), UNREAD)
        self.new += 1

    def _relist(self) -> None:
        """List /proc, and learn the session of every process not seen before. The
        listing is keyed by inode (each new process has its own) and compared with the
        last one as key sets, which runs in C: the kernel's readdir is then most of it."""
        listing = self.lister()
        last = self._listing
        learnt = self._inodes
        for inode in last.keys() - listing.keys():  # gone (a recycled pid: its old inode)
            name = last[inode]
            # unless the pid was learnt since under an inode still listed: the facts are that
            # process's, and its inode, already in `last`, is no new entry below
            if name.isascii() and name.isdigit() and learnt.get(int(name)) not in listing:
                self._drop(int(name))
        self.new = 0
        for inode in listing.keys() - last.keys():  # new, also on a recycled pid
            name = listing[inode]
            if name.isascii() and name.isdigit():
                self._set(int(name), _getsid(int(name)), UNREAD)
                self.new += 1
        self._listing, self._inodes, self.listed = listing, {}, True

    def snapshot(self, pid: int, job_id: str) -> tuple[procfs.Stat, tuple[str, ...]] | None:
        """stat and cmdline of `pid` if it is live and its environment carries `job_id`,
        read through one dir fd (the pid may have been recycled since the walk). What it
        reads is remembered: a candidate that exec'd with a clean environment is no
        candidate at the next sweep (one that reads empty, after the next sweep read it
        again)."""
        snapshot = procfs.read_process_environ(pid, JOB_ID_VAR, blank=AGAIN)
        self.reads += 1
        if snapshot is None:
            return None
        stat, cmdline, value = snapshot
        known = self._facts.get(pid)
        if known is not None:
            self._set(pid, known[0], _settled(known[1], value))
        if stat.zombie or value != job_id:
            return None
        return stat, cmdline


def _settled(known: str | None, read: str | None) -> str | None:
    """What a process's job id is taken to be after a read (`read` is AGAIN when it found
    nothing): an empty read is taken for "none" only when the read before was empty too,
    so what is read again is bounded by what is new."""
    if read == AGAIN and known == AGAIN:
        return None
    return read


def _getsid(pid: int) -> int:
    """The session of `pid`; -1 when it is gone or a security module says no."""
    try:
        return os.getsid(pid)
    except OSError:
        return -1


def _discard(index: dict[_K, set[int]], key: _K, pid: int) -> None:
    pids = index.get(key)
    if pids is not None:
        pids.discard(pid)
        if not pids:
            del index[key]
