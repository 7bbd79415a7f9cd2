"""One reconcile pass, and the `--once` convergence loop built from passes.

A pass is: load specs (last-good per file) → observe the host → plan (pure) → execute →
record everything in one SQLite transaction. It holds the state dir's lock for its duration,
so a daemon and a `reconcile --once` never run passes at the same time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Container, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler import health, logs
from reconciler.desired import Desired, DesiredAction, ResolvedCache, build_desired
from reconciler.execute import Executor, Outcome
from reconciler.host.gitrev import NO_REVISION, UNKNOWN, Revision, RevisionReader
from reconciler.host.labels import LabelsReader
from reconciler.host.limits import raise_fd_limit
from reconciler.host.markers import HostMarkers
from reconciler.host.members import job_processes
from reconciler.host.observe import observe
from reconciler.host.proccache import ProcCache
from reconciler.host.spawn import Children
from reconciler.identity import Identity
from reconciler.observed import Exit, Observed, ProcInfo
from reconciler.plan import (
    KILL_GRACE_SECONDS,
    STOP_POLL_SECONDS,
    Plan,
    Spawn,
    Step,
    plan,
    plan_down,
    plan_restart,
)
from reconciler.settings import Settings
from reconciler.spec.load import LoadResult, forget_parsed_specs, last_good_of, load_specs
from reconciler.state import statedir
from reconciler.state.enrollment import Enrollments, sweep_stale_temps
from reconciler.state.jobindex import JobIndex
from reconciler.state.lock import StateLock
from reconciler.state.records import (
    Anomaly,
    Enrollment,
    Event,
    JobRecord,
    Sample,
    SpecRecord,
)
from reconciler.state.store import Store
from reconciler.text import printable
from reconciler.timing import HOUSEKEEPING_SECONDS

log = logging.getLogger(__name__)
SETTLED_PHASES = ("succeeded", "stopped")
# How long what a `--once` pass started runs before the next pass looks (see `_nap`)
FIRST_LOOK_SECONDS = 0.05
EVENTS_KEPT = 10_000  # the newest events kept: a crash loop must not grow the database forever
HealthResults = Mapping[str, "health.HealthState"]
OverLimit = Mapping[str, tuple[Identity, str]]  # job id -> (process over a limit, why)


@dataclass(frozen=True, slots=True)
class Keys:
    """What a keyed pass reconciles (docs/architecture.md, "Keyed passes"): these services,
    and with `specs` every service whose desired actions changed since the last pass. The
    pass adds what they wait for and what waits for them (`after:`), and turns itself into
    a full pass wherever a subset is not provably enough."""

    services: frozenset[str] = frozenset()
    specs: bool = False  # the specs dir changed: load it, key what changed

    def __or__(self, other: Keys) -> Keys:
        return Keys(self.services | other.services, self.specs or other.specs)


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did and saw: the CLI reports it, `--once` decides from it whether to
    pass again (`converged`)."""

    loaded: LoadResult
    desired: Desired
    plan: Plan
    jobs: tuple[JobRecord, ...]  # every non-removed job after the pass
    # The specs dir's revision this pass saw, and the latest at which every file loaded
    # cleanly (they differ while a file runs on its last good version)
    source: Revision = NO_REVISION
    applied_revision: str | None = None
    suspended: frozenset[str] = frozenset()  # services left alone (`reconcile suspend`)
    events: tuple[Event, ...] = ()  # what the steps did (e.g. why a spawn failed)

    @property
    def converged(self) -> bool:
        """Nothing left to do: no host changes planned, and every desired action is ready
        (process), succeeded (one-shot) or deliberately stopped. A suspended service is
        out of the controller's hands: whatever state it is in, it is not waited for."""
        if self.plan.changes or self.plan.prune_held or self.stopping:
            return False
        if self.loaded.unsettled_until is not None:  # a spec file is still being written
            return False
        by_key = {j.key: j for j in self.jobs}
        for action in self.desired.actions:
            if action.service in self.suspended:
                continue
            job = by_key.get(action.key)
            if job is None:
                return False
            if job.phase in SETTLED_PHASES:
                continue
            if not (job.phase == "running" and job.ready):
                return False
        return True

    def next_due(self) -> float | None:
        """The earliest time a pass has work: a waiting job (backoff, blocked) becomes due,
        or a stop in progress needs a look (see `Plan.requeue_at`)."""
        times = [j.next_start_at for j in self.jobs
                 if j.next_start_at is not None and j.service not in self.suspended]
        if self.plan.requeue_at is not None:
            times.append(self.plan.requeue_at)
        if self.loaded.unsettled_until is not None:  # a spec file still being written
            times.append(self.loaded.unsettled_until)
        return min(times) if times else None

    @property
    def stopping(self) -> bool:
        return any(j.phase == "stopping" and j.service not in self.suspended
                   for j in self.jobs)


@dataclass(frozen=True, slots=True)
class _Draft:
    """The planning half of a pass: what `diff` shows and what a pass then executes."""

    loaded: LoadResult
    spec_records: list[SpecRecord]
    desired: Desired
    records: list[JobRecord]
    plan: Plan
    suspended: frozenset[str]
    scope: frozenset[str] | None = None  # the services a keyed pass planned; None: all
    loaded_now: bool = True  # the specs were read by this pass (not reused from the last)


