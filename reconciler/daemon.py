"""The long-running controller: many triggers, one serialized pass.

Every trigger (a spec file changed, a managed process exited, a health check flipped, the
periodic resync, a backoff timer came due) only *kicks*: it sets an event. Passes run one at
a time on the thread that called `run()`, which owns the only SQLite writer connection. A kick
that arrives while a pass runs leaves the event set, so the next pass follows at once: no
kick is ever lost, and a burst of kicks costs one pass, not one each.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from types import FrameType
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from reconciler.controller import HealthResults, PassResult, Reconciler
from reconciler.desired import Desired
from reconciler.health import HealthMonitor, ProbeTarget
from reconciler.host.exits import ExitWatcher
from reconciler.logcap import LogCapper, LogTarget
from reconciler.settings import Settings
from reconciler.state.lock import LockTimeout
from reconciler.state.records import JobRecord
from reconciler.text import printable
from reconciler.timing import DAEMON_WAKE_SECONDS, SPEC_WATCH_STEP_MS
from reconciler.watch import SpecWatcher

log = logging.getLogger(__name__)
UTC = dt.UTC
# Every event already triggers a pass (spec change, process exit, health change, backoff
# timer); the resync only catches what has no event, e.g. a pidfile or socket changed by
# hand. Each resync is a full pass, so its interval is most of the idle cost.
RESYNC_SECONDS = 30.0
# A pass that fails as a whole (not one job's trouble: those are recorded per job) is tried
# again after RETRY_INITIAL, doubling up to RETRY_MAX, instead of waiting for the resync.
RETRY_INITIAL_SECONDS = 0.2
RETRY_MAX_SECONDS = 30.0


class Passes(Protocol):
    """What the daemon needs of a `Reconciler`: one pass, given the monitor's probe results.

    The daemon opens it (`open_passes`) on the thread that runs the passes, because the
    Reconciler's SQLite connection belongs to one thread. A protocol, so that a test hands
    the daemon a reconciler that fails or kicks on purpose instead of patching the class.
    """

    def reconcile(self, health: HealthResults | None = None) -> PassResult: ...


OpenPasses = Callable[[], AbstractContextManager[Passes]]


def retry_delay(failed_passes: int, initial: float, most: float) -> float:
    """How long after the n-th failed pass in a row the next try runs: doubling from
    `initial`, never more than `most`."""
    return min(initial * 2.0 ** (failed_passes - 1), most)


class Daemon:
    """The controller process: starts the triggers, runs one pass per burst of kicks until
    stopped, and survives any single pass failing.

    `open_passes` is the seam to what runs a pass (default: a `Reconciler` on `settings`);
    `retry_initial`/`retry_max` bound the retry backoff of failed passes (production
    defaults; a test shortens them rather than waiting them out).
    """

    def __init__(self, settings: Settings, *, allow_empty: bool = False,
                 resync: float = RESYNC_SECONDS,
                 retry_initial: float = RETRY_INITIAL_SECONDS,
                 retry_max: float = RETRY_MAX_SECONDS,
                 open_passes: OpenPasses | None = None) -> None:
        self.settings = settings
        self.allow_empty = allow_empty
        self.resync = resync
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._open_passes = open_passes or self._open_reconciler
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.passes = 0
        self.failed_passes = 0  # in a row; drives the retry backoff
        self._last_failure: str | None = None
        self._last_problems: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self.scheduler = BackgroundScheduler(timezone=UTC)
        # step 50 ms: a shorter step costs idle CPU (docs/benchmarks.md, Findings)
        self.watcher = SpecWatcher(settings.specs_dir, self.kick, step_ms=SPEC_WATCH_STEP_MS)
        self.exits = ExitWatcher(lambda _identity: self.kick())
        self.health = HealthMonitor(self.kick)
        self.logcap = LogCapper()

    def _open_reconciler(self) -> Reconciler:
        return Reconciler(self.settings, allow_empty=self.allow_empty)

    def kick(self) -> None:
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> int:
        """Converge until `stop()` (or SIGTERM/SIGINT when installed). Managed processes run in
        their own sessions and keep running after this returns."""
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        with self._open_passes() as passes:
            self._start_triggers()
            try:
                self.kick()
                while not self.stopping.is_set():
                    if self.wake.wait(timeout=DAEMON_WAKE_SECONDS) and not self.stopping.is_set():
                        self.wake.clear()
                        self._pass(passes)
                        if self.passes == 1:
                            _freeze_start_up_heap()
            finally:
                self._stop_triggers()
        return 0

    def install_signal_handlers(self) -> None:
        def handle(_signum: int, _frame: FrameType | None) -> None:
            self.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handle)

    # --- one pass ---------------------------------------------------------------------------

    def _pass(self, passes: Passes) -> None:
        try:
            result = passes.reconcile(health=self.health.states())
        except LockTimeout as err:
            log.warning("%s; trying again", err)
            self.kick()
            return
        except Exception as err:  # a pass must never take the controller down with it
            self._pass_failed(err)
            return
        if self.failed_passes:
            log.info("pass succeeded again after %d failed passes", self.failed_passes)
        self.failed_passes, self._last_failure = 0, None
        self.passes += 1
        self._report(result)
        self._watch(result)
        if result.plan.changes:
            self.kick()  # e.g. dependents wait for what this pass just started

    def _pass_failed(self, err: Exception) -> None:
        """Retry with backoff; log the traceback once per distinct error, not on every try
        (a broken disk would otherwise fill the log five times a second)."""
        self.failed_passes += 1
        delay = retry_delay(self.failed_passes, self.retry_initial, self.retry_max)
        what = f"{type(err).__name__}: {err}"
        if what != self._last_failure:
            log.error("pass failed: %s; retrying in %.1fs (with backoff up to %.0fs)",
                      printable(what), delay, self.retry_max, exc_info=err)
            self._last_failure = what
        self._kick_at(time.time() + delay, "retry")

    def _kick_at(self, at: float, job_id: str) -> None:
        self.scheduler.add_job(
            self.kick, DateTrigger(run_date=dt.datetime.fromtimestamp(at, UTC), timezone=UTC),
            id=job_id, replace_existing=True)

    def _watch(self, result: PassResult) -> None:
        running = [j for j in result.jobs if j.identity is not None]
        self.exits.sync(j.identity for j in running if j.identity is not None)
        self.health.sync(_probe_targets(result.desired, running))
        self.logcap.sync(_log_targets(result.desired, running))
        self.watcher.also_watch(path for service in result.loaded.services.values()
                                for action in service.actions for path in action.env_file)
        due = result.next_due()
        if due is not None:
            self._kick_at(due, "due")

    def _report(self, result: PassResult) -> None:
        """Steps every pass; spec errors and notes only when they change, or a broken file
        would repeat in the log on every resync."""
        problems = (tuple(str(e) for e in result.loaded.errors), result.plan.notes)
        if problems != self._last_problems:
            self._last_problems = problems
            for error in problems[0]:
                log.error("%s", error)
            for note in problems[1]:
                log.warning("%s", note)
        for step in result.plan.changes:
            log.info("%s", step.describe())

    # --- triggers ---------------------------------------------------------------------------

    def _start_triggers(self) -> None:
        self.scheduler.add_job(
            self.kick, IntervalTrigger(seconds=self.resync, jitter=self.resync * 0.2,
                                       timezone=UTC),
            id="resync", max_instances=1, coalesce=True)
        self.scheduler.start()
        self.watcher.start()
        self.exits.start()
        self.health.start()
        self.logcap.start()

    def _stop_triggers(self) -> None:
        self.watcher.stop()
        self.exits.stop()
        self.health.stop()
        self.logcap.stop()
        self.scheduler.shutdown(wait=False)


def _freeze_start_up_heap() -> None:
    """What start-up and the first pass built (modules, pydantic schemas, parsed specs, the
    job records) lives as long as the daemon. Moved out of the collector's sight, it no
    longer makes every full collection walk it: those walks paused passes and made the
    worst respawn times (docs/benchmarks.md, Findings)."""
    gc.collect()
    gc.freeze()


def _probe_targets(desired: Desired, running: list[JobRecord]) -> list[ProbeTarget]:
    by_key = {a.key: a for a in desired.actions}
    targets: list[ProbeTarget] = []
    for job in running:
        action = by_key.get(job.key)
        if action is None or action.health is None or action.generation != job.generation:
            continue
        if job.phase == "stopping":  # going away: its readiness no longer matters
            continue
        targets.append(ProbeTarget(job_id=job.id, health=action.health, cwd=action.cwd,
                                   env=dict(action.env),
                                   started_at=job.started_at or 0.0))
    return targets


def _log_targets(desired: Desired, running: list[JobRecord]) -> list[LogTarget]:
    """The live logs of running jobs, each held to its spec's `logs` limits between passes
    (a process writing 100 MB/s fills its cap in a tenth of a second)."""
    by_key = {a.key: a for a in desired.actions}
    return [LogTarget(action.log_path, action.spec.logs.max_size, action.spec.logs.keep)
            for job in running if (action := by_key.get(job.key)) is not None]
