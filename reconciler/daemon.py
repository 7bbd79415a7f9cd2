"""The long-running controller: many triggers, one serialized pass.

Every trigger (a spec file changed, a managed process exited, a health check flipped, the
periodic resync, a backoff timer came due) only *kicks*: it sets an event. Passes run one at
a time on the thread that called `run()`, which owns the only SQLite writer connection. A kick
that arrives while a pass runs leaves the event set, so the next pass follows at once: no
kick is ever lost, and a burst of kicks costs one pass, not one each.

Under systemd (DESIGN §8.3) the loop also tells the service manager how it is doing:
`READY=1` after the first successful pass, a `STATUS=` line as the counts change,
`WATCHDOG=1` from the loop itself (a pass that hangs stops the pings), `STOPPING=1` on the
way out. SIGHUP is a reload: every cache is dropped and a full pass re-reads everything,
between `RELOADING=1` and `READY=1` (the `Type=notify-reload` protocol).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import logging
import math
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from reconciler import resources
from reconciler.anomalies import DEFAULT_RULES, Rules
from reconciler.controller import HealthResults, Keys, OverLimit, PassResult, Reconciler
from reconciler.desired import Desired
from reconciler.health import HealthMonitor, ProbeTarget
from reconciler.host.exits import ExitWatcher
from reconciler.identity import Identity
from reconciler.logcap import LogCapper, LogTarget
from reconciler.plan import Spawn, Step, UpdateJob
from reconciler.sdnotify import Notifier
from reconciler.settings import Settings
from reconciler.state.lock import LockTimeout
from reconciler.state.records import Event, JobRecord, Sample
from reconciler.text import printable
from reconciler.timing import DAEMON_WAKE_SECONDS, SPEC_WATCH_STEP_MS
from reconciler.watch import SpecWatcher

if TYPE_CHECKING:  # loaded later (_timers), or only with --metrics-addr (prometheus_client)
    from apscheduler.schedulers.background import BackgroundScheduler

    from reconciler.metrics import Metrics
    from reconciler.metrics_server import MetricsServer

log = logging.getLogger(__name__)
UTC = dt.UTC
# Every event already triggers a pass (spec change, process exit, health change, backoff
# timer); the resync only catches what has no event, e.g. a pidfile or socket changed by
# hand. Each resync is a full pass, so its interval is most of the idle cost.
RESYNC_SECONDS = 30.0
# a pass that changed more jobs than this points the watchers at every job afresh
WATCH_CHANGES_MOST = 64
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

    def reconcile(self, health: HealthResults | None = None,
                  over_limit: OverLimit | None = None, keys: Keys | None = None
                  ) -> PassResult: ...

    def forget_caches(self) -> None: ...

    def record_resources(self, samples: Sequence[Sample],
                         anomalies: Mapping[str, Mapping[str, str]], *,
                         window: float) -> list[Event]: ...

    def newest_sample_at(self) -> float | None: ...


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
    defaults; a test shortens them rather than waiting them out). `notifier` talks to
    systemd (a no-op one without `NOTIFY_SOCKET`); `metrics` (with `serve`, its endpoint)
    is updated after every pass.
    """

    def __init__(self, settings: Settings, *, allow_empty: bool = False,
                 resync: float = RESYNC_SECONDS,
                 retry_initial: float = RETRY_INITIAL_SECONDS,
                 retry_max: float = RETRY_MAX_SECONDS,
                 open_passes: OpenPasses | None = None,
                 notifier: Notifier | None = None,
                 metrics: Metrics | None = None,
                 serve: MetricsServer | None = None,
                 sample_interval: float = resources.DEFAULT_INTERVAL_SECONDS,
                 rules: Rules = DEFAULT_RULES) -> None:
        self.settings = settings
        self.allow_empty = allow_empty
        self.resync = resync
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._open_passes = open_passes or self._open_reconciler
        self.notifier = notifier or Notifier(None)
        self.metrics = metrics
        self.serve = serve
        self.wake = threading.Event()  # the loop has something to look at
        self.pass_wanted = threading.Event()  # ... and it is a pass
        # what that pass is for: keys merged from every trigger since the last pass, or a
        # full pass (None), which wins over keys (docs/architecture.md, "Keyed passes")
        self._wanted_lock = threading.Lock()
        self._wanted: Keys | None = Keys()
        self._health_seen: dict[str, tuple[bool, int]] = {}  # job id -> (ready, failures)
        self._service_of_pid: dict[int, str] = {}
        self._service_of_job: dict[str, str] = {}
        # what `_watch` last pointed the watchers at: the records, specs and load it saw
        self._watched: dict[str, JobRecord] = {}
        self._watched_desired: Desired | None = None
        self._watched_loaded: object = None
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.stop_reason = "stop() called"
        self.last_result: PassResult | None = None
        self._pinged_at = -math.inf  # time.monotonic() of the last watchdog ping
        self.passes = 0
        self.failed_passes = 0  # in a row; drives the retry backoff
        self._last_failure: str | None = None
        self._last_problems: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self._scheduler: BackgroundScheduler | None = None  # see _timers
        # step 50 ms: a shorter step costs idle CPU (docs/benchmarks.md, Findings)
        self.watcher = SpecWatcher(settings.specs_dir, lambda: self.kick(Keys(specs=True)),
                                   step_ms=SPEC_WATCH_STEP_MS)
        self.exits = ExitWatcher(self._exited)
        self.health = HealthMonitor(lambda: self.kick(Keys()))  # keyed by what changed
        self.logcap = LogCapper()
        self.over_limit: OverLimit = {}  # from the last sampling round, for the next pass
        self.resources = resources.ResourceMonitor(
            self._jobs_now, self._memory_limits, self._resources_ready, interval=sample_interval,
            rules=rules)

    def _jobs_now(self) -> Sequence[JobRecord]:
        result = self.last_result  # one reference read: the monitor's thread never sees half
        return result.jobs if result is not None else ()

    def _memory_limits(self) -> dict[tuple[str, str], int]:
        result = self.last_result
        if result is None:
            return {}
        return {a.key: a.max_rss for a in result.desired.actions if a.max_rss is not None}

    def _open_reconciler(self) -> Reconciler:
        return Reconciler(self.settings, allow_empty=self.allow_empty, caps_logs=False)

    def kick(self, keys: Keys | None = None) -> None:
        """A pass is wanted (a trigger fired): for `keys`, or a full one (None)."""
        with self._wanted_lock:
            if keys is None or self._wanted is None:
                self._wanted = None
            else:
                self._wanted = self._wanted | keys
        self.pass_wanted.set()
        self.wake.set()

    def _take_wanted(self) -> Keys | None:
        with self._wanted_lock:
            wanted, self._wanted = self._wanted, Keys()
        return wanted

    def _exited(self, identity: Identity) -> None:
        """A managed process exited: a pass for its service (a full one if unknown)."""
        service = self._service_of_pid.get(identity.pid)
        self.kick(Keys(frozenset({service})) if service is not None else None)

    def _due(self) -> None:
        """The time a pass asked to look again came: the services with something due (a
        backoff or blocked start, a stop in progress, a foreign holder being stopped).
        A spec file waiting to settle, or nothing to name, asks for a full pass."""
        result = self.last_result
        if result is None or result.loaded.unsettled_until is not None:
            self.kick()
            return
        now = time.time()
        services = frozenset(
            j.service for j in result.jobs
            if j.phase == "stopping" or j.stop_deadline is not None
            or (j.next_start_at is not None and j.next_start_at <= now + 0.05))
        self.kick(Keys(services) if services else None)

    def _keys_of_health(self, states: HealthResults) -> frozenset[str] | None:
        """Services of the jobs whose readiness or failure count changed since the last pass
        looked; None when a job is not known (a full pass)."""
        seen = {job_id: (st.ready, st.consecutive_failures) for job_id, st in states.items()}
        changed = {job_id for job_id, now in seen.items()
                   if self._health_seen.get(job_id) != now}
        self._health_seen = seen
        services = {self._service_of_job.get(job_id) for job_id in changed}
        return None if None in services else frozenset(s for s in services if s is not None)

    def _resources_ready(self) -> None:
        """A sampling round is in: the loop stores it, and passes only if it asks to (a
        job over its memory limit): a pass every sampling round would cost far more than
        sampling itself."""
        self.wake.set()

    def stop(self, reason: str = "stop() called") -> None:
        self.stop_reason = reason
        self.stopping.set()
        self.wake.set()

    def reload(self) -> None:
        """SIGHUP: drop every cache and re-read everything in the next pass."""
        self.reload_requested.set()
        self.wake.set()

    def run(self) -> int:
        """Converge until `stop()` (or SIGTERM/SIGINT when installed). Managed processes run in
        their own sessions and keep running after this returns."""
        with self._open_passes() as passes:
            self.resources.resume_after(passes.newest_sample_at())
            self._start_triggers()
            try:
                self.kick()
                while not self.stopping.is_set():
                    self.wake.wait(timeout=self._nap())
                    self.wake.clear()  # before looking: a kick from now on wakes us again
                    self._ping_watchdog()
                    if self.stopping.is_set():
                        break
                    self._record_resources(passes)
                    if self.reload_requested.is_set():
                        self._reload(passes)
                    elif self.pass_wanted.is_set():
                        self.pass_wanted.clear()
                        self._pass(passes, self._take_wanted())
                    self._timers()  # from the first pass on (it says why)
            finally:
                self._stopping()
                self._stop_triggers()
        return 0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads. A Python handler runs on the loop's own
        thread between two bytecodes, possibly while the loop holds an Event's lock (inside
        `wake.wait()` or `.clear()`; those locks are not reentrant): setting the Event there
        would block forever. So the handler only writes the signal's number into a pipe, and
        a thread of its own acts on it."""
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(write_fd, False)

        def note(signum: int, _frame: FrameType | None) -> None:
            with contextlib.suppress(BlockingIOError):  # a full pipe: plenty already noted
                os.write(write_fd, bytes([signum]))

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, note)
        threading.Thread(target=self._act_on_signals, args=(read_fd,), name="signals",
                         daemon=True).start()

    def _act_on_signals(self, read_fd: int) -> None:
        while received := os.read(read_fd, 64):
            for signum in received:
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    self.stop(signal.Signals(signum).name)

    # --- systemd ----------------------------------------------------------------------------

    def _nap(self) -> float:
        """How long the loop may sleep without a trigger: short enough to see a stop, and
        to ping the watchdog in time."""
        if self.notifier.watchdog_seconds is None:
            return DAEMON_WAKE_SECONDS
        return max(min(DAEMON_WAKE_SECONDS, self.notifier.watchdog_seconds / 4), 0.01)

    def _ping_watchdog(self) -> None:
        """From the loop, between passes: pings stop when a pass hangs. Every half of the
        interval systemd set (sd_watchdog_enabled(3)); the loop wakes every quarter of it,
        so no gap between pings is longer than three quarters."""
        every = self.notifier.watchdog_seconds
        if every is not None and time.monotonic() - self._pinged_at >= every / 2:
            self.notifier.watchdog()
            self._pinged_at = time.monotonic()

    def _reload(self, passes: Passes) -> None:
        """Before the first successful pass systemd still waits for start-up: a reload then
        says nothing to it, since its closing READY=1 would call the daemon started."""
        self.reload_requested.clear()
        self.pass_wanted.clear()  # the reload's pass is the one wanted
        self._take_wanted()  # ... and it is a full one
        started = self.passes > 0
        if started:
            self.notifier.reloading()
        log.info("reload (SIGHUP): caches dropped, re-reading every spec file")
        passes.forget_caches()
        result = self._pass(passes)
        log.info("reload done: %s", status_line(result) if result else "the pass failed; "
                 "retrying with backoff")
        if started:
            self.notifier.ready(status_line(result or self.last_result))

    def _stopping(self) -> None:
        left = status_line(self.last_result)
        log.info("stopping (%s): managed processes keep running (%s)", self.stop_reason, left)
        self.notifier.stopping(f"stopping; {left}")

    # --- one pass ---------------------------------------------------------------------------

    def _pass(self, passes: Passes, wanted: Keys | None = None) -> PassResult | None:
        """One pass: keyed when `wanted` names keys, full when it is None."""
        started = time.monotonic()
        states = self.health.states()
        health_keys = self._keys_of_health(states)
        if wanted is not None:
            wanted = None if health_keys is None else wanted | Keys(health_keys)
            if self.over_limit and wanted is not None:
                wanted = wanted | Keys(frozenset(
                    s for j in self.over_limit if (s := self._service_of_job.get(j))))
            if wanted is not None and not wanted.services and not wanted.specs:
                return self.last_result  # nothing keyed after all (a probe result as before)
        try:
            result = passes.reconcile(health=states, over_limit=self.over_limit, keys=wanted)
        except LockTimeout as err:
            log.warning("%s; trying again", err)
            self.kick(wanted)
            return None
        except Exception as err:  # a pass must never take the controller down with it
            if self.metrics is not None:
                self.metrics.failed(time.monotonic() - started)
            self._pass_failed(err)
            return None
        if self.failed_passes:
            log.info("pass succeeded again after %d failed passes", self.failed_passes)
        self.failed_passes, self._last_failure = 0, None
        self.over_limit = {}  # acted on: the process over its limit is being stopped
        self.passes += 1
        self.last_result = result
        self._report(result)
        self._watch(result)
        self._publish(result, time.monotonic() - started)
        if self.passes == 1:
            self._first_pass_done(result, time.monotonic() - started)
        if result.plan.changes:
            self.kick(_keys_of_steps(result.plan.changes))  # e.g. dependents of what started
        return result

    def _publish(self, result: PassResult, seconds: float) -> None:
        if self.metrics is not None:
            from reconciler.metrics import seen_of

            self.metrics.passed(seen_of(result), seconds)
        if self.passes > 1 and self.notifier.enabled:  # a walk over every job: only for systemd
            self.notifier.status(status_line(result))

    def _first_pass_done(self, result: PassResult, seconds: float) -> None:
        """The start-up line operators look for after an upgrade: how many running jobs the
        new controller took over (none restarted) and how many it had to start."""
        spawned = {s.job.id for s in result.plan.changes if isinstance(s, Spawn)}
        alive = [j for j in result.jobs if j.pid is not None]
        adopted = sum(1 for j in alive if j.id not in spawned)
        started = sum(1 for j in alive if j.id in spawned)
        log.info("first pass done in %.0f ms: adopted %d running jobs, started %d; %s",
                 seconds * 1000, adopted, started, status_line(result))
        self.notifier.ready(status_line(result))
        self._timers()  # before the freeze: the scheduler's modules live as long
        _freeze_start_up_heap()

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

    def _kick_at(self, at: float, job_id: str, kick: Callable[[], None] | None = None) -> None:
        from apscheduler.triggers.date import DateTrigger

        self._timers().add_job(
            kick or self.kick,
            DateTrigger(run_date=dt.datetime.fromtimestamp(at, UTC), timezone=UTC),
            id=job_id, replace_existing=True)

    def _timers(self) -> BackgroundScheduler:
        """The scheduler of the resync and the timed kicks (backoff due, retry), imported,
        made and started at its first use: after the first pass has started what it starts
        (or failed), since nothing is timed before it. APScheduler's import (~50 ms, with
        asyncio) is then not on the way to the first start at a cold start (docs/
        benchmarks.md, "cold start, third round"). Loop thread only."""
        if self._scheduler is None:
            from apscheduler.schedulers.background import BackgroundScheduler
            from apscheduler.triggers.interval import IntervalTrigger

            scheduler = BackgroundScheduler(timezone=UTC)
            scheduler.add_job(
                self.kick, IntervalTrigger(seconds=self.resync, jitter=self.resync * 0.2,
                                           timezone=UTC),
                id="resync", max_instances=1, coalesce=True)
            scheduler.start()
            self._scheduler = scheduler
        return self._scheduler

    def _watch(self, result: PassResult) -> None:
        """Point the exit watcher, the health monitor, the log capper and the spec watcher
        at what this pass left running. After a pass that changed a few jobs against the
        same specs (a keyed pass, mostly), only those jobs are looked at: the records it
        did not write are the very objects the last pass returned (the store's index), so
        `is` finds the changed ones, and rebuilding every target for every job cost 6 ms
        a pass at 2000 jobs, twice per respawn."""
        changed = [j for j in result.jobs if self._watched.get(j.id) is not j]
        if (result.desired is not self._watched_desired or len(changed) > WATCH_CHANGES_MOST
                or len(result.jobs) != len(self._watched)
                or any(j.id not in self._watched for j in changed)):
            self._watch_all(result)
        else:
            self._watch_changed(result, changed)
        due = result.next_due()
        if due is not None:
            self._kick_at(due, "due", self._due)

    def _watch_all(self, result: PassResult) -> None:
        running = [j for j in result.jobs if j.identity is not None]
        self._service_of_pid = {j.pid: j.service for j in running if j.pid is not None}
        self._service_of_job = {j.id: j.service for j in result.jobs}
        self.exits.sync(j.identity for j in running if j.identity is not None)
        self.health.sync(_probe_targets(result.desired, running))
        self.logcap.sync(_log_targets(result.desired, running))
        if result.loaded is not self._watched_loaded:
            self.watcher.also_watch(path for service in result.loaded.services.values()
                                    for action in service.actions for path in action.env_file)
        self._watched = {j.id: j for j in result.jobs}
        self._watched_desired, self._watched_loaded = result.desired, result.loaded

    def _watch_changed(self, result: PassResult, changed: list[JobRecord]) -> None:
        """`_watch_all` for the few jobs that changed (the same job ids, the same specs)."""
        added: list[tuple[Identity, str]] = []
        removed: list[Identity] = []
        targets_changed = False
        for job in changed:
            old = self._watched[job.id]
            if old.identity != job.identity:
                if old.identity is not None:
                    removed.append(old.identity)
                if job.identity is not None:
                    added.append((job.identity, job.service))
            # health targets are the running jobs with a health check; log targets the
            # running jobs: another process of a running job without a check changes neither
            action = result.desired.action(job.key)
            targets_changed |= (action is not None and action.health is not None) \
                or (old.identity is None) != (job.identity is None) or old.phase != job.phase
            self._watched[job.id] = job
        for identity in removed:  # first: a pid may have gone from one job to another
            self._service_of_pid.pop(identity.pid, None)
        for identity, service in added:
            self._service_of_pid[identity.pid] = service
        self.exits.update([identity for identity, _ in added], removed)
        if targets_changed:
            running = [j for j in result.jobs if j.identity is not None]
            self.health.sync(_probe_targets(result.desired, running))
            self.logcap.sync(_log_targets(result.desired, running))

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
            log.log(step_level(step), "%s", step.describe())
        for event in result.events:
            if event.reason.startswith("spawn-error"):  # the step said "spawn"; this is why not
                log.error("%s.%s: %s", event.service, event.action, event.reason)

    # --- triggers ---------------------------------------------------------------------------

    def _record_resources(self, passes: Passes) -> None:
        """Store the sampling rounds that came in, log the anomalies that began or ended,
        and hand the jobs over their memory limit to the next pass (kicked at once)."""
        while True:
            try:
                taken = self.resources.rounds.popleft()
            except IndexError:
                return
            try:
                events = passes.record_resources(taken.samples, taken.anomalies,
                                                 window=resources.WINDOW_SECONDS)
            except Exception as err:  # a full disk must not stop the healing
                log.error("cannot store resource samples: %s", printable(str(err)))
                events = []
            for event in events:
                level = logging.WARNING if event.kind == "anomaly" else logging.INFO
                log.log(level, "%s.%s: %s %s", event.service, event.action, event.kind,
                        printable(event.reason))
            if self.metrics is not None:
                self.metrics.anomalies(taken.anomalies)
            if taken.over_limit:
                self.over_limit = taken.over_limit
                self.kick(Keys())  # the pass keys itself by the jobs over their limit

    def _start_triggers(self) -> None:
        if self.serve is not None:
            self.serve.start()
        self.watcher.start()  # before the first pass reads the specs; the timers after it
        self.exits.start()
        self.health.start()
        self.logcap.start()
        self.resources.start()

    def _stop_triggers(self) -> None:
        self.watcher.stop()
        self.exits.stop()
        self.health.stop()
        self.logcap.stop()
        self.resources.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self.serve is not None:
            self.serve.stop()
        self.notifier.close()


def _keys_of_steps(steps: Sequence[Step]) -> Keys | None:
    """The services a pass changed, for the pass that follows it; a full pass if none of its
    steps names a job (a foreign process's stop, a cleanup: they come with a job's step)."""
    services = frozenset(job.service for s in steps if (job := getattr(s, "job", None)))
    return Keys(services) if services else None


def step_level(step: Step) -> int:
    """A run that ended badly (a crash, a failed health check, a blocked start) is a
    warning; everything else a pass does is routine."""
    if isinstance(step, UpdateJob) and step.job.failure_class is not None and step.kind in (
            "exit", "backoff", "blocked", "stopping"):
        return logging.WARNING
    return logging.INFO


def status_line(result: PassResult | None) -> str:
    """systemd's `STATUS=` (what `systemctl status` shows): the jobs by how they are doing,
    and the revision."""
    if result is None:
        return "no pass has succeeded yet"
    phases = Counter(j.phase for j in result.jobs)  # one walk: this runs after every pass
    running = phases["running"]
    failing = phases["backoff"] + phases["blocked"]
    done = phases["succeeded"] + phases["stopped"]
    waiting = len(result.jobs) - phases["removed"] - running - failing - done
    revision = result.source.revision or "no revision"
    return (f"{running} running, {waiting} waiting, {failing} failing, {done} done; "
            f"revision {revision}")


def _freeze_start_up_heap() -> None:
    """What start-up and the first pass built (modules, pydantic schemas, parsed specs, the
    job records) lives as long as the daemon. Moved out of the collector's sight, it no
    longer makes every full collection walk it: those walks paused passes and made the
    worst respawn times (docs/benchmarks.md, Findings)."""
    gc.collect()
    gc.freeze()


def _probe_targets(desired: Desired, running: list[JobRecord]) -> list[ProbeTarget]:
    targets: list[ProbeTarget] = []
    for job in running:
        action = desired.action(job.key)
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
    return [LogTarget(action.log_path, action.spec.logs.max_size, action.spec.logs.keep)
            for job in running if (action := desired.action(job.key)) is not None]