class Reconciler:
    """Owns what outlives a single pass: the writer connection and the handles on our
    children (their exit codes can only be collected by us, exactly once)."""

    def __init__(self, settings: Settings, *, allow_empty: bool = False,
                 clock: Callable[[], float] = time.time,
                 housekeeping_interval: float = HOUSEKEEPING_SECONDS,
                 events_kept: int = EVENTS_KEPT, rebind: bool = False,
                 caps_logs: bool = True) -> None:
        self.settings = settings
        # Whether passes hold logs to `logs.max_size`: not under the daemon, whose LogCapper
        # checks every log continuously; a second walk over every log from inside a pass
        # (~40 ms at 2000 jobs, every few seconds while jobs restart) would only hold up the
        # next respawn.
        self.caps_logs = caps_logs
        self.allow_empty = allow_empty
        self.housekeeping_interval = housekeeping_interval
        self.events_kept = events_kept
        self._housekept_at = -math.inf  # time.monotonic() of the last housekeeping
        self._pruned_samples_at = -math.inf  # ... and of the last pruning of old samples
        self.clock = clock
        self.children = Children()
        self.markers = HostMarkers()  # what the crash sweeps found the host's processes to be
        raise_fd_limit()
        prepare_state_dir(settings, rebind=rebind)
        self.store = Store.open(settings.db_path)
        self.executor = Executor(settings.run_dir, self.children, clock, markers=self.markers)
        self.lock = StateLock(settings.lock_path)
        self.enrollments = Enrollments(settings.run_dir)
        self.resolved_cache: ResolvedCache = {}
        # what the last pass loaded and resolved (with the labels it resolved them under and
        # the revision it saw): a keyed pass that is not about the specs plans against it
        # without reading them
        self._last: tuple[LoadResult, Desired, tuple[tuple[str, str], ...], str | None] \
            | None = None
        self._last_scope: frozenset[str] | None = None  # of the last pass; None: it was full
        self._requeue_at: float | None = None  # the plan's requeue, kept across keyed passes
        self._held_exits: dict[int, Exit] = {}  # reaped in a keyed pass, for a later pass
        self.procs = ProcCache()
        self.revisions = RevisionReader()
        self.labels = (LabelsReader(settings.labels_file, dict(settings.labels))
                       if settings.labels_file is not None else None)
        sweep_stale_temps(settings.run_dir)

    def close(self) -> None:
        self.procs.close()
        self.store.close()

    def __enter__(self) -> Reconciler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- passes ---------------------------------------------------------------------------

    def reconcile(self, health: HealthResults | None = None,
                  over_limit: OverLimit | None = None, keys: Keys | None = None) -> PassResult:
        """One pass: observe, plan, execute, record. A full pass without `keys`; with them,
        a keyed pass over their services only (see `Keys`), or a full one where a subset is
        not safe.

        `health` carries probe results: from a running `HealthMonitor` (the daemon), or from
        `probe_readiness` between passes (`converge`). A pass never probes itself: it holds
        the state lock, and a slow endpoint must not hold that (or the pass) with it.
        """
        with self._locked():
            started = time.monotonic()
            # before loading: if the checkout changes meanwhile, the watcher's next pass
            # sees both the new files and the new revision
            source = self.revisions.read(self.settings.specs_dir, self.settings.revision)
            self._refresh_labels()
            try:
                draft = self._draft(self.children, health, over_limit=over_limit, keys=keys,
                                    revision=source.revision)
                outcome = self._execute(draft.plan)
                outcome = stamp_new_jobs(outcome, draft.records, source.revision)
                applied = self._applied_revision(source, draft.loaded)
                with self.store.atomic():  # the pass's records and its facts: one commit
                    self._save(outcome, draft.spec_records,
                               draft.loaded if draft.loaded_now else None, source.revision)
                    self._record_pass(started, draft.loaded.ok, source, applied,
                                      (dict(self.settings.labels), draft.desired.unplaced))
            except Exception:
                self._record_failed_pass(started, source)
                raise
            jobs = tuple(self.store.jobs())  # as saved: the index holds this pass's writes
            self._housekeeping_when_due(draft.desired, jobs)
            self._last = (draft.loaded, draft.desired, self.settings.labels, source.revision)
            self._last_scope = draft.scope
            return PassResult(draft.loaded, draft.desired, draft.plan, jobs, source, applied,
                              draft.suspended, tuple(outcome.events))

    def forget_caches(self) -> None:
        """A reload (SIGHUP): the next pass reads everything afresh, as a new controller
        would (the specs are re-read by every pass anyway; what they resolve to, the
        process snapshots, the revision, the labels and the enrollments are cached)."""
        self.resolved_cache.clear()
        self._last = None
        self.procs.close()
        self.procs = ProcCache()
        self.markers.forget()
        self.revisions = RevisionReader()
        if self.labels is not None:
            self.labels.forget()
        self.enrollments.invalidate()
        forget_parsed_specs()

    def record_resources(self, samples: Sequence[Sample],
                         anomalies: Mapping[str, Mapping[str, str]], *,
                         window: float) -> list[Event]:
        """Store a sampling round: the samples (and drop those older than `window`), the
        anomalies in force, and an event for each anomaly that began or ended. One
        transaction; no state lock (samples are only appended, and no pass reads them)."""
        before = {(a.job_id, a.rule): a for a in self.store.anomalies()}
        by_job = {s.job_id: s for s in samples} if anomalies or before else {}
        now: dict[tuple[str, str], Anomaly] = {}
        for job_id, rules in anomalies.items():
            sample = by_job.get(job_id)
            for rule, why in rules.items():
                held = before.get((job_id, rule))
                if sample is not None:
                    now[(job_id, rule)] = Anomaly(job_id, sample.service, sample.action, rule,
                                                  held.since if held else sample.at, why)
                elif held is not None:  # not sampled this round, but still in force
                    now[(job_id, rule)] = held
        events = anomaly_events(before, now, by_job, self.clock())
        with self.store.atomic():
            self.store.append_samples(samples)
            if samples and time.monotonic() - self._pruned_samples_at >= HOUSEKEEPING_SECONDS * 12:
                # once a minute: a minute of extra rows is nothing, a DELETE per round is not
                self.store.prune_samples(before=samples[-1].at - window)
                self._pruned_samples_at = time.monotonic()
            if now.keys() != before.keys() or any(
                    before[k].detail != a.detail for k, a in now.items()):
                self.store.set_anomalies(now.values())
            self.store.append_events(with_revision(
                events, self.store.controller_facts().revision if events else None))
        return events

    def newest_sample_at(self) -> float | None:
        """The newest stored sample's time (the daemon's sample clock starts after it)."""
        return self.store.newest_sample_at()

    def _refresh_labels(self) -> None:
        """A changed labels file takes effect at this pass (and may un-place a service); a
        broken one keeps the last good labels, logged once per change."""
        if self.labels is None:
            return
        before = self.labels.error
        labels = tuple(sorted(self.labels.read().items()))
        if self.labels.error is not None and self.labels.error != before:
            log.error("labels: %s; the last good labels stay in force", self.labels.error)
        if labels != self.settings.labels:
            log.info("labels changed: %s", printable(", ".join(f"{k}={v}" for k, v in labels)))
            self.settings = replace(self.settings, labels=labels)

    def _applied_revision(self, source: Revision, loaded: LoadResult) -> str | None:
        """This revision when every file loaded cleanly (and none is still being written),
        else the last one that did: the files running on their last good version came
        from it (or from before it). An `unknown` revision (git failed this time) is no
        revision: the last one known to be applied stays."""
        if loaded.ok and loaded.unsettled_until is None and source.revision != UNKNOWN:
            return source.revision
        return self.store.controller_facts().applied_revision

    def _record_pass(self, started: float, ok: bool, source: Revision, applied: str | None,
                     placement: tuple[Mapping[str, str], Mapping[str, str]] | None = None,
                     ) -> None:
        self.store.save_pass_facts(
            at=self.clock(), ok=ok, duration_ms=round((time.monotonic() - started) * 1000),
            revision=source.revision, applied_revision=applied, dirty=source.dirty,
            revision_error=source.error, placement=placement)

    def _record_failed_pass(self, started: float, source: Revision) -> None:
        """Best effort: `info` should say the last pass failed, but the error that failed
        it (a locked or damaged database, say) may well fail this write too."""
        try:
            applied = self.store.controller_facts().applied_revision
            self._record_pass(started, False, source, applied)
        except Exception as err:  # the pass's own error is what gets raised and logged
            log.debug("could not record the failed pass: %s", err)

    def down(self, targets: frozenset[tuple[str, str | None]] | None = None, *,
             wait: float | None = None) -> Plan:
        """Stop jobs ((service, action) pairs, action None for a whole service; all when
        None); they stay stopped like after `systemctl stop`. Passes of `plan_down` drive
        the stops (SIGKILL after each job's `stop.timeout`) until every targeted job is
        stopped, or `wait` seconds ran out. Returns every step taken."""
        return self._drive(lambda observed, records, now:
                           plan_down(observed, records, now, targets,
                                     suspended=self.store.suspended()), wait)

    def restart(self, targets: frozenset[tuple[str, str | None]], *,
                wait: float | None = None) -> Plan:
        """Stop the targeted jobs (driving their stops like `down`) and mark them due; the
        next pass starts them."""
        return self._drive(lambda observed, records, now:
                           plan_restart(observed, records, now, targets,
                                        suspended=self.store.suspended()), wait)

    def set_suspended(self, service: str, suspended: bool) -> bool:
        """`reconcile suspend` / `resume`: under the state lock (no pass sees half of it),
        recorded with its event in one transaction. False when nothing changed."""
        with self._locked(), self.store.atomic():
            changed = self.store.set_suspended(service, suspended, self.clock())
            if changed:
                kind = "suspend" if suspended else "resume"
                self.store.append_events([Event(
                    at=self.clock(), kind=kind, service=service,
                    reason=f"{kind}ed by operator (reconcile {kind})")])
            return changed

    def _drive(self, planner: Callable[[Observed, list[JobRecord], float], Plan],
               wait: float | None) -> Plan:
        """An operator's command as locked passes, repeated while its stops are in progress
        (the lock is released between them, so a running daemon keeps healing)."""
        deadline = time.monotonic() + (wait if wait is not None else self._longest_stop())
        steps: list[Step] = []
        notes: list[str] = []
        while True:
            result = self._apply(planner)
            steps += result.steps
            notes += [n for n in result.notes if n not in notes]
            remaining = deadline - time.monotonic()
            if result.requeue_at is None or remaining <= 0:
                return Plan(tuple(steps), tuple(notes))
            # the processes being stopped are rarely our children (a daemon or an earlier run
            # started them), so no exit wakes us: look again every STOP_POLL_SECONDS
            due = max(result.requeue_at - self.clock(), 0.0)
            self.children.wait(min(due, remaining, STOP_POLL_SECONDS))

    def _longest_stop(self) -> float:
        """Long enough for every job to take its whole `stop.timeout`, then SIGKILL."""
        timeouts = [j.spec.stop_timeout for j in self.store.jobs()]
        return max(timeouts, default=0.0) + 2 * KILL_GRACE_SECONDS

    def _draft(self, children: Children | None, health: HealthResults | None, *,
               over_limit: OverLimit | None = None,
               settle: float | None = None, keys: Keys | None = None,
               revision: str | None = None) -> _Draft:
        if keys is not None and self.lock.changed_hands:
            # another writer held the lock since our last pass (`--once`, down, restart,
            # resume): it changed records that no trigger names, so everything is planned
            keys = None
        reuse = self._reusable(revision) if keys is not None and not keys.specs else None
        if keys is not None and reuse is None:
            # read afresh (new labels or revision, a file that was settling): whatever that
            # changed since the last pass is keyed too, or it would pass for the "previous"
            # of the next spec pass and only the resync would ever plan it
            keys = keys | Keys(specs=True)
        if reuse is not None:
            loaded, spec_records = reuse[0], list[SpecRecord]()
        else:
            loaded, spec_records = self._load(settle)
        suspended = self.store.suspended()
        index, enrollments, now = self.store.job_index(), self.enrollments.current(), self.clock()
        desired = reuse[1] if reuse is not None else build_desired(
            loaded, self.settings, self.resolved_cache)
        scope = None
        if keys is not None:
            previous = self._last[1] if self._last is not None else None
            scope = keyed_scope(keys, desired, previous, index, enrollments, suspended,
                                loaded)
        narrowed = scope if scope is not None and narrowable(desired, scope) else None
        if narrowed is not None:
            # the records plan reads for these services (see `narrowable`): a respawn at
            # two thousand jobs costs what it costs at ten
            jobs = index.of(narrowed)
            enrollments = {j.id: e for j in jobs if (e := enrollments.get(j.id)) is not None}
        else:
            jobs = index.in_order()
        desired, records, planned = plan_for(
            self.settings, loaded, jobs, enrollments, now,
            children=children, procs=self.procs if children is not None else None,
            health=health, over_limit=over_limit, allow_empty=self.allow_empty,
            cache=self.resolved_cache, suspended=suspended, desired=desired, scope=scope,
            held=self._held_exits, markers=self.markers,
            owners=index if narrowed is not None else None)
        planned = self._carry_requeue(planned, scope, now)
        return _Draft(loaded, spec_records, desired, records, planned, suspended, scope,
                      reuse is None)

    def _reusable(self, revision: str | None) -> tuple[LoadResult, Desired] | None:
        """The last pass's specs and desired state, if a keyed pass may plan against them:
        no file was waiting to settle, and neither the labels (placement) nor the specs dir's
        revision changed since (a pass records the revision it sees as applied: that is only
        true of specs it read)."""
        if self._last is None:
            return None
        loaded, desired, labels, seen = self._last
        if (loaded.unsettled_until is not None or labels != self.settings.labels
                or revision != seen):
            return None
        return loaded, desired

    def _carry_requeue(self, planned: Plan, scope: frozenset[str] | None, now: float) -> Plan:
        """A keyed pass plans some services: a requeue another one asked for (a stop in
        progress) must survive it until it is due."""
        carried = self._requeue_at if scope is not None else None
        if carried is not None and carried > now:
            ours = planned.requeue_at
            planned = replace(planned, requeue_at=carried if ours is None else min(ours, carried))
        self._requeue_at = planned.requeue_at
        return planned

    def _apply(self, planner: Callable[[Observed, list[JobRecord], float], Plan]) -> Plan:
        """Run an operator's command (`down`, `restart`) as one locked, recorded pass."""
        with self._locked():
            records, enrollments = self._records()
            observed = observe_for(Desired(actions=()), records, enrollments, self.children,
                                   self.procs, held=self._held_exits, markers=self.markers)
            planned = planner(observed, records, self.clock())
            # an operator's command loads no specs: its events carry the last pass's revision
            self._save(self._execute(planned), [], None, self.store.controller_facts().revision)
            return planned

    def _housekeeping_when_due(self, desired: Desired, jobs: Iterable[JobRecord]) -> None:
        """Bounds on disk use need no per-pass precision, and checking a thousand logs
        costs more than the rest of a no-op pass."""
        if time.monotonic() - self._housekept_at >= self.housekeeping_interval:
            if self.caps_logs:
                cap_logs(desired, jobs)
            self.store.prune_events(keep=self.events_kept)
            self._housekept_at = time.monotonic()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the state dir's lock. If another process held it since our last pass, it may
        have written enrollments: read them all again (see `Enrollments`)."""
        with self.lock:
            if self.lock.changed_hands:
                self.enrollments.invalidate()
            yield

    def _execute(self, planned: Plan) -> Outcome:
        outcome = self.executor.run(planned.steps)
        # written or removed by the steps; those written whole need no reading back
        self.enrollments.refresh(outcome.enrollments, outcome.enrolled)
        return outcome

    def converge(self, wait: float) -> PassResult:
        """Pass after pass until converged or `wait` seconds ran out (`reconcile --once`).

        Between passes, outside the lock, the jobs still waiting for their health check are
        probed all at once, each probe bounded by its timeout and by the deadline; the next
        pass uses the results."""
        deadline = time.monotonic() + wait
        readiness: HealthResults = {}
        while True:
            result = self.reconcile(health=readiness)
            remaining = deadline - time.monotonic()
            if result.converged or remaining <= 0 or result.plan.prune_held:
                return result
            self.children.wait(self._nap(result, remaining))
            readiness = probe_readiness(result.desired, result.jobs, deadline)

    def _nap(self, result: PassResult, remaining: float) -> float:
        """How long to wait for a child to exit before the next pass. After a pass that
        changed the host, FIRST_LOOK_SECONDS: what it stopped gets that long to go, and what
        it started that long to fail before the next pass may call it ready (a process
        without a health check is ready once a later pass sees it alive). When the pass
        only started processes, counted from the youngest start: a pass that started a
        thousand, and saved them, is past it already (docs/benchmarks.md, "--once, sixth
        round")."""
        changes = result.plan.changes
        nap = FIRST_LOOK_SECONDS if changes else 0.25
        if changes and all(isinstance(step, Spawn) for step in changes):
            youngest = max((j.started_at for j in result.jobs if j.started_at), default=None)
            if youngest is not None:
                nap = min(nap, max(youngest + FIRST_LOOK_SECONDS - self.clock(), 0.0))
        due = result.next_due()
        if due is not None:
            nap = min(nap, max(due - self.clock(), 0.0)) if due > self.clock() else 0.0
        return min(nap, remaining)

    # --- load, observe, record ------------------------------------------------------------

    def _load(self, settle: float | None = None) -> tuple[LoadResult, list[SpecRecord]]:
        previous = self.store.spec_records()
        last_good = last_good_of(previous)
        settle = self.settings.settle if settle is None else settle
        loaded = load_specs(self.settings.specs_dir, last_good, settle=settle,
                            state_dir=self.settings.state_dir)
        return loaded, spec_record_updates(loaded, previous, self.clock())

    def _records(self) -> tuple[list[JobRecord], dict[str, Enrollment]]:
        records = self.store.jobs()
        enrollments = self.enrollments.current()
        return with_unrecorded_enrollments(records, enrollments, self.clock()), enrollments

    def _save(self, outcome: Outcome, spec_records: list[SpecRecord],
              loaded: LoadResult | None, revision: str | None) -> None:
        events = [*outcome.events, *spec_events(spec_records, self.clock())]
        with self.store.atomic():
            self.store.upsert_jobs(outcome.jobs.values())
            self.store.append_events(with_revision(events, revision))
            if loaded is not None:
                self.store.save_spec_records(spec_records)
                gone = set(self.store.spec_records()) - set(loaded.files)
                if loaded.dir_error is None:
                    self.store.delete_spec_records(gone)


def prepare_state_dir(settings: Settings, *, rebind: bool = False) -> None:
    """Everything a writer checks before it touches the state dir (reconciler/state/
    statedir.py says why): create what is missing 0700 and chmod nothing that existed; refuse
    a state dir that is not private, a database that was emptied beside enrollments, and
    (unless `rebind`) a state dir bound to another specs dir."""
    statedir.prepare(settings)
    statedir.check_not_emptied(settings)
    if not rebind:
        statedir.check_binding(settings)


def plan_for(settings: Settings, loaded: LoadResult, jobs: list[JobRecord],
             enrollments: dict[str, Enrollment], now: float, *,
             children: Children | None = None, procs: ProcCache | None = None,
             health: HealthResults | None = None, over_limit: OverLimit | None = None,
             allow_empty: bool = False,
             cache: ResolvedCache | None = None,
             suspended: frozenset[str] = frozenset(), desired: Desired | None = None,
             scope: frozenset[str] | None = None,
             held: dict[int, Exit] | None = None,
             markers: HostMarkers | None = None,
             owners: JobIndex | None = None) -> tuple[Desired, list[JobRecord], Plan]:
    """Resolve, observe, plan: the one sequence a pass and `diff` (`preview.py`, on a
    read-only store) share, so `diff` shows exactly what a pass would do. Returns the desired
    state, the job records planned against (with any rebuilt from enrollments) and the plan.
    `desired`: already resolved from `loaded`; `scope`: the services of a keyed pass (see
    `keyed_scope`), None for all. `owners`: given when `jobs` are narrowed to the scope
    (see `narrowable`): the jobs owning a process a pidfile names join the records, since
    plan must not take another job's process for a stale or foreign instance."""
    if desired is None:
        desired = build_desired(loaded, settings, cache)
    records = with_unrecorded_enrollments(jobs, enrollments, now)
    observed = observe_for(desired, records, enrollments, children, procs, scope=scope,
                           held=held, markers=markers)
    observed = with_health(observed, health)
    if owners is not None:
        known = {r.id for r in records}
        named = {s.proc.pid for s in observed.pidfiles.values() if s.proc is not None}
        records += [j for j in owners.with_pids(named) if j.id not in known]
    if over_limit:
        observed = replace(observed, over_limit=dict(over_limit))
    planned = plan(desired, observed, records, now, enrollments=enrollments,
                   allow_empty=allow_empty, hold_prune=loaded.unsettled_until is not None,
                   suspended=suspended, only=scope)
    return desired, records, planned


def keyed_scope(keys: Keys, desired: Desired, previous: Desired | None, jobs: JobIndex,
                enrollments: Mapping[str, Enrollment], suspended: frozenset[str],
                loaded: LoadResult) -> frozenset[str] | None:
    """The services a keyed pass plans, or None where only a full pass is safe.

    The keyed services (with `keys.specs`, also every service whose desired actions are new,
    changed or gone since `previous`), closed over `after:` both ways: what waits for them
    is planned after them, and what they wait for is planned before them, so each reads its
    dependencies' state of this very pass, as the full plan would. Full instead: a spec file
    still settling, an enrollment without its job (a crash between spawn and record), or a
    job whose action is no longer desired outside the scope and not yet being retired (a
    rename, a removal this pass has not been told about). Costs what the keys name, plus
    two set differences over ids and action keys, which run in C."""
    services = set(keys.services)
    if keys.specs:
        if previous is None:
            return None
        services |= changed_services(previous, desired)
    if loaded.unsettled_until is not None:
        return None
    if not enrollments.keys() <= jobs.ids():
        return None
    for key in jobs.keys_outside(desired.positions):
        for job in jobs.with_key(key):
            if job.service in services or job.service in suspended:
                continue
            if job.stop_then != "removed":
                return None
    return after_closure(desired, frozenset(services))


def narrowable(desired: Desired, scope: frozenset[str]) -> bool:
    """A keyed pass may plan from its services' records alone (with the jobs being
    stopped, and the owners of what their pidfiles name: `plan_for`'s `owners`) when none
    of its actions declares a socket or a port: a holder of one may be any job's process,
    and plan asks which job owns it (`_owning_job`)."""
    return not any(_claims_resources(a) for a in desired.of_services(scope))


def _claims_resources(action: DesiredAction) -> bool:
    """It declares a socket or a port, whose holder may be any job's process."""
    return bool(action.sockets or action.spec.tcp_ports)


def changed_services(before: Desired, after: Desired) -> set[str]:
    """Services whose resolved actions differ between two desired states (added, removed,
    changed in anything plan reads, or placed/unplaced)."""
    def by_service(desired: Desired) -> dict[str, list[DesiredAction]]:
        grouped: dict[str, list[DesiredAction]] = {}
        for action in desired.actions:
            grouped.setdefault(action.service, []).append(action)
        return grouped

    old, new = by_service(before), by_service(after)
    changed = {s for s in old.keys() | new.keys() if old.get(s) != new.get(s)}
    return changed | (before.unplaced.keys() ^ after.unplaced.keys())


def after_closure(desired: Desired, services: frozenset[str]) -> frozenset[str]:
    """`services`, every service that waits for one of them (`after:`), transitively, and
    then everything those wait for, transitively."""
    waits_on = desired.waits_on  # service -> services it waits for
    if not waits_on:
        return services
    waited_by: dict[str, set[str]] = {}
    for service, deps in waits_on.items():
        for dep in deps:
            waited_by.setdefault(dep, set()).add(service)
    down = _reach(services, waited_by)
    return _reach(down, waits_on)


def _reach(start: Iterable[str], edges: Mapping[str, Collection[str]]) -> frozenset[str]:
    seen = set(start)
    todo = list(seen)
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return frozenset(seen)


def observe_for(desired: Desired, records: list[JobRecord], enrollments: dict[str, Enrollment],
                children: Children | None, cache: ProcCache | None = None, *,
                scope: frozenset[str] | None = None,
                held: dict[int, Exit] | None = None,
                markers: HostMarkers | None = None) -> Observed:
    """Observe what this pass needs, cheapest first.

    Liveness of our jobs comes first; pidfiles, declared sockets and ports are inspected
    only for actions that are not running, because only a start needs to know what they
    name and who holds them.

    With a `scope` (a keyed pass) only the jobs of those services (and stops in progress)
    are looked at, unless one of their actions is about to start and declares a socket or
    port: then its holder may be any job's process, and everything is observed as for a full
    pass. A pidfile's process is judged against the records and the stops in progress only.
    `held` keeps the exit codes of children reaped here whose jobs this pass does not plan,
    for the pass that does (an exit code can be collected only once). `markers`: what the
    crash sweeps of earlier passes learnt about the host's processes (host/markers.py).
    """
    exits = held if held is not None else {}
    if scope is not None:
        keyed = _observe_keyed(desired, records, enrollments, children, cache, scope, exits,
                               markers)
        if keyed is not None:
            return keyed
    first = observe(pids=_pids_of(records, enrollments), children=children, cache=cache)
    first = replace(first, exits={**exits, **first.exits})
    exits.clear()  # every job is planned: every exit is seen
    first = replace(first, members=members_to_sweep(records, first, markers=markers))
    return _with_resources(first, desired.actions, records, enrollments)


def _pids_of(records: Iterable[JobRecord], enrollments: Mapping[str, Enrollment]) -> set[int]:
    return {r.pid for r in records if r.pid} | {e.identity.pid for e in enrollments.values()}


def _observe_keyed(desired: Desired, records: list[JobRecord],
                   enrollments: dict[str, Enrollment], children: Children | None,
                   cache: ProcCache | None, scope: frozenset[str],
                   held: dict[int, Exit], markers: HostMarkers | None) -> Observed | None:
    """The keyed half of `observe_for`: None when the full observation is needed."""
    mine = [r for r in records if r.service in scope]
    # stops in progress elsewhere: their processes are not conflicts (plan's `being_stopped`)
    looked = [*mine, *(r for r in records if r.service not in scope and r.phase == "stopping")]
    enrolled = {k: e for k, e in enrollments.items() if e.service in scope}
    first = observe(pids=_pids_of(looked, enrolled), children=children, cache=cache,
                    forget_others=False)
    ours = {r.pid for r in looked if r.pid}
    exits = {**held, **first.exits}
    held.clear()
    held.update({pid: e for pid, e in exits.items() if pid not in ours})
    first = replace(first, exits={pid: e for pid, e in exits.items() if pid in ours})
    alive = {r.key for r in mine if first.alive(r.identity)}
    starting = [a for a in desired.of_services(scope) if a.key not in alive]
    if any(_claims_resources(a) for a in starting):
        held.update(first.exits)  # observed again, in full
        return None
    # other jobs' sessions hold none of these jobs' processes (a session cannot be joined):
    # no process in one of those known alive is a candidate by its job id
    others = cache.sessions() if cache is not None else frozenset[int]()
    first = replace(first, members=members_to_sweep(looked, first, others, markers=markers))
    pidfiles = [a.pidfile for a in starting if a.pidfile]
    if not pidfiles:
        return first
    named = observe(pidfiles=pidfiles, known=first.procs)
    return replace(first, procs={**first.procs, **named.procs}, pidfiles=named.pidfiles)


def _with_resources(first: Observed, actions: Iterable[DesiredAction],
                    records: list[JobRecord], enrollments: Mapping[str, Enrollment]) -> Observed:
    """Pidfiles, sockets and ports of the actions that are about to start."""
    alive = {r.key for r in records if first.alive(r.identity)}
    starting = [a for a in actions if a.key not in alive]
    pidfiles = [a.pidfile for a in starting if a.pidfile]
    sockets = {s for a in starting for s in a.sockets}
    ports = {p for a in starting for p in a.spec.tcp_ports}
    if not pidfiles and not sockets and not ports:
        return first
    resources = observe(pidfiles=pidfiles, sockets=sockets, ports=ports,
                        candidates=_pids_of(records, enrollments), known=first.procs)
    return replace(first, procs={**first.procs, **resources.procs},
                   pidfiles=resources.pidfiles, sockets=resources.sockets,
                   ports=resources.ports)


def members_to_sweep(records: list[JobRecord], observed: Observed,
                     other_sessions: Container[int] = frozenset(), *,
                     markers: HostMarkers | None = None) -> dict[str, tuple[ProcInfo, ...]]:
    """What is left of jobs whose main process exited, and of jobs being stopped: plan
    follows a daemonized survivor, stops the leftovers of a crash, and finishes a stop only
    once nothing of the job runs. Processes carrying the job id outside its session are
    looked for only where they can matter (a stop, or an exit: a daemon forking into the
    background, or a crash that left a setsid() child), because that reads every process's
    environment (of the processes `markers` has not seen before, when given).
    `other_sessions`: sessions of running jobs not in `records` (a keyed pass)."""
    leaders: dict[str, Identity] = {}
    running_sessions: set[int] = set()
    for job in records:
        if job.identity is None or job.phase in ("removed", "stopped", "succeeded"):
            continue
        if job.phase != "stopping" and observed.alive(job.identity) is not None:
            running_sessions.add(job.identity.pid)
            continue
        leaders[job.id] = job.identity
    if not leaders:
        return {}
    # every exit (a daemon forking away exits 0, a crash may leave a setsid() child, a
    # one-shot a helper) and every stop: look for the job id outside the session too
    ended = {i.pid for i in leaders.values()}
    return job_processes(leaders, by_environ=leaders,
                         other_sessions=AnyOf((running_sessions, other_sessions), ended),
                         markers=markers)


@dataclass(frozen=True, slots=True)
class AnyOf(Container[int]):
    """Membership in any of `parts` but not in `without`, without merging them into a new
    set: the other jobs' sessions are as many as the jobs, and a keyed pass asks about a
    few processes."""

    parts: tuple[Container[int], ...]
    without: Container[int] = frozenset()

    def __contains__(self, item: object) -> bool:
        return item not in self.without and any(item in part for part in self.parts)


def with_health(observed: Observed, health: HealthResults | None) -> Observed:
    """Probe results for plan; without any, a job that is not ready yet stays `starting`."""
    if health is None:
        return observed
    return replace(observed, ready={job_id: st.ready for job_id, st in health.items()},
                   failing={job_id: st.consecutive_failures for job_id, st in health.items()})


def probe_readiness(desired: Desired, jobs: Iterable[JobRecord],
                    deadline: float) -> dict[str, health.HealthState]:
    """Probe, concurrently and without the state lock, the live jobs of the current
    generation whose health check has not passed yet. Each probe ends by its own timeout or
    `deadline` (time.monotonic()), whichever is first, so `--wait` is never overrun."""
    targets = [
        health.ProbeTarget(job_id=job.id, health=action.health, cwd=action.cwd,
                           env=dict(action.env), started_at=job.started_at or 0.0)
        for job in jobs
        if job.pid is not None and job.phase in ("starting", "running") and not job.ready
        and (action := desired.action(job.key)) is not None and action.health is not None
        and job.generation == action.generation
    ]
    reasons = health.probe_all(targets, deadline)
    return {job_id: health.HealthState(ready=reason is None, consecutive_failures=0,
                                       last_error=reason)
            for job_id, reason in reasons.items()}


def cap_logs(desired: Desired, jobs: Iterable[JobRecord]) -> None:
    """Keep running jobs' logs under `logs.max_size` (copytruncate: the process keeps its
    append-only descriptor). One lstat per running job."""
    running = {j.key for j in jobs if j.pid is not None}
    for action in desired.actions:
        if action.key in running:
            logs.cap_size(Path(action.log_path), action.spec.logs.max_size,
                          action.spec.logs.keep)


def with_unrecorded_enrollments(records: list[JobRecord], enrollments: dict[str, Enrollment],
                                now: float) -> list[JobRecord]:
    """Enrollments are written at spawn, before the pass commits its records. An enrollment
    with no job record means we crashed in between: rebuild the record so that plan adopts
    (or prunes) the process instead of starting a second instance."""
    known = {r.id for r in records}
    rebuilt = [
        JobRecord(id=e.job_id, service=e.service, action=e.action, generation=e.generation,
                  phase="starting", pid=e.identity.pid, boot_id=e.identity.boot_id,
                  starttime_ticks=e.identity.starttime_ticks, started_at=e.enrolled_at,
                  created_at=e.enrolled_at, updated_at=now,
                  reason="recovered from enrollment")
        for e in enrollments.values() if e.job_id not in known
    ]
    return [*records, *rebuilt]


def spec_record_updates(loaded: LoadResult, previous: dict[str, SpecRecord],
                        now: float) -> list[SpecRecord]:
    """What the specs table should say after this load: new good content, or the error next
    to the content that stays in force."""
    updates: list[SpecRecord] = []
    for name, outcome in loaded.files.items():
        if outcome.unsettled:  # not read this time: its record stays as it is
            continue
        old = previous.get(name)
        if not outcome.errors and outcome.content is not None:
            record = SpecRecord(name, outcome.content, outcome.hash, None, now,
                                outcome.env_files)
        else:
            error = "\n".join(str(e) for e in outcome.errors)
            record = SpecRecord(name, old.content if old else None, old.hash if old else None,
                                error, now, old.env_files if old else ())
        if old is None or (old.content, old.hash, old.error, old.env_files) != (
                record.content, record.hash, record.error, record.env_files):
            updates.append(record)
    return updates


def stamp_new_jobs(outcome: Outcome, records: list[JobRecord],
                   revision: str | None) -> Outcome:
    """Jobs created in this pass (a new generation is a new job) record the revision that
    started them; every other job keeps the one it has (None if it predates revisions)."""
    if revision is None:
        return outcome
    known = {r.id for r in records}
    stamped = {job_id: replace(job, revision=revision)
               if job_id not in known and job.revision is None else job
               for job_id, job in outcome.jobs.items()}
    return replace(outcome, jobs=stamped)


def anomaly_events(before: Mapping[tuple[str, str], Anomaly],
                   now: Mapping[tuple[str, str], Anomaly], samples: Mapping[str, Sample],
                   at: float) -> list[Event]:
    """`anomaly` when a rule starts holding for a job, `anomaly-recovered` when it stops
    (or the job stops being sampled: it no longer runs)."""
    events = [Event(at=at, kind="anomaly", reason=f"{a.rule}: {a.detail}", job_id=a.job_id,
                    service=a.service, action=a.action, detail={"rule": a.rule})
              for key, a in now.items() if key not in before]
    for key, a in before.items():
        if key in now:
            continue
        why = "recovered" if a.job_id in samples else "no longer running"
        events.append(Event(at=at, kind="anomaly-recovered", reason=f"{a.rule}: {why}",
                            job_id=a.job_id, service=a.service, action=a.action,
                            detail={"rule": a.rule}))
    return events


def with_revision(events: Iterable[Event], revision: str | None) -> list[Event]:
    return [e if e.revision is not None else replace(e, revision=revision) for e in events]


def spec_events(updates: Iterable[SpecRecord], now: float) -> list[Event]:
    return [
        Event(at=now, kind="spec-error" if r.error else "spec-loaded",
              reason=r.error or f"{r.file} loaded", detail={"file": r.file})
        for r in updates
    ]
