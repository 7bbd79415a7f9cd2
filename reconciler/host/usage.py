"""CPU and memory of a managed process, for `status` and the metrics endpoint.

Both read /proc once per process, verified against the recorded identity (a recycled pid
is a stranger), and never wait: `status` shows CPU % as the average since the process
started, like ps(1); the metrics endpoint exports cumulative CPU seconds for `rate()`.
"""

from __future__ import annotations

import time

from reconciler.host import procfs
from reconciler.tuples import NamedTuple  # typing's, without importing typing (status)

TYPE_CHECKING = False  # not typing's: `status` needs none of it (issue 13)
if TYPE_CHECKING:
    from collections.abc import Mapping

    from reconciler.identity import Identity


class Usage(NamedTuple):
    """CPU and memory of one process, for `status` (read on demand, never stored)."""

    cpu_percent: float  # of one CPU, averaged since the process started (can exceed 100)
    rss_bytes: int


class Counters(NamedTuple):
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


def read_now(identities: Mapping[str, Identity]) -> dict[str, Usage]:
    """CPU and memory of each process (by key, e.g. job id) that still is the one named, in
    one look: CPU % is its average since it started (CPU time over elapsed time, as ps(1)
    shows it), so `status` waits for no second sample. The recent rate is what `top` and
    `stats` show, from the daemon's samples."""
    boot_id = procfs.read_boot_id()
    since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)  # the clock of `starttime`
    found: dict[str, Usage] = {}
    for key, ident in identities.items():
        stat = procfs.read_stat_usage(ident.pid) if ident.boot_id == boot_id else None
        if stat is None or stat.starttime != ident.starttime_ticks or stat.zombie:
            continue  # gone, ended, or another process has the pid now
        elapsed = since_boot - stat.starttime / procfs.CLOCK_TICKS
        cpu = 100.0 * stat.cpu_seconds / elapsed if elapsed > 0 else 0.0
        found[key] = Usage(cpu_percent=cpu, rss_bytes=stat.rss_bytes)
    return found
