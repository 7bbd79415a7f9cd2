"""CPU and memory of a managed process, for `status`.

CPU percent is a rate, so it needs two samples: psutil keeps the previous sample on the
`Process` object, and we keep those objects between calls. The cache key includes the
process's create time so a recycled PID never inherits another process's sample.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import psutil

from reconciler.host.identity import identity_of
from reconciler.identity import Identity

_MAX_CACHED = 1024


@dataclass(frozen=True)
class Usage:
    """CPU and memory of one process, for `status` (read on demand, never stored)."""

    cpu_percent: float  # of one CPU since the previous call for this process (can exceed 100)
    rss_bytes: int


_cache: dict[tuple[int, float], psutil.Process] = {}
_lock = threading.Lock()

SAMPLE_SECONDS = 0.1  # the window a one-off `status` measures CPU over


def sample(identities: Mapping[str, Identity], interval: float = SAMPLE_SECONDS
           ) -> dict[str, Usage]:
    """Usage of each process (by key, e.g. job id) that still is the one named.

    A one-off reader has no earlier sample, so CPU % needs a window: sample every process,
    wait `interval` once (the measuring window, not a synchronization), sample again. A pid
    that is no longer the recorded identity is skipped: its numbers would be a stranger's.
    """
    pids = {key: ident.pid for key, ident in identities.items()
            if identity_of(ident.pid) == ident}
    for pid in pids.values():
        usage(pid)
    if pids:
        time.sleep(interval)
    found = {key: usage(pid) for key, pid in pids.items()}
    return {key: u for key, u in found.items() if u is not None}


def usage(pid: int) -> Usage | None:
    """Usage of `pid`, or None if it is gone, a zombie or not ours to read. The first call
    for a process reports 0.0 CPU: there is no earlier sample to measure against yet."""
    try:
        proc = _cached(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                _forget(pid)
                return None
            return Usage(cpu_percent=proc.cpu_percent(interval=None),
                         rss_bytes=proc.memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        _forget(pid)
        return None


def _cached(pid: int) -> psutil.Process:
    fresh = psutil.Process(pid)
    key = (pid, fresh.create_time())
    with _lock:
        proc = _cache.get(key)
        if proc is None:
            _forget_locked(pid)  # an older process that had this pid is gone
            _trim_locked()
            proc = _cache[key] = fresh
        return proc


def _forget(pid: int) -> None:
    with _lock:
        _forget_locked(pid)


def _forget_locked(pid: int) -> None:
    for key in [k for k in _cache if k[0] == pid]:
        del _cache[key]


def _trim_locked() -> None:
    """Jobs come and go over months; drop samples of processes that no longer run."""
    if len(_cache) < _MAX_CACHED:
        return
    for key, proc in list(_cache.items()):
        if not proc.is_running():
            del _cache[key]
    while len(_cache) >= _MAX_CACHED:  # still full of live ones: oldest first
        del _cache[next(iter(_cache))]
