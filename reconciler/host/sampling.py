"""Resource samples of running jobs (DESIGN §8.4): one look at every job's processes.

A job's members are the processes of its main process's session (every job starts in a
session of its own, and its children stay in it unless they call setsid()). One walk of
/proc (`SessionWalk`) reads the stat of the jobs' members and of processes it has not seen
before, so a round costs a directory entry per process on the host plus, per member, a
stat read and its fd count; a member's oom_score and the main process's wchan are read
again every 12th round (spread by pid), the wchan also whenever it is in D state (where it
says what it waits for), the fd limit every 60th round and whenever a member holds half of
it. CPU, RSS, threads and fds are summed over the members; zombies are counted, not summed
(they use nothing).

Sample times come from `SampleClock`: the monotonic clock anchored at a wall-clock time, so
a series never goes backwards when the wall clock is stepped (NTP at boot, a resumed VM).
"""

from __future__ import annotations

import os
import resource
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from reconciler.host import procfs
from reconciler.host.procfs import StatUsage
from reconciler.state.records import JobRecord, Sample


class SampleClock:
    """Sample times that only move forward: `start_after` (the newest time already stored,
    say by a previous daemon) plus the monotonic time since this clock was made, or the
    wall clock at that moment if it is later."""

    def __init__(self, start_after: float = 0.0, *, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._base = max(wall(), start_after)
        self._monotonic = monotonic
        self._zero = monotonic()

    def now(self) -> float:
        return self._base + (self._monotonic() - self._zero)


# Fields that move slowly are read again every this many rounds per process, spread by pid
# so each round reads a twelfth of them: a member's oom_score (it follows memory), the main
# process's wchan (also whenever it is in D state, where it says what it waits for).
SLOW_ROUNDS = 12
# The fd soft limit of a main process: read at first sight, again every this many rounds,
# and whenever one member holds half of it or more (a process that raised its own limit,
# as Go programs do at start, must not look like it runs out of fds). Reading
# /proc/<pid>/limits every round would be a third of a round's cost.
FD_LIMIT_ROUNDS = 60

# Stat fds kept open between rounds: a kept fd spares two syscalls of the three of each look
# (a pread instead of open, read, close; ~12-22 µs a process in the daemon), but the
# controller's descriptors are for its pidfds and children first, and every open fd makes
# every start slower: the vfork child copies the fd table and closes it before its exec
# (docs/benchmarks.md, "Respawn at N=2000", second and third rounds). So the daemon's fds
# have a budget, one pidfd per job first: the sampler keeps what the jobs leave of
# FD_BUDGET (at most MAX_OPEN_STATS, at least MIN_OPEN_STATS, never more than a quarter of
# our fd soft limit). At 1000 jobs every stat fd is kept (a round at 1000 costs 23 ms, not
# 40); at 2000, 256 are (a respawn's spawn copies ~2300 fds, not ~3000: p50 8.9 against
# ~10 ms, for ~12 ms more a round, 0.2% of one core).
FD_BUDGET = 2048
MAX_OPEN_STATS = 1024
MIN_OPEN_STATS = 256

Key = tuple[int, int]  # (pid, start time): a recycled pid is another process


def open_stats_allowed(jobs: int) -> int:
    """How many stat fds a round may keep while `jobs` jobs run (see FD_BUDGET)."""
    wanted = min(MAX_OPEN_STATS, max(MIN_OPEN_STATS, FD_BUDGET - jobs))
    return min(wanted, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)


class Sampler:
    """Takes a `Sample` of every running job. Keeps only the slow fields of each process
    it saw in its last round."""

    def __init__(self, clock: SampleClock | None = None) -> None:
        self.clock = clock or SampleClock()
        self._fd_limits: dict[Key, int | None] = {}
        self._oom_scores: dict[Key, int | None] = {}
        self._fd_limits_now: dict[Key, int | None] = {}
        self._oom_scores_now: dict[Key, int | None] = {}
        self._rounds = 0
        self._running = 0  # jobs running in the current round: they get their pidfds first
        self._walk = SessionWalk(lambda: open_stats_allowed(self._running))
        self._sessions: set[int] = set()  # the jobs' sessions other than their main pids

    def sample(self, jobs: Iterable[JobRecord]) -> list[Sample]:
        running = [j for j in jobs if j.pid is not None and j.identity is not None
                   and j.phase in ("running", "starting", "stopping")]
        if not running:
            self._walk.close()  # the last members' stat fds: no round reads them now
            return []
        self._running = len(running)
        by_session = self._walk.sessions({j.pid for j in running if j.pid} | self._sessions)
        at = self.clock.now()
        self._rounds += 1
        samples: list[Sample] = []
        sessions: set[int] = set()
        for job in running:
            assert job.pid is not None and job.identity is not None
            main, walked = _find(by_session, job.pid)
            if main is None or main.starttime != job.identity.starttime_ticks:
                continue  # gone, or the pid is another process's now
            if main.session not in by_session:  # a session the walk did not look into
                by_session[main.session] = self._walk.members_of(main.session)
            sessions.add(main.session)
            members = by_session[main.session]
            if not walked and all(pid != job.pid for pid, _ in members):
                members = [*members, (job.pid, main)]  # started after the walk
            samples.append(self._sample_of(job, at, main, members))
        self._sessions = sessions - {j.pid for j in running}
        # what this round saw is all that is kept: ended processes drop out
        self._fd_limits, self._fd_limits_now = self._fd_limits_now, {}
        self._oom_scores, self._oom_scores_now = self._oom_scores_now, {}
        return samples

    def close(self) -> None:
        """Close the stat fds kept between rounds (the monitor's thread has ended)."""
        self._walk.close()

    def _due(self, pid: int, every: int) -> bool:
        return (self._rounds + pid) % every == 0

    def _oom_score(self, pid: int, usage: StatUsage) -> int | None:
        key = (pid, usage.starttime)
        score = self._oom_scores.get(key, -1)
        if score == -1 or self._due(pid, SLOW_ROUNDS):
            score = procfs.read_oom_score(pid)
        self._oom_scores_now[key] = score
        return score

    def _fd_limit(self, pid: int, usage: StatUsage, most_fds: int | None) -> int | None:
        key = (pid, usage.starttime)
        limit = self._fd_limits.get(key, -1)
        if limit == -1 or self._due(pid, FD_LIMIT_ROUNDS) or (
                limit is not None and most_fds is not None and 2 * most_fds >= limit):
            limit = procfs.read_fd_soft_limit(pid)
        self._fd_limits_now[key] = limit
        return limit

    def _sample_of(self, job: JobRecord, at: float, main: StatUsage,
                   members: Members) -> Sample:
        """Sums over the live members; most jobs are one process, the short way."""
        pid = job.pid or 0
        wchan = procfs.read_wchan(pid) if main.state == "D" or self._due(
            pid, SLOW_ROUNDS) else ""
        if len(members) == 1:
            fds = procfs.count_fds(pid)
            return Sample(at, job.id, job.service, job.action, 1, main.rss_bytes,
                          main.cpu_seconds, main.threads, fds,
                          self._fd_limit(pid, main, fds), self._oom_score(pid, main),
                          main.state, wchan, 1 if main.state == "D" else 0, 0, fds)
        live = [(p, u) for p, u in members if u.state not in ("Z", "X", "x")] or [(pid, main)]
        counts = [procfs.count_fds(p) for p, _ in live]
        most = max((f for f in counts if f is not None), default=None)
        scores = [s for p, u in live if (s := self._oom_score(p, u)) is not None]
        return Sample(
            at, job.id, job.service, job.action, len(live),
            sum(u.rss_pages for _, u in live) * procfs.PAGE_BYTES,
            sum(u.utime + u.stime for _, u in live) / procfs.CLOCK_TICKS,
            sum(u.threads for _, u in live),
            None if None in counts else sum(f for f in counts if f is not None),
            self._fd_limit(pid, main, most), max(scores, default=None), main.state, wchan,
            sum(1 for _, u in live if u.state == "D"),
            sum(1 for _, u in members if u.state == "Z"), most)


Members = list[tuple[int, StatUsage]]


# The inode readdir reports when the kernel could not set up a /proc entry: it names no
# process, so nothing learnt under it is kept.
_NO_INODE = 1


class SessionWalk:
    """The processes of some sessions, found in one walk of /proc.

    A process cannot join a session that exists (setsid() only makes a new one, named by
    the caller's pid, and a pid is not reused while a session or group is named by it), so
    a process once found outside the jobs' sessions stays outside while it lives, unless
    its own pid becomes a wanted session (it called setsid() since: a job's process seen
    between fork and setsid, a daemon's middle process). Its /proc inode says whether it
    still is the same process: the walk reads the stat of new processes, of the jobs'
    members and of the processes whose pid names a wanted session only, and a host's other
    processes, however many, cost a directory entry each."""

    def __init__(self, max_open: Callable[[], int] = lambda: 0) -> None:
        self._outside: dict[int, tuple[int, int]] = {}  # pid -> (inode, session)
        self._open: dict[int, tuple[int, int]] = {}  # pid -> (inode, fd on its stat)
        self._max_open = max_open

    def sessions(self, wanted: set[int]) -> dict[int, Members]:
        found: dict[int, Members] = defaultdict(list)
        outside: dict[int, tuple[int, int]] = {}
        kept: dict[int, tuple[int, int]] = {}
        room = self._max_open()
        try:
            for pid, inode in procfs.iter_pid_inodes():
                known = self._outside.get(pid)
                if known is not None and known[0] == inode and known[1] not in wanted and (
                        pid not in wanted):  # else it may have called setsid() since
                    outside[pid] = known
                    continue
                fd, usage = self._read(pid, inode)
                if usage is None or usage.session not in wanted:
                    if fd is not None:
                        os.close(fd)
                    if usage is not None and inode != _NO_INODE:
                        outside[pid] = (inode, usage.session)
                    continue
                found[usage.session].append((pid, usage))
                if fd is not None and len(kept) < room:
                    kept[pid] = (inode, fd)
                elif fd is not None:
                    os.close(fd)
        finally:
            self.close()  # what was not kept: ended, or no member any more
            self._open = kept  # (a walk that failed halfway keeps what it had taken)
        self._outside = outside
        return found

    def _read(self, pid: int, inode: int) -> tuple[int | None, StatUsage | None]:
        """A member's stat through the fd kept from the last round (one pread), else
        through a new one."""
        held = self._open.pop(pid, None)
        if held is not None and held[0] == inode:
            return held[1], procfs.reread_stat_usage(held[1])
        if held is not None:
            os.close(held[1])
        fd = procfs.open_stat(pid)
        return fd, None if fd is None else procfs.reread_stat_usage(fd)

    def close(self) -> None:
        for _, fd in self._open.values():
            os.close(fd)
        self._open = {}

    def members_of(self, session: int) -> Members:
        """The processes of a session the last walk did not look into (a job's main
        process that sits in a session not named by its pid, seen for the first time)."""
        members = []
        for pid, (_, known) in self._outside.items():
            if (known == session or pid == session) and (
                    usage := procfs.read_stat_usage(pid)) is not None and (
                    usage.session == session):  # not if it called setsid() since
                members.append((pid, usage))
        return members


def _find(by_session: dict[int, Members], pid: int) -> tuple[StatUsage | None, bool]:
    """The main process, and whether the walk found it. It is usually its session's leader
    (sid = pid); one that daemonized may sit in another session: then it is read on its
    own."""
    for member_pid, usage in by_session.get(pid, ()):
        if member_pid == pid:
            return usage, True
    return procfs.read_stat_usage(pid), False
