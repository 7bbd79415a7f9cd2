"""CPU and memory of a managed process, for `status` and the metrics endpoint.

CPU percent is a rate, so it needs two samples: psutil keeps the previous sample on the
`Process` object, and a `UsageSampler` keeps those objects between calls. The cache key
includes the process's create time so a recycled PID never inherits another process's sample.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from reconciler.host import procfs
from reconciler.host.identity import identity_of
from reconciler.identity import Identity


@dataclass(frozen=True)
class Usage:
    """CPU and memory of one process, for `status` (read on demand, never stored)."""

    cpu_percent: float  # of one CPU since the previous call for this process (can exceed 100)
    rss_bytes: int


@dataclass(frozen=True, slots=True)
class Counters:
    """What a process has used so far, read in one look (no rate, so no second sample and
    no wait): the metrics endpoint turns CPU seconds into rates itself (`rate()`)."""

    cpu_seconds: float  # user + system since it started
    rss_bytes: int
    threads: int
    open_fds: int | None  # None: /proc/<pid>/fd is not ours to list


def read_counters(identities: Mapping[str, Identity]) -> dict[str, Counters]:
    """Counters of each process (by key, e.g. job id) that still is the one named; a pid
    that now names another process (its start time differs) is skipped. One read of `stat`
    and one stat of `fd` per process, so a scrape of a thousand jobs stays in milliseconds."""
    boot_id = procfs.read_boot_id()
    found: dict[str, Counters] = {}
    for key, ident in identities.items():
        if ident.boot_id != boot_id:
            continue
        usage = procfs.read_usage(ident.pid)
        if usage is None:
            continue
        stat, fds = usage
        if stat.starttime != ident.starttime_ticks or stat.zombie:
            continue  # another process has the pid now, or ours has ended
        found[key] = Counters(cpu_seconds=stat.cpu_seconds, rss_bytes=stat.rss_bytes,
                              threads=stat.threads, open_fds=fds)
    return found


SAMPLE_SECONDS = 0.1  # the window a one-off `status` measures CPU over

ProcessCache = dict[tuple[int, float], psutil.Process]  # (pid, create time) -> its sampler


class UsageSampler:
    """Measures processes, keeping each one's previous sample (psutil keeps it on the
    `Process` object) for the next call. Keyed by pid and create time, so a recycled pid
    never inherits another process's sample. `cache` is the seam a test fills in."""

    def __init__(self, cache: ProcessCache | None = None, max_cached: int = 1024) -> None:
        self._cache: ProcessCache = {} if cache is None else cache
        self._max_cached = max_cached
        self._lock = threading.Lock()

    def sample(self, identities: Mapping[str, Identity], interval: float = SAMPLE_SECONDS
               ) -> dict[str, Usage]:
        """Usage of each process (by key, e.g. job id) that still is the one named.

        A one-off reader has no earlier sample, so CPU % needs a window: sample every
        process, wait `interval` once (the measuring window, not a synchronization), sample
        again. A pid that is no longer the recorded identity is skipped: its numbers would
        be a stranger's.
        """
        pids = {key: ident.pid for key, ident in identities.items()
                if identity_of(ident.pid) == ident}
        for pid in pids.values():
            self.usage(pid)
        if pids:
            time.sleep(interval)
        found = {key: self.usage(pid) for key, pid in pids.items()}
        return {key: u for key, u in found.items() if u is not None}

    def usage(self, pid: int) -> Usage | None:
        """Usage of `pid`, or None if it is gone, a zombie or not ours to read. The first
        call for a process reports 0.0 CPU: there is no earlier sample to measure against."""
        try:
            proc = self._cached(pid)
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    self._forget(pid)
                    return None
                return Usage(cpu_percent=proc.cpu_percent(interval=None),
                             rss_bytes=proc.memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is NoSuchProcess
            self._forget(pid)
            return None

    def _cached(self, pid: int) -> psutil.Process:
        fresh = psutil.Process(pid)
        key = (pid, fresh.create_time())
        with self._lock:
            proc = self._cache.get(key)
            if proc is None:
                self._forget_locked(pid)  # an older process that had this pid is gone
                self._trim_locked()
                proc = self._cache[key] = fresh
            return proc

    def _forget(self, pid: int) -> None:
        with self._lock:
            self._forget_locked(pid)

    def _forget_locked(self, pid: int) -> None:
        for key in [k for k in self._cache if k[0] == pid]:
            del self._cache[key]

    def _trim_locked(self) -> None:
        """Jobs come and go over months; drop samples of processes that no longer run."""
        if len(self._cache) < self._max_cached:
            return
        for key, proc in list(self._cache.items()):
            if not proc.is_running():
                del self._cache[key]
        while len(self._cache) >= self._max_cached:  # still full of live ones: oldest first
            del self._cache[next(iter(self._cache))]
