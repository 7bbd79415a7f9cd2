"""Health scheduling: when each running job is probed, and what its results add up to.

A probe is a single, bounded attempt (`reconciler.host.probes`, the socket and process
work); this module decides how often to ask and counts the failures that matter: ready after
a first pass, failures only after ready and past `start_period`, one notification when a job
becomes ready or reaches its threshold. It does no I/O of its own: it runs probes on worker
threads and keeps their results.

It stays a module of its own beside the daemon, not inside daemon.py, because it has two
users: the daemon's `HealthMonitor` probes on every job's interval, and `reconcile --once`
(controller.py) probes all waiting jobs at once with `probe_all`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from reconciler.host.probes import probe_reason
from reconciler.spec.model import Health

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeTarget:
    """What to probe for one running job, and since when: the daemon builds one per job with
    a health check after each pass, `--once` one per job still waiting for its check."""

    job_id: str
    health: Health  # the spec's probe, paths already resolved
    cwd: str | None
    env: dict[str, str] | None
    started_at: float  # time.time() when the job's process started (start_period counts here)


def probe_all(targets: Sequence[ProbeTarget], deadline: float) -> dict[str, str | None]:
    """Probe every target at once (`reconcile --once`): a thread per probe that needs one
    (idle threads are reused), each probe bounded by its own timeout and by `deadline`, so
    the whole call ends by the deadline whatever the targets do. Job id -> reason/None."""
    if not targets:
        return {}
    with ThreadPoolExecutor(len(targets), thread_name_prefix="health-once") as pool:
        futures = {t.job_id: pool.submit(probe_reason, t.health, cwd=t.cwd, env=t.env,
                                         deadline=deadline) for t in targets}
    return {job_id: future.result() for job_id, future in futures.items()}


@dataclass(frozen=True)
class HealthState:
    """A job's probe results as the planner needs them (`Observed.ready` / `.failing`): a
    snapshot, so a pass never sees the monitor's bookkeeping change under it."""

    ready: bool  # passed at least once since the target was (re)synced
    consecutive_failures: int  # since the last success; counted only after ready/start_period
    last_error: str | None  # reason of the latest failed probe; None after a success


@dataclass(eq=False)
class _Entry:
    """Mutable per-job bookkeeping; compared by identity so a result that comes back for a
    target that was re-synced meanwhile (new process) is recognised and dropped."""

    target: ProbeTarget
    due: float  # time.monotonic() of the next probe
    ready: bool = False
    failures: int = 0
    last_error: str | None = None


