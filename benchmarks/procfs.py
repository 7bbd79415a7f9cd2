"""Just enough /proc reading for the benchmark, independent of reconciler/ so that measuring
the reconciler never goes through the code under test.

The kernel here has no /proc/<pid>/task/<tid>/children, so "which processes does this
supervisor run" is answered by a /proc scan that only reads the stat file of pids it has not
seen before: one listdir per poll. Waiting for a *new* process needs no listing at all: the
kernel hands out pids in order and /proc/loadavg names the last one, so only the pids handed
out since the last look are read (`ChildTracker.poll_new`). A listdir of /proc grows with the
host (3–10 ms at ~3300 processes here), which made the 1 ms respawn poller's resolution, and
its competition for the two cores, grow with N for every supervisor alike.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True, slots=True)
class Stat:
    comm: str
    state: str  # R, S, Z, …
    ppid: int
    cpu_ticks: int  # utime + stime
    starttime: int  # clock ticks after boot: with the pid, the process's identity
    rss_kib: int


def read_stat(pid: int) -> Stat | None:
    """Parse after the last ')': the command name may contain spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2:].split()
    return Stat(comm=comm, state=fields[0], ppid=int(fields[1]),
                cpu_ticks=int(fields[11]) + int(fields[12]), starttime=int(fields[19]),
                rss_kib=int(fields[21]) * PAGE_KIB)


def alive(pid: int, starttime: int) -> bool:
    """The process with this identity still runs: same pid and start time (a recycled pid
    has another), and not a zombie (dead, only waiting to be reaped)."""
    st = read_stat(pid)
    return st is not None and st.starttime == starttime and st.state != "Z"


def pids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def last_pid() -> int:
    """The pid the kernel handed out last in our pid namespace (/proc/loadavg's fifth
    field, e.g. `0.40 0.71 0.94 1/84 7667`)."""
    with open("/proc/loadavg", "rb") as f:
        return int(f.read().rsplit(maxsplit=1)[1])


def has_marker(pid: int, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


@dataclass
class ChildTracker:
    """Tracks the `sleep` children of one supervisor process, cheaply enough to poll every
    millisecond: each pid's stat is read once when it first appears (twice while it is
    still `sh`, before its exec)."""

    parent: int
    comm: str = "sleep"
    running: set[int] = field(default_factory=set)
    others: set[int] = field(default_factory=set)  # children that are not (yet) `sleep`
    _seen: set[int] = field(default_factory=set)
    _pending: set[int] = field(default_factory=set)  # re-read every poll
    _top: int = 0  # last_pid() just before the last look: newer pids are new processes
    _unseen: dict[int, float] = field(default_factory=dict)  # handed out, not in /proc yet

    def poll(self) -> set[int]:
        """Refresh and return the set of running managed pids."""
        self._top = last_pid()  # before listing: whatever starts meanwhile is seen by both
        self._unseen.clear()
        now = pids()
        self.running &= now
        self.others &= now
        self._seen &= now
        for pid in (now - self._seen) | (self._pending & now):
            self._seen.add(pid)
            self._classify(pid)
        self._pending &= now
        return self.running

    def poll_new(self) -> set[int]:
        """Like `poll`, for processes started since the last look, without listing /proc:
        reads the pids handed out since then (threads take pids too; they fail the parent
        check) and those still to exec. Does not notice exits: `running` may keep a dead
        pid until the next `poll`. A pid handed out but not in /proc yet (its fork is under
        way) is retried for a second; a wrap-around of the pid counter falls back to `poll`."""
        top = last_pid()
        if top < self._top:
            return self.poll()
        fresh = set(range(self._top + 1, top + 1)) | set(self._unseen)
        self._top = top
        now = time.monotonic()
        for pid in fresh:
            if not os.path.exists(f"/proc/{pid}"):
                if now - self._unseen.setdefault(pid, now) > 1.0:
                    del self._unseen[pid]
                continue
            self._unseen.pop(pid, None)
            self._seen.add(pid)
            self._classify(pid)
        for pid in list(self._pending - fresh):
            self._classify(pid)
        return self.running

    def _classify(self, pid: int) -> None:
        """A child that is not `sleep` yet is re-read every poll: it may still exec into it."""
        st = read_stat(pid)
        if st is None or st.ppid != self.parent:
            self._pending.discard(pid)
            self.others.discard(pid)
        elif st.comm == self.comm:
            self.running.add(pid)
            self._pending.discard(pid)
            self.others.discard(pid)
        else:
            self._pending.add(pid)
            self.others.add(pid)


def wait_for(predicate, timeout: float, interval: float = 0.001) -> float | None:
    """Poll `predicate` every `interval`; the elapsed seconds when it held, None on timeout."""
    start = time.perf_counter()
    deadline = start + timeout
    while True:
        if predicate():
            return time.perf_counter() - start
        if time.perf_counter() > deadline:
            return None
        time.sleep(interval)


def kill_marked(marker: bytes) -> int:
    """SIGKILL every process whose environment carries `marker`: the managed processes of
    every supervisor this benchmark started, whatever state their supervisor is in."""
    killed = 0
    me = os.getpid()
    for pid in pids():
        if pid != me and has_marker(pid, marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed
