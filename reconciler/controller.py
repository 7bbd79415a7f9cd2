"""One reconcile pass, and the `--once` convergence loop built from passes.

A pass is: load specs (last-good per file) → observe the host → plan (pure) → execute →
record everything in one SQLite transaction. It holds the state dir's lock for its duration,
so a daemon and a `reconcile --once` never run passes at the same time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler import health, logs
from reconciler.desired import Desired, ResolvedCache, build_desired
from reconciler.execute import Executor, Outcome
from reconciler.host.limits import raise_fd_limit
from reconciler.host.observe import observe
from reconciler.host.observed import Observed
from reconciler.host.proccache import ProcCache
from reconciler.host.spawn import Children
from reconciler.plan import Plan, plan, plan_down, plan_restart
from reconciler.settings import Settings
from reconciler.spec.load import LoadResult, load_specs
from reconciler.state import statedir
from reconciler.state.enrollment import Enrollments, sweep_stale_temps
from reconciler.state.lock import StateLock
from reconciler.state.records import Enrollment, Event, JobRecord, SpecRecord
from reconciler.state.store import Store

SETTLED_PHASES = ("succeeded", "stopped")
HOUSEKEEPING_SECONDS = 5.0  # how often logs are held to `logs.max_size` and events pruned
EVENTS_KEPT = 10_000  # the newest events kept: a crash loop must not grow the database forever
HealthResults = Mapping[str, "health.HealthState"]


@dataclass(frozen=True, slots=True)
class PassResult:
    loaded: LoadResult
    desired: Desired
    plan: Plan
    jobs: tuple[JobRecord, ...]  # every non-removed job after the pass

    @property
    def converged(self) -> bool:
        """Nothing left to do: no host changes planned, and every desired action is ready
        (process), succeeded (one-shot) or deliberately stopped."""
        if self.plan.changes or self.plan.prune_held:
            return False
        by_key = {j.key: j for j in self.jobs}
        for action in self.desired.actions:
            job = by_key.get(action.key)
            if job is None:
                return False
            if job.phase in SETTLED_PHASES:
                continue
            if not (job.phase == "running" and job.ready):
                return False
        return True

    def next_due(self) -> float | None:
        """The earliest time a waiting job (backoff, blocked) becomes due."""
        times = [j.next_start_at for j in self.jobs if j.next_start_at is not None]
        return min(times) if times else None


@dataclass(frozen=True, slots=True)
class _Draft:
    """The planning half of a pass: what `diff` shows and what a pass then executes."""

    loaded: LoadResult
    spec_records: list[SpecRecord]
    desired: Desired
    records: list[JobRecord]
    plan: Plan


class Reconciler:
    """Owns what outlives a single pass: the writer connection and the handles on our
    children (their exit codes can only be collected by us, exactly once)."""

    def __init__(self, settings: Settings, *, allow_empty: bool = False,
                 clock: Callable[[], float] = time.time,
                 housekeeping_interval: float = HOUSEKEEPING_SECONDS,
                 rebind: bool = False) -> None:
        self.settings = settings
        self.allow_empty = allow_empty
        self.housekeeping_interval = housekeeping_interval
        self._housekept_at = -math.inf  # time.monotonic() of the last housekeeping
        self.clock = clock
        self.children = Children()
        raise_fd_limit()
        prepare_state_dir(settings, rebind=rebind)
        self.store = Store.open(settings.db_path)
        self.executor = Executor(settings.run_dir, self.children, clock)
        self.lock = StateLock(settings.lock_path)
        self.enrollments = Enrollments(settings.run_dir)
        self.resolved_cache: ResolvedCache = {}
        self.procs = ProcCache()
        sweep_stale_temps(settings.run_dir)

    def close(self) -> None:
        self.procs.close()
        self.store.close()

    def __enter__(self) -> Reconciler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- passes ---------------------------------------------------------------------------

    def reconcile(self, health: HealthResults | None = None) -> PassResult:
        """One full pass: observe, plan, execute, record.

        `health` carries probe results from a running `HealthMonitor` (the daemon); without
        it, jobs that are not ready yet are probed once, synchronously (`--once`).
        """
        with self._locked():
            draft = self._draft(self.children, health)
            outcome = self._execute(draft.plan)
            self._save(outcome, draft.spec_records, draft.loaded)
            jobs = jobs_after(draft.records, outcome)
            self._housekeeping_when_due(draft.desired, jobs)
            return PassResult(draft.loaded, draft.desired, draft.plan, jobs)

    def preview(self) -> tuple[LoadResult, Plan]:
        """The plan a pass would execute now (`reconcile diff`): writes nothing, reaps
        nothing, takes no lock (so it cannot know who wrote enrollments: it reads them all)."""
        self.enrollments.invalidate()
        draft = self._draft(children=None, health=None)
        return draft.loaded, draft.plan

    def down(self, targets: frozenset[tuple[str, str | None]] | None = None) -> Plan:
        """Stop (service, action|None) targets (all when None); they stay stopped like
        after `systemctl stop`."""
        return self._apply(lambda observed, records, now:
                           plan_down(observed, records, now, targets))

    def restart(self, targets: frozenset[tuple[str, str | None]]) -> Plan:
        """Stop the targeted jobs and mark them due; the next pass starts them."""
        return self._apply(lambda observed, records, now:
                           plan_restart(observed, records, now, targets))

    def _draft(self, children: Children | None, health: HealthResults | None) -> _Draft:
        loaded, spec_records = self._load()
        desired = build_desired(loaded, self.settings, self.resolved_cache)
        records, enrollments = self._records()
        observed = observe_for(desired, records, enrollments, children,
                               self.procs if children is not None else None)
        observed = with_health(observed, desired, records, health)
        steps = plan(desired, observed, records, self.clock(), enrollments=enrollments,
                     allow_empty=self.allow_empty)
        return _Draft(loaded, spec_records, desired, records, steps)

    def _apply(self, planner: Callable[[Observed, list[JobRecord], float], Plan]) -> Plan:
        """Run an operator's command (`down`, `restart`) as one locked, recorded pass."""
        with self._locked():
            records, enrollments = self._records()
            observed = observe_for(Desired(actions=()), records, enrollments, self.children,
                                   self.procs)
            steps = planner(observed, records, self.clock())
            self._save(self._execute(steps), [], None)
            return steps

    def _housekeeping_when_due(self, desired: Desired, jobs: Iterable[JobRecord]) -> None:
        """Bounds on disk use need no per-pass precision, and checking a thousand logs
        costs more than the rest of a no-op pass."""
        if time.monotonic() - self._housekept_at >= self.housekeeping_interval:
            cap_logs(desired, jobs)
            self.store.prune_events(keep=EVENTS_KEPT)
            self._housekept_at = time.monotonic()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the state dir's lock. If another process held it since our last pass, it may
        have written enrollments: read them all again (see `Enrollments`)."""
        with self.lock:
            if self.lock.changed_hands:
                self.enrollments.invalidate()
            yield

    def _execute(self, steps: Plan) -> Outcome:
        outcome = self.executor.run(steps.steps)
        self.enrollments.refresh(outcome.jobs)  # their enrollments were written or removed
        return outcome

    def converge(self, wait: float) -> PassResult:
        """Pass after pass until converged or `wait` seconds ran out (`reconcile --once`)."""
        deadline = time.monotonic() + wait
        while True:
            result = self.reconcile()
            remaining = deadline - time.monotonic()
            if result.converged or remaining <= 0 or result.plan.prune_held:
                return result
            self.children.wait(self._nap(result, remaining))

    def _nap(self, result: PassResult, remaining: float) -> float:
        """How long to wait for a child to exit before the next pass."""
        nap = 0.05 if result.plan.changes else 0.25
        due = result.next_due()
        if due is not None:
            nap = min(nap, max(due - self.clock(), 0.0)) if due > self.clock() else 0.0
        return min(nap, remaining)

    # --- load, observe, record ------------------------------------------------------------

    def _load(self) -> tuple[LoadResult, list[SpecRecord]]:
        previous = self.store.spec_records()
        last_good = {name: r.content for name, r in previous.items() if r.content is not None}
        loaded = load_specs(self.settings.specs_dir, last_good)
        return loaded, spec_record_updates(loaded, previous, self.clock())

    def _records(self) -> tuple[list[JobRecord], dict[str, Enrollment]]:
        records = self.store.jobs()
        enrollments = self.enrollments.current()
        return with_unrecorded_enrollments(records, enrollments, self.clock()), enrollments

    def _save(self, outcome: Outcome, spec_records: list[SpecRecord],
              loaded: LoadResult | None) -> None:
        with self.store.atomic():
            self.store.upsert_jobs(outcome.jobs.values())
            self.store.append_events([*outcome.events, *spec_events(spec_records, self.clock())])
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


def observe_for(desired: Desired, records: list[JobRecord], enrollments: dict[str, Enrollment],
                children: Children | None, cache: ProcCache | None = None) -> Observed:
    """Observe what this pass needs, cheapest first.

    Liveness of our jobs comes first; pidfiles, declared sockets and ports are inspected
    only for actions that are not running, because only a start needs to know what they
    name and who holds them.
    """
    pids = {r.pid for r in records if r.pid} | {e.identity.pid for e in enrollments.values()}
    first = observe(pids=pids, children=children, cache=cache)
    alive = {r.key for r in records if first.alive(r.identity)}
    starting = [a for a in desired.actions if a.key not in alive]
    pidfiles = [a.pidfile for a in starting if a.pidfile]
    sockets = {s for a in starting for s in a.sockets}
    ports = {p for a in starting for p in a.spec.tcp_ports}
    if not pidfiles and not sockets and not ports:
        return first
    resources = observe(pidfiles=pidfiles, sockets=sockets, ports=ports, candidates=pids,
                        known=first.procs)
    return replace(first, procs={**first.procs, **resources.procs},
                   pidfiles=resources.pidfiles, sockets=resources.sockets,
                   ports=resources.ports)


def with_health(observed: Observed, desired: Desired, records: list[JobRecord],
                health: HealthResults | None) -> Observed:
    if health is None:
        return replace(observed, ready=probe_readiness(desired, records, observed))
    return replace(observed, ready={job_id: st.ready for job_id, st in health.items()},
                   failing={job_id: st.consecutive_failures for job_id, st in health.items()})


def probe_readiness(desired: Desired, records: list[JobRecord],
                    observed: Observed) -> dict[str, bool]:
    """Probe running jobs that have a health check and are not ready yet."""
    ready: dict[str, bool] = {}
    by_key = {a.key: a for a in desired.actions}
    for job in records:
        action = by_key.get(job.key)
        if action is None or action.health is None or job.ready:
            continue
        if job.generation == action.generation and observed.alive(job.identity):
            ready[job.id] = health.probe(action.health, cwd=action.cwd,
                                         env=dict(action.env))
    return ready


def jobs_after(records: list[JobRecord], outcome: Outcome) -> tuple[JobRecord, ...]:
    """The jobs as the store now holds them (non-removed, by service and action), without
    reading them back: the pass knows what it read and what it wrote."""
    merged = {r.id: r for r in records}
    merged.update(outcome.jobs)
    live = (j for j in merged.values() if j.phase != "removed")
    return tuple(sorted(live, key=lambda j: (j.service, j.action, j.created_at or 0.0)))


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
        old = previous.get(name)
        if not outcome.errors and outcome.content is not None:
            record = SpecRecord(name, outcome.content, outcome.hash, None, now)
        else:
            error = "\n".join(str(e) for e in outcome.errors)
            record = SpecRecord(name, old.content if old else None, old.hash if old else None,
                                error, now)
        if old is None or (old.content, old.hash, old.error) != (
                record.content, record.hash, record.error):
            updates.append(record)
    return updates


def spec_events(updates: Iterable[SpecRecord], now: float) -> list[Event]:
    return [
        Event(at=now, kind="spec-error" if r.error else "spec-loaded",
              reason=r.error or f"{r.file} loaded", detail={"file": r.file})
        for r in updates
    ]