class HealthMonitor:
    """Probes every running job with a health check on its own interval, off the controller's
    thread, and calls on_change() when a job becomes ready or reaches its failure threshold,
    so the controller runs a pass exactly when it matters.

    Scheduling uses the monotonic clock (a wall-clock jump must not stall or burst probes);
    `clock` is only compared with `ProbeTarget.started_at` for `start_period`. on_change runs
    on a probe worker thread and must be cheap (set an event, poke the controller).

    A slow probe never delays another job's. Each job has at most one probe in flight
    (`_busy`), and the workers are elastic: `base_workers` serve the usual quick probes (a
    burst of a thousand due at once does not make a thousand threads), and every probe that
    has run for `STUCK_AFTER` counts as stuck and gets a worker added in its place while
    probes wait, so at most STUCK_AFTER after every base worker got stuck, a due probe has a
    worker again. Workers above the base leave after `IDLE_EXIT_SECONDS` without work. With a
    fixed pool of four, four trickling endpoints held every worker for good.
    """

    STUCK_AFTER = 0.02  # seconds: a loopback connect takes well under a millisecond
    IDLE_EXIT_SECONDS = 10.0

    def __init__(self, on_change: Callable[[], None], *, base_workers: int = 4,
                 clock: Callable[[], float] = time.time) -> None:
        self._on_change = on_change
        self._clock = clock
        self._base_workers = base_workers
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the scheduler: entries, dues, results
        self._work = threading.Condition(lock)  # idle workers wait here for queued probes
        self._entries: dict[str, _Entry] = {}
        self._busy: set[str] = set()  # job ids with a probe queued or in flight
        self._queue: deque[_Entry] = deque()
        self._running_since: dict[str, float] = {}  # job id -> monotonic start of its probe
        self._workers = 0
        self._idle = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Returns without waiting for probes in flight: each is bounded by its own timeout
        and its result is discarded. Workers are daemon threads: they never hold up the
        interpreter's exit."""
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            for entry in self._queue:
                self._busy.discard(entry.target.job_id)
            self._queue.clear()
            self._cond.notify_all()
            self._work.notify_all()
        if thread is not None:
            thread.join()

    def sync(self, targets: Iterable[ProbeTarget]) -> None:
        """Probe exactly these. Same job and same started_at keeps its state (a health edit
        restarts nothing, so it resets nothing); a new process starts from scratch."""
        now = time.monotonic()
        with self._cond:
            fresh: dict[str, _Entry] = {}
            for target in targets:
                old = self._entries.get(target.job_id)
                if old is not None and old.target.started_at == target.started_at:
                    old.target = target
                    old.due = min(old.due, now + target.health.interval)
                    fresh[target.job_id] = old
                else:
                    fresh[target.job_id] = _Entry(target=target, due=now)
            self._entries = fresh
            self._cond.notify_all()

    def states(self) -> dict[str, HealthState]:
        with self._cond:
            return {job_id: HealthState(e.ready, e.failures, e.last_error)
                    for job_id, e in self._entries.items()}

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                for job_id, entry in self._entries.items():
                    if job_id not in self._busy and entry.due <= now:
                        self._submit(entry, now)
                self._add_workers(now)
                self._cond.wait(self._next_wait(now))

    def _submit(self, entry: _Entry, now: float) -> None:
        self._busy.add(entry.target.job_id)
        entry.due = now + entry.target.health.interval  # the interval counts from probe start
        self._queue.append(entry)
        self._work.notify()

    def _add_workers(self, now: float) -> None:
        """Keep `base_workers` that are not stuck, as long as probes wait for a worker."""
        stuck = sum(1 for since in self._running_since.values()
                    if now - since >= self.STUCK_AFTER)
        while len(self._queue) > self._idle and self._workers < stuck + self._base_workers:
            self._workers += 1
            threading.Thread(target=self._worker, name="health-probe", daemon=True).start()

    def _next_wait(self, now: float) -> float | None:
        """Until the next probe is due or, while probes wait, a running one counts as stuck."""
        times = [e.due for job_id, e in self._entries.items() if job_id not in self._busy]
        if self._queue:
            times += [since + self.STUCK_AFTER for since in self._running_since.values()
                      if since + self.STUCK_AFTER > now]
        return max(0.0, min(times) - now) if times else None

    def _worker(self) -> None:
        while True:
            with self._cond:
                entry = self._take()
                if entry is None:
                    self._workers -= 1
                    return
            self._probe_once(entry)

    def _take(self) -> _Entry | None:
        """The next queued probe (lock held); None when this worker should end."""
        while not self._queue:
            if self._stopping:
                return None
            self._idle += 1
            notified = self._work.wait(self.IDLE_EXIT_SECONDS)
            self._idle -= 1
            if not notified and not self._queue and self._workers > self._base_workers:
                return None
        entry = self._queue.popleft()
        self._running_since[entry.target.job_id] = time.monotonic()
        if self._queue:
            self._cond.notify()  # the scheduler must see when this probe becomes stuck
        return entry

    def _probe_once(self, entry: _Entry) -> None:
        """A result for an entry that was replaced meanwhile (the job respawned) or dropped
        describes a process that no longer matters: it is discarded."""
        target = entry.target
        changed = False
        try:
            reason = probe_reason(target.health, cwd=target.cwd, env=target.env)
            with self._cond:
                current = self._entries.get(target.job_id) is entry and not self._stopping
                changed = current and self._record(entry, reason)
        finally:
            with self._cond:
                self._busy.discard(target.job_id)
                self._running_since.pop(target.job_id, None)
                self._cond.notify_all()
        if changed:
            self._notify()

    def _record(self, entry: _Entry, reason: str | None) -> bool:
        """Apply one result; True when the controller must look (ready, or threshold hit)."""
        entry.last_error = reason
        if reason is None:
            entry.failures = 0
            became_ready, entry.ready = not entry.ready, True
            return became_ready
        if not entry.ready or self._in_start_period(entry.target):
            return False  # a slow starter is "starting", not unhealthy
        entry.failures += 1
        return entry.failures == entry.target.health.failures

    def _in_start_period(self, target: ProbeTarget) -> bool:
        start_period: float = target.health.start_period  # the spec types it loosely (Any)
        return self._clock() < target.started_at + start_period

    def _notify(self) -> None:
        try:
            self._on_change()
        except Exception:
            log.exception("health on_change callback failed")

