"""Resource samples of running jobs (DESIGN §8.4): one look at every job's processes.

A job's members are the processes of its main process's session (every job starts in a
session of its own, and its children stay in it unless they call setsid()). One walk of
/proc reads each process's stat once and groups them by session, so a round costs one
`stat` read per process on the host plus, per member, its fd count; a member's oom_score and
the main process's fd limit are read again every 12th round, its wchan then and whenever it
is in D state (where it says what it waits for). CPU, RSS, threads and fds
are summed over the members; zombies are counted, not summed (they use nothing).

Sample times come from `SampleClock`: the monotonic clock anchored at a wall-clock time, so
a series never goes backwards when the wall clock is stepped (NTP at boot, a resumed VM).
"""

from __future__ import annotations

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


# The fd soft limit of a process is read again every this many rounds (a process may
# lower or raise it itself, but rarely does; reading /proc/<pid>/limits every round would
# be a third of a round's cost).
FD_LIMIT_ROUNDS = 12


class Sampler:
    """Takes a `Sample` of every running job. Keeps only the fd soft limit of each process
    it has seen, read again every FD_LIMIT_ROUNDS rounds."""

    def __init__(self, clock: SampleClock | None = None) -> None:
        self.clock = clock or SampleClock()
        self._fd_limits: dict[tuple[int, int], int | None] = {}
        self._oom_scores: dict[tuple[int, int], int | None] = {}
        self._rounds = 0

    def sample(self, jobs: Iterable[JobRecord]) -> list[Sample]:
        running = [j for j in jobs if j.pid is not None and j.identity is not None
                   and j.phase in ("running", "starting", "stopping")]
        if not running:
            return []
        by_session = _processes_by_session()
        at = self.clock.now()
        self._rounds += 1
        slow_round = self._rounds % FD_LIMIT_ROUNDS == 0
        if slow_round:
            self._fd_limits.clear()
            self._oom_scores.clear()
        samples: list[Sample] = []
        seen: set[tuple[int, int]] = set()
        alive = {(pid, u.starttime) for members in by_session.values() for pid, u in members}
        for job in running:
            assert job.pid is not None and job.identity is not None
            main = _find(by_session, job.pid)
            if main is None or main.starttime != job.identity.starttime_ticks:
                continue  # gone, or the pid is another process's now
            members = by_session.get(main.session, [])
            key = (job.pid, main.starttime)
            seen.add(key)
            if key not in self._fd_limits:
                self._fd_limits[key] = procfs.read_fd_soft_limit(job.pid)
            samples.append(_sample_of(job, at, main, members, self._fd_limits[key],
                                      self._oom_score, wchan=slow_round or main.state == "D"))
        self._fd_limits = {k: v for k, v in self._fd_limits.items() if k in seen}
        self._oom_scores = {k: v for k, v in self._oom_scores.items() if k in alive}
        return samples


    def _oom_score(self, pid: int, usage: StatUsage) -> int | None:
        """Read again with the fd limits (every 12th round): it moves with the process's
        memory, slowly, and one read per member per round was a fifth of a round's cost."""
        key = (pid, usage.starttime)
        if key not in self._oom_scores:
            self._oom_scores[key] = procfs.read_oom_score(pid)
        return self._oom_scores[key]


Members = list[tuple[int, StatUsage]]


def _processes_by_session() -> dict[int, Members]:
    found: dict[int, Members] = defaultdict(list)
    for pid in procfs.iter_pids():
        usage = procfs.read_stat_usage(pid)
        if usage is not None:
            found[usage.session].append((pid, usage))
    return found


def _find(by_session: dict[int, Members], pid: int) -> StatUsage | None:
    """The main process is usually its session's leader (sid = pid); one that daemonized
    may sit in another session: then it is read on its own."""
    for member_pid, usage in by_session.get(pid, []):
        if member_pid == pid:
            return usage
    return procfs.read_stat_usage(pid)


def _sample_of(job: JobRecord, at: float, main: StatUsage, members: Members,
               fd_limit: int | None, oom_score: Callable[[int, StatUsage], int | None], *,
               wchan: bool) -> Sample:
    """`wchan`: read the main process's wchan this round (always when it is in D state,
    where it says what it waits for; otherwise with the fd limit, every 12th round)."""
    live = [(pid, u) for pid, u in members if u.state not in ("Z", "X", "x")] or [
        (job.pid or 0, main)]
    if len(live) == 1:  # most jobs: one process, no sums to build
        pid, usage = live[0]
        fd_count = procfs.count_fds(pid)
        return Sample(
            at=at, job_id=job.id, service=job.service, action=job.action, members=1,
            rss_bytes=usage.rss_bytes, cpu_seconds=usage.cpu_seconds,
            threads=usage.threads, open_fds=fd_count, fd_limit=fd_limit,
            oom_score=oom_score(pid, usage), state=main.state,
            wchan=procfs.read_wchan(job.pid or 0) if wchan else "",
            dstate=1 if usage.state == "D" else 0,
            zombies=sum(1 for _, u in members if u.state == "Z") if len(members) > 1 else 0,
            max_fds=fd_count)
    fds = [procfs.count_fds(pid) for pid, _ in live]
    scores = [s for pid, u in live if (s := oom_score(pid, u)) is not None]
    return Sample(
        at=at, job_id=job.id, service=job.service, action=job.action, members=len(live),
        rss_bytes=sum(u.rss_bytes for _, u in live),
        cpu_seconds=sum(u.cpu_seconds for _, u in live),
        threads=sum(u.threads for _, u in live),
        open_fds=None if any(f is None for f in fds) else sum(f for f in fds if f is not None),
        max_fds=max((f for f in fds if f is not None), default=None),
        fd_limit=fd_limit, oom_score=max(scores, default=None), state=main.state,
        wchan=procfs.read_wchan(job.pid or 0) if wchan else "",
        dstate=sum(1 for _, u in live if u.state == "D"),
        zombies=sum(1 for _, u in members if u.state == "Z"))
