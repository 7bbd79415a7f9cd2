"""desired × observed × records → ordered steps, each with the reason it is taken.

`plan` is a pure function: no I/O, no clock, no randomness (time comes in as `now`). That is
what makes it cheap to test exhaustively and what makes `reconcile diff` honest: the steps it
prints are exactly the steps a pass would execute against the same snapshot.

Order of the steps is part of the contract: prunes and generation changes stop old processes
first, then each action in dependency order gets its socket cleanups and finally its spawn.

No step waits. A stop sends a signal and records the job `stopping` with a deadline; later
passes (woken by the process's exit, or by the plan's `requeue_at`) send SIGKILL once the
deadline passed and record the job's next phase once every process of it is gone. An action
whose previous run, or a foreign holder of its resources, is still stopping waits meanwhile,
and every other job keeps healing.
"""

from __future__ import annotations

import hashlib
import signal
from dataclasses import dataclass, field, replace
from typing import Literal

from reconciler.backoff import restart_delay, retry_delay
from reconciler.desired import Desired, DesiredAction
from reconciler.identity import Identity
from reconciler.observed import Exit, Observed, ProcInfo
from reconciler.redact import command_line
from reconciler.state.records import (
    BlockedBy,
    Enrollment,
    FailureClass,
    JobRecord,
    Phase,
    StopThen,
)

# A process without a health check that dies sooner than this after its start crashed before
# it was ready (see `_had_started`).
STARTUP_SECONDS = 1.0
# Whatever a spec says, no job starts more than once per this many seconds in a loop.
MIN_START_INTERVAL = 1.0
# A blocked job looks at its resource again at least this often, whatever its backoff says:
# a freed port must be taken promptly.
BLOCKED_RECHECK_SECONDS = 2.0
# How often a stop in progress is looked at when no exit notification can tell us (its main
# process is gone but other members of the job remain).
STOP_POLL_SECONDS = 0.25
# After SIGKILL: how long before SIGKILL is sent again to whatever is left.
KILL_GRACE_SECONDS = 5.0

# ---------------------------------------------------------------------------------------------
# Steps: plain data handed to `execute`.


@dataclass(frozen=True, slots=True)
class Spawn:
    """Start the action's command (its live log is rotated first: each run starts a fresh
    log, and the previous run, or the previous generation, is `logs --previous`)."""

    job: JobRecord  # the record as it should be once the process runs (identity filled later)
    action: DesiredAction
    reason: str
    verb: str = "spawn"
    # the job's restart count before this start: what it keeps if the start fails (no
    # process ran, so nothing restarted: like a container that could not be created)
    restarts_before: int = 0

    def describe(self) -> str:
        return f"spawn {self.job.service}.{self.job.action}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Adopt:
    """Take a live process we can prove is ours as the job's main process."""

    job: JobRecord  # with the identity of the process it now runs as
    reason: str
    kind: str = "adopt"  # event kind: "adopt", or "daemonized" when a forked child took over
    verb: str = "adopt"

    def describe(self) -> str:
        return f"adopt {self.job.service}.{self.job.action} (pid {self.job.pid}): {self.reason}"


@dataclass(frozen=True, slots=True)
class Kill:
    """Send one signal (as kill(2) does: not necessarily SIGKILL) and never wait: to every
    process of a job of ours (`job` set: its main process, its session and whatever carries
    its job id), or to one foreign process."""

    target: Identity
    scope: Literal["session", "process"]  # session: a job of ours; process: a foreign process
    signal: int
    reason: str
    job: JobRecord | None = None  # the job's record while stopping (None for foreign targets)
    cmd: str = ""
    verb: str = "kill"

    def describe(self) -> str:
        what = f"{self.job.service}.{self.job.action} " if self.job else ""
        return f"kill {what}pid {self.target.pid} {self.cmd}".rstrip() + f": {self.reason}"


@dataclass(frozen=True, slots=True)
class Cleanup:
    """Unlink a unix socket, only once the host layer proved it stale right before."""

    path: str
    reason: str
    verb: str = "cleanup"

    def describe(self) -> str:
        return f"cleanup {self.path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class UpdateJob:
    """Bookkeeping only: a job's phase or reason changes without touching the host."""

    job: JobRecord
    kind: str  # event kind
    reason: str
    pidfile: tuple[str, int] | None = None  # (path, pid): remove it if it still names pid
    verb: str = "update"

    def describe(self) -> str:
        return f"{self.kind} {self.job.service}.{self.job.action}: {self.reason}"


Step = Spawn | Adopt | Kill | Cleanup | UpdateJob
HOST_STEPS = (Spawn, Adopt, Kill, Cleanup)


@dataclass(frozen=True, slots=True)
class Waiting:
    """An action this pass leaves pending because it must wait (`after:`, or the previous
    generation of itself still stopping): it starts in a later pass. Not a step (nothing is
    done to the host for it); `reconcile diff` lists it so a change shows whole, e.g. the
    server of a new service waiting for the migration the same diff starts."""

    service: str
    action: str
    job_id: str
    reason: str
    waits_for: tuple[str, ...]  # "service.action" of each action it waits for


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pass will do, in order, and when the next pass should look again."""

    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    prune_held: bool = False  # the empty-specs guard kept running services from being pruned
    requeue_at: float | None = None  # when a pass should look again (stops in progress)
    waiting: tuple[Waiting, ...] = ()  # actions that start in a later pass (see `Waiting`)

    @property
    def changes(self) -> tuple[Step, ...]:
        """Steps that act on the host (what `diff` counts)."""
        return tuple(s for s in self.steps if isinstance(s, HOST_STEPS))


# ---------------------------------------------------------------------------------------------
# Planning.


@dataclass
class _Pass:
    """Working state of one planning run; discarded when `plan` returns."""

    desired: Desired
    observed: Observed
    now: float
    enrollments: dict[str, Enrollment]
    jobs: dict[tuple[str, str], JobRecord]  # current (non-removed) job per action, updated
    retiring: dict[str, JobRecord] = field(default_factory=dict)  # stopping, then removed
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stopping_sessions: set[int] = field(default_factory=set)
    stopping_pids: set[int] = field(default_factory=set)
    requeue_at: float | None = None
    waiting: list[Waiting] = field(default_factory=list)
    suspended: frozenset[str] = frozenset()

    def emit(self, step: Step) -> None:
        if isinstance(step, Cleanup) and any(
                isinstance(s, Cleanup) and s.path == step.path for s in self.steps):
            return
        self.steps.append(step)
        if isinstance(step, Kill):
            self.stopping_pids.add(step.target.pid)
        job = getattr(step, "job", None)
        if not isinstance(job, JobRecord):
            return
        if job.phase == "stopping":
            self.mark_stopping(job)
        if job.stop_then == "removed":
            self.retiring[job.id] = job
        elif job.phase != "removed":
            self.jobs[job.key] = job
        if job.phase == "removed":
            self.retiring.pop(job.id, None)

    def mark_stopping(self, job: JobRecord) -> None:
        """Processes of a job we are stopping are not conflicts to act on: they are going."""
        if job.pid is not None:
            self.stopping_pids.add(job.pid)
            self.stopping_sessions.add(job.pid)
        self.stopping_pids.update(m.pid for m in self.observed.members.get(job.id, ()))

    def being_stopped(self, proc: ProcInfo) -> bool:
        return proc.pid in self.stopping_pids or proc.session in self.stopping_sessions

    def requeue(self, at: float) -> None:
        self.requeue_at = at if self.requeue_at is None else min(self.requeue_at, at)

    def retiring_key(self, key: tuple[str, str]) -> bool:
        return any(j.key == key for j in self.retiring.values())


def plan(desired: Desired, observed: Observed, records: list[JobRecord], now: float, *,
         enrollments: dict[str, Enrollment] | None = None, allow_empty: bool = False,
         hold_prune: bool = False, suspended: frozenset[str] = frozenset(),
         only: frozenset[str] | None = None) -> Plan:
    """Compute the steps that make the host match `desired`. Pure: same input, same plan.

    `hold_prune`: a spec file is still being written (not settled), so what looks removed
    may only be moving (a rename, a checkout): prune nothing until it settles.

    `suspended`: services an operator suspended (`reconcile suspend`). Their jobs get no
    step at all: not started, not stopped (a stop in progress is not driven on), not
    restarted, not pruned (a suspended service removed from the specs is kept until it is
    resumed, then pruned), like a suspended Flux Kustomization or a paused Deployment.

    `only`: a keyed pass (docs/architecture.md). Steps are planned for these services alone
    (their actions, their retiring and pruned jobs); every other record and desired action
    is still read (readiness of a dependency, who owns a process holding a port), so the
    steps are those of the full plan for these services, given the same snapshot. The caller
    closes `only` over `after:` (a dependent is planned after what it waits for). Where no
    action of `only` declares a socket or port, `records` may hold just the jobs of `only`,
    every job being stopped and the jobs owning a process a pidfile of theirs names: nothing
    else is read then (controller.narrowable), so a keyed pass costs what its services
    cost."""
    def mine(service: str) -> bool:
        return only is None or service in only

    live = sorted((r for r in records if r.phase != "removed"),
                  key=lambda r: r.created_at or 0.0)
    # a suspended service's jobs stay in `jobs` (dependencies on them, and the processes
    # they own, are seen as usual) but are never planned, pruned or retired
    ctx = _Pass(desired, observed, now, dict(enrollments or {}),
                {r.key: r for r in live if r.stop_then != "removed"},
                {r.id: r for r in live if r.stop_then == "removed" and r.service not in
                 suspended}, suspended=suspended)
    retiring = [j for j in ctx.retiring.values() if mine(j.service)]
    for job in live:
        if job.phase == "stopping":
            ctx.mark_stopping(job)
    for job in retiring:
        _continue_stop(ctx, job, None)
    prune_held = False if hold_prune else _prune(ctx, allow_empty, only)
    for action in desired.actions if only is None else desired.of_services(only):
        if action.service not in suspended:
            _plan_action(ctx, action)
    return Plan(tuple(ctx.steps), tuple(ctx.notes), prune_held, ctx.requeue_at,
                tuple(ctx.waiting))


def job_id_for(action: DesiredAction, now: float) -> str:
    """A new job's id: unique per (action, generation, creation time), stable afterwards."""
    seed = f"{action.service}/{action.name}/{action.generation}/{now!r}"
    return "j" + hashlib.sha256(seed.encode()).hexdigest()[:11]


def _prune(ctx: _Pass, allow_empty: bool, only: frozenset[str] | None = None) -> bool:
    """Stop and retire jobs whose action is no longer desired. Acts only on our inventory
    (of the services in `only`, when given), and never on a suspended service (kept until
    it is resumed)."""
    wanted = ctx.desired.keys()
    orphans = [job for key, job in list(ctx.jobs.items())
               if key not in wanted and job.service not in ctx.suspended
               and (only is None or job.service in only)]
    if not orphans:
        return False
    if not ctx.desired.actions and not allow_empty:
        running = sum(1 for j in orphans if ctx.observed.alive(j.identity))
        ctx.notes.append(
            f"specs dir has no services: pruning nothing ({running} running, "
            f"{len(orphans)} jobs kept); pass --allow-empty if you mean it")
        return True
    for job in orphans:
        del ctx.jobs[job.key]
        _retire(ctx, job, "removed", "service or action removed from specs")
    return False


_FINAL_PHASE: dict[StopThen, Literal["removed", "stopped", "pending", "succeeded"]] = {
    "removed": "removed", "stopped": "stopped", "restart": "pending", "succeeded": "succeeded",
    "retry": "pending"}


def _retire(ctx: _Pass, job: JobRecord, then: StopThen, reason: str) -> None:
    """Stop a job's processes if any still run; it becomes `then` once they are gone."""
    if job.phase == "stopping":
        _continue_stop(ctx, _redirect_stop(ctx, job, then, reason), None)
        return
    proc = ctx.observed.alive(job.identity)
    if proc is None and not ctx.observed.members.get(job.id):
        phase = _FINAL_PHASE[then]
        final = replace(job.with_identity(None), phase=phase, ready=False, reason=reason,
                        next_start_at=None, blocked_by=(), stop_deadline=None, stop_then=None)
        ctx.emit(UpdateJob(final, "restart" if then == "restart" else phase, reason))
        return
    _begin_stop(ctx, job, then, reason, sig=job.spec.stop_signal_number,
                timeout=job.spec.stop_timeout, cmd=_cmd_of(proc))


def _redirect_stop(ctx: _Pass, job: JobRecord, then: StopThen, reason: str) -> JobRecord:
    """A stop is already under way: keep its deadline, change only what follows it. Removal
    wins over everything (the job's spec is gone); otherwise the operator's latest word
    (`down` or `restart`) does."""
    if job.stop_then in ("removed", then):
        return job
    updated = replace(job, stop_then=then, reason=reason, updated_at=ctx.now)
    ctx.emit(UpdateJob(updated, "stopping", reason))
    return updated


def _begin_stop(ctx: _Pass, job: JobRecord, then: StopThen, reason: str, *, sig: int,
                timeout: float, cmd: str = "") -> None:
    """Signal every process of the job and move on; `_continue_stop` finishes it."""
    assert job.identity is not None  # a job with processes to stop knows its main process
    stopping = replace(job, phase="stopping", ready=False, stop_then=then,
                       stop_deadline=ctx.now + timeout, next_start_at=None, blocked_by=(),
                       reason=reason, updated_at=ctx.now)
    ctx.emit(Kill(target=job.identity, scope="session", signal=sig, reason=reason,
                  job=stopping, cmd=cmd))
    ctx.requeue(min(ctx.now + STOP_POLL_SECONDS, stopping.stop_deadline or ctx.now))


def _continue_stop(ctx: _Pass, job: JobRecord, action: DesiredAction | None) -> JobRecord | None:
    """A stop in progress. Returns the job's record once all its processes are gone (the
    stop is finished), else None: SIGKILL once the deadline passed, otherwise wait."""
    leader = ctx.observed.alive(job.identity)
    if (leader is None and not ctx.observed.members.get(job.id)) or job.identity is None:
        return _stop_finished(ctx, job, action)
    deadline = job.stop_deadline if job.stop_deadline is not None else ctx.now
    if ctx.now < deadline:
        # an exit notification wakes us for a live main process; the rest must be looked at
        ctx.requeue(deadline if leader is not None else
                    min(deadline, ctx.now + STOP_POLL_SECONDS))
        return None
    reason = f"still running after {job.spec.stop_timeout:g}s: SIGKILL"
    escalated = replace(job, stop_deadline=ctx.now + KILL_GRACE_SECONDS, updated_at=ctx.now)
    ctx.emit(Kill(target=job.identity, scope="session", signal=signal.SIGKILL, reason=reason,
                  job=escalated, cmd=_cmd_of(leader)))
    ctx.requeue(ctx.now + STOP_POLL_SECONDS)
    return None


def _stop_finished(ctx: _Pass, job: JobRecord, action: DesiredAction | None) -> JobRecord:
    """Every process of the job is gone: record what it becomes, release its pidfile and
    sockets."""
    then: StopThen = job.stop_then or "removed"
    base = replace(job.with_identity(None), ready=False, blocked_by=(), stop_deadline=None,
                   stop_then=None, updated_at=ctx.now)
    pid_held = (job.spec.pidfile, job.pid) \
        if job.spec.pidfile is not None and job.pid is not None else None
    if then == "restart" and action is not None:
        final = _due(ctx, action, base, job.reason or "restart", pidfile=pid_held)
    elif then == "retry" and action is not None:
        final = _retry(ctx, action, base, pidfile=pid_held)
    else:
        phase = _FINAL_PHASE[then]
        final = replace(base, phase=phase, next_start_at=None,
                        reason=job.reason or f"{phase} after a stop")
        ctx.emit(UpdateJob(final, phase, f"stopped ({final.reason})", pidfile=pid_held))
    for path in job.spec.sockets:
        ctx.emit(Cleanup(path, f"socket of stopped {job.service}.{job.action}"))
    return final


def _plan_action(ctx: _Pass, action: DesiredAction) -> None:
    job = ctx.jobs.get(action.key)
    if job is not None and job.generation != action.generation:
        del ctx.jobs[action.key]
        _retire(ctx, job, "removed",
                f"spec changed (generation {job.generation[:8]} -> {action.generation[:8]})")
        job = None
    if job is None:
        job = _new_job(ctx, action)
    if job.phase == "stopping":
        finished = _continue_stop(ctx, job, action)
        if finished is None:
            return
        job = finished
    if job.phase == "stopped":
        return  # by restart policy or by an operator's `down`: only a spec change restarts it
    if job.identity is not None and job.identity.boot_id != ctx.observed.boot_id:
        job = _forget_previous_boot(ctx, job)
    if job.process:
        _plan_process(ctx, action, job)
    else:
        _plan_oneshot(ctx, action, job)


def _new_job(ctx: _Pass, action: DesiredAction) -> JobRecord:
    job = JobRecord(
        id=job_id_for(action, ctx.now), service=action.service, action=action.name,
        generation=action.generation, phase="pending", process=action.spec.process,
        spec=action.job_spec(), created_at=ctx.now, updated_at=ctx.now,
        reason="new job",
    )
    ctx.jobs[action.key] = job
    return job


def _forget_previous_boot(ctx: _Pass, job: JobRecord) -> JobRecord:
    fresh = replace(job.with_identity(None), phase="pending", ready=False, started_at=None,
                    last_exit_at=job.started_at or ctx.now, last_exit_code=None,
                    reason="record from a previous boot: starting fresh")
    ctx.emit(UpdateJob(fresh, "stale-record", fresh.reason))
    return fresh


# --- long-running processes -------------------------------------------------------------------


def _plan_process(ctx: _Pass, action: DesiredAction, job: JobRecord) -> None:
    proc = ctx.observed.alive(job.identity)
    over = _over_limit(ctx, job) if proc is not None else None
    if over is not None:
        _stop_over_limit(ctx, action, job, over)
        return
    unhealthy = proc is not None and _unhealthy(ctx, action, job)
    if proc is not None and not unhealthy:
        _keep_running(ctx, job)
        return
    enrollment = _adoptable(ctx, job)
    if enrollment is not None:
        ctx.emit(Adopt(_adopted(job, enrollment, ctx),
                       "enrolled by us for this job and still running"))
        return
    if unhealthy:
        _stop_unhealthy(ctx, action, job)
        return
    if job.identity is not None:
        successor = _successor(ctx, job)
        if successor is not None:
            _follow(ctx, job, successor)
            return
        ended = _record_exit(ctx, action, job)
        if ended is None or ended.phase == "stopped":
            return
        job = ended
    if _waiting(ctx, job):
        return
    _start(ctx, action, job)


def _successor(ctx: _Pass, job: JobRecord) -> ProcInfo | None:
    """The main process ended well (exit 0, or not our child so we cannot know) while other
    processes of the job live on: it forked into the background, like a classic daemon.
    Like systemd's Type=forking, the job follows it: a process that left for a session of
    its own (setsid) is preferred, then the oldest. A crash leaves no successor: what is
    left of a crashed run is stopped and the job restarted."""
    members = ctx.observed.members.get(job.id, ())
    if not members or job.phase not in ("running", "starting"):
        return None
    if _exit_code(ctx.observed.exits.get(job.pid or -1), job.identity) not in (0, None):
        return None
    return min(members, key=lambda p: (p.pid != p.session, p.identity.starttime_ticks, p.pid))


def _follow(ctx: _Pass, job: JobRecord, successor: ProcInfo) -> None:
    followed = replace(job.with_identity(successor.identity), updated_at=ctx.now,
                       reason=f"daemonized: main process is now {successor.describe()}")
    ctx.emit(Adopt(followed, followed.reason, kind="daemonized"))


def _unhealthy(ctx: _Pass, action: DesiredAction, job: JobRecord) -> bool:
    """Ready once, then `failures` probes in a row failed: the process runs but does not
    serve, which is an outage just like a crash."""
    if action.health is None or not job.ready:
        return False
    return ctx.observed.failing.get(job.id, 0) >= action.health.failures


def _keep_running(ctx: _Pass, job: JobRecord) -> None:
    """The job's process is alive: only its readiness may need recording.

    Without a health probe a running process is ready; with one it is `starting` until the
    probe passes once.
    """
    has_probe = job.spec.health
    ready = job.ready or not has_probe or ctx.observed.ready.get(job.id, False)
    phase: Phase = "running" if ready else "starting"
    if (job.phase, job.ready, job.blocked_by) == (phase, ready, ()):
        return
    updated = replace(job, phase=phase, ready=ready, blocked_by=(), next_start_at=None,
                      reason="ready" if ready else "waiting for its health check")
    ctx.emit(UpdateJob(updated, "ready" if ready else "running", updated.reason))


def _running(job: JobRecord, ctx: _Pass, ready: bool) -> JobRecord:
    return replace(job, phase="running", ready=ready, next_start_at=None, blocked_by=(),
                   reason="adopted", updated_at=ctx.now)


def _adoptable(ctx: _Pass, job: JobRecord) -> Enrollment | None:
    """An enrollment proving we started a live process for this very job that the job's
    record does not name: a controller died between spawning it and committing its pass."""
    enrollment = ctx.enrollments.get(job.id)
    if enrollment is None or enrollment.generation != job.generation:
        return None
    if enrollment.identity == job.identity or not ctx.observed.alive(enrollment.identity):
        return None
    return enrollment


def _adopted(job: JobRecord, enrollment: Enrollment, ctx: _Pass) -> JobRecord:
    """The uncommitted spawn happened, so it counts like any start: a restart if the job had
    run before (the same rule as `_start`)."""
    restarted = job.started_at is not None
    return replace(_running(job.with_identity(enrollment.identity), ctx, ready=False),
                   restart_count=job.restart_count + (1 if restarted else 0),
                   started_at=enrollment.enrolled_at)


def _record_exit(ctx: _Pass, action: DesiredAction, job: JobRecord) -> JobRecord | None:
    """The job's main process is gone: record how it ended and decide when it comes back.
    Returns the job's new record, or None while what is left of the run (children of a
    crashed process) is being stopped first."""
    exit_code = _exit_code(ctx.observed.exits.get(job.pid or -1), job.identity)
    lived = ctx.now - job.started_at if job.started_at is not None else 0.0
    crash: FailureClass = ("crash-after-ready" if _had_started(action, job, lived)
                           else "crash-before-ready")
    what = _exit_text(exit_code)
    ended, restart = _run_ended(ctx, action, job, exit_code, crash, what)
    if ctx.observed.members.get(job.id):
        _begin_stop(ctx, ended, "restart" if restart else "stopped",
                    f"{what}: stop what is left of its run", sig=action.stop_signal,
                    timeout=action.spec.stop.timeout)
        return None
    base = ended.with_identity(None)
    if not restart:
        stopped = replace(base, phase="stopped")
        ctx.emit(UpdateJob(stopped, "exit", stopped.reason))
        return stopped
    return _due(ctx, action, base, what)


def _over_limit(ctx: _Pass, job: JobRecord) -> str | None:
    """Why the job's current process is over a resource limit (`max_rss`), if it is: the
    monitor names the process it measured, so a restarted one never pays for it."""
    found = ctx.observed.over_limit.get(job.id)
    return found[1] if found is not None and found[0] == job.identity else None


def _stop_over_limit(ctx: _Pass, action: DesiredAction, job: JobRecord, what: str) -> None:
    """Over `max_rss`: stopped and restarted like a crash (its backoff applies)."""
    ended, restart = _run_ended(ctx, action, job, None, "memory-limit", what)
    _begin_stop(ctx, ended, "restart" if restart else "stopped", what, sig=action.stop_signal,
                timeout=action.spec.stop.timeout, cmd=command_line(action.argv))


def _stop_unhealthy(ctx: _Pass, action: DesiredAction, job: JobRecord) -> None:
    """The process runs but failed `failures` probes in a row after it was ready: an outage
    like a crash. Stop it; it restarts (or stays stopped, per `restart`) once gone."""
    what = f"unhealthy: {ctx.observed.failing.get(job.id, 0)} health checks failed in a row"
    ended, restart = _run_ended(ctx, action, job, None, "unhealthy", what)
    _begin_stop(ctx, ended, "restart" if restart else "stopped", what, sig=action.stop_signal,
                timeout=action.spec.stop.timeout, cmd=command_line(action.argv))


def _run_ended(ctx: _Pass, action: DesiredAction, job: JobRecord, exit_code: int | None,
               failure: FailureClass, what: str) -> tuple[JobRecord, bool]:
    """The record of a run that ended (exit code, failure counting, class, reason), and
    whether the restart policy restarts it. A run of at least `backoff.reset_after` resets
    the count of consecutive failures."""
    lived = ctx.now - job.started_at if job.started_at is not None else 0.0
    reset = lived >= action.spec.backoff.reset_after
    failures = 1 if reset else job.consecutive_failures + 1
    if exit_code == 0 and reset:
        failures = 0
    policy = action.spec.effective_restart
    restart = not (policy == "never" or (policy == "on-failure" and exit_code == 0))
    ended = replace(job, last_exit_code=exit_code, last_exit_at=ctx.now, ready=False,
                    blocked_by=(), updated_at=ctx.now,
                    consecutive_failures=failures if restart else 0,
                    failure_class=failure if restart and exit_code != 0 else job.failure_class,
                    reason=what if restart else f"{what}; restart={policy}")
    return ended, restart


def _due(ctx: _Pass, action: DesiredAction, job: JobRecord, what: str, *,
         pidfile: tuple[str, int] | None = None) -> JobRecord:
    """A run ended and the job restarts: at once, or after its backoff (crash loops), and
    never sooner than MIN_START_INTERVAL after its previous start."""
    failures = job.consecutive_failures
    delay = restart_delay(failures, action.spec.backoff, job.id) if failures else 0.0
    delay = max(delay, _start_floor(ctx, job))
    if delay > 0:
        waiting = replace(job, phase="backoff", next_start_at=ctx.now + delay,
                          reason=f"crash-loop ({job.failure_class or 'restart'}, {what})")
        ctx.emit(UpdateJob(waiting, "backoff", f"{waiting.reason}, next start in {delay:.1f}s",
                        pidfile=pidfile))
        return waiting
    due = replace(job, phase="pending", next_start_at=None,
                  failure_class=job.failure_class if failures else None,
                  reason=f"{what}; restarting")
    ctx.emit(UpdateJob(due, "exit", due.reason, pidfile=pidfile))
    return due


def _start_floor(ctx: _Pass, job: JobRecord) -> float:
    """Seconds until MIN_START_INTERVAL has passed since the job's previous start."""
    if job.started_at is None:
        return 0.0
    return max(0.0, job.started_at + MIN_START_INTERVAL - ctx.now)


def _had_started(action: DesiredAction, job: JobRecord, lived: float) -> bool:
    """Did the process come up before it died? With a health check: its probe passed. A
    process without one is ready as soon as a pass sees it alive, which can be milliseconds
    after the spawn; like supervisord's `startsecs`, it counts as started only after
    STARTUP_SECONDS, so `exit 1` at once is a crash *before* ready, as operators expect."""
    return job.ready and (action.health is not None or lived >= STARTUP_SECONDS)


def _exit_code(reaped: Exit | None, identity: Identity | None) -> int | None:
    if reaped is None or reaped.identity != identity:
        return None
    return reaped.returncode


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exited (status unknown: not our child)"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exited {code}"


def _waiting(ctx: _Pass, job: JobRecord) -> bool:
    return (job.phase in ("backoff", "blocked") and job.next_start_at is not None
            and ctx.now < job.next_start_at)


# --- one-shots ---------------------------------------------------------------------------------


def _plan_oneshot(ctx: _Pass, action: DesiredAction, job: JobRecord) -> None:
    if job.phase == "succeeded":
        return
    if ctx.observed.alive(job.identity) is not None:
        if job.phase != "running":
            ctx.emit(UpdateJob(replace(job, phase="running", reason="running"), "running",
                            "running"))
        return
    if job.identity is not None:
        ended = _record_oneshot_exit(ctx, action, job)
        if ended is None or ended.phase == "succeeded":
            return
        job = ended
    if _waiting(ctx, job):
        return
    _start(ctx, action, job)


def _record_oneshot_exit(ctx: _Pass, action: DesiredAction,
                         job: JobRecord) -> JobRecord | None:
    """A one-shot's run ends when its command exits. What it left running (a helper it
    backgrounded, in its session or carrying its job id) is stopped first, as systemd does
    for a oneshot unit's cgroup: None while that stop is under way."""
    code = _exit_code(ctx.observed.exits.get(job.pid or -1), job.identity)
    ended = replace(job, last_exit_code=code, last_exit_at=ctx.now, updated_at=ctx.now)
    if code == 0:
        ended = replace(ended, consecutive_failures=0, failure_class=None, reason="exited 0")
    else:
        ended = replace(ended, consecutive_failures=job.consecutive_failures + 1,
                        failure_class="exit-nonzero",
                        reason=f"one-shot failed ({_exit_text(code)})")
    if ctx.observed.members.get(job.id):
        _begin_stop(ctx, ended, "succeeded" if code == 0 else "retry",
                    f"{ended.reason}: stop what it left running", sig=action.stop_signal,
                    timeout=action.spec.stop.timeout)
        return None
    base = ended.with_identity(None)
    if code == 0:
        done = replace(base, phase="succeeded")
        ctx.emit(UpdateJob(done, "succeeded", done.reason))
        return done
    return _retry(ctx, action, base)


def _retry(ctx: _Pass, action: DesiredAction, job: JobRecord, *,
           pidfile: tuple[str, int] | None = None) -> JobRecord:
    """A failed one-shot runs again after its backoff (never sooner than
    MIN_START_INTERVAL after its previous start)."""
    delay = max(retry_delay(job.consecutive_failures, action.spec.backoff, job.id),
                _start_floor(ctx, job))
    failed = replace(job, phase="backoff", next_start_at=ctx.now + delay)
    ctx.emit(UpdateJob(failed, "backoff", f"{failed.reason}, retry in {delay:.1f}s",
                    pidfile=pidfile))
    return failed


# --- starting: dependencies, pidfile, resources, spawn -----------------------------------------


def _start(ctx: _Pass, action: DesiredAction, job: JobRecord) -> None:
    unmet = [dep for dep in action.spec.after if not _satisfied(ctx, action.service, dep)]
    waiting_for = [_wait_text(ctx, action.service, dep) for dep in unmet]
    if ctx.retiring_key(action.key):
        waiting_for.insert(0, "the previous generation to stop")
    if waiting_for:
        _wait(ctx, job, "waiting for " + ", ".join(waiting_for), unmet)
        return
    in_the_way = _pidfile_instance(ctx, action)
    blocked, reclaim = _claim_resources(ctx, action)
    if blocked:
        _block(ctx, action, job, blocked)
        return
    in_the_way += [p for p in reclaim if p not in in_the_way]
    if in_the_way:
        _take_over(ctx, action, job, in_the_way)
        return
    restart = job.started_at is not None  # it ran in this boot: this start is a restart
    # Not ready until a later pass sees it alive (or its probe passes): a process that
    # dies at once crashed *before* it was ready.
    spawned = replace(
        job, phase="starting" if action.health else "running",
        restart_count=job.restart_count + (1 if restart else 0), blocked_by=(),
        next_start_at=None, ready=False, updated_at=ctx.now, stop_deadline=None,
        reason="waiting for its health check" if action.health else "running")
    ctx.emit(Spawn(spawned, action,
                   reason=f"{'restart' if restart else 'start'} ({job.reason or 'new job'})",
                   restarts_before=job.restart_count))


def _wait(ctx: _Pass, job: JobRecord, reason: str, unmet: list[str]) -> None:
    """Pending on something a later pass will see change; recorded only when the reason
    changes, so waiting costs no writes. Listed in `Plan.waiting` for `diff`."""
    ctx.waiting.append(Waiting(job.service, job.action, job.id, reason,
                               _waits_for(ctx, job, unmet)))
    # a start time that has passed goes: a later pass sees what it waits for change, and a
    # start time in the past would make every pass's `next_due` due at once
    if job.phase != "pending" or job.reason != reason or job.next_start_at is not None:
        ctx.emit(UpdateJob(replace(job, phase="pending", reason=reason, next_start_at=None),
                           "pending", reason))


def _waits_for(ctx: _Pass, job: JobRecord, unmet: list[str]) -> tuple[str, ...]:
    """What the job waits for, as "service.action" names: each action an unmet `after:`
    entry names that is not done yet (`after: [db]` lists db's actions), the entry itself
    (qualified) when it names nothing here, and the job's own action while its previous
    generation is still stopping."""
    names = [f"{job.service}.{job.action}"] if ctx.retiring_key(job.key) else []
    for dep in unmet:
        targets = ctx.desired.waits_for(job.service, dep)
        found = [f"{s}.{a}" for s, a in targets if not _done(ctx, (s, a))] if targets else \
            [dep if "." in dep else f"{job.service}.{dep}"]
        names += [name for name in found if name not in names]
    return tuple(names)


def _take_over(ctx: _Pass, action: DesiredAction, job: JobRecord,
               procs: list[ProcInfo]) -> None:
    """Foreign processes stand in the way of a singleton or `kill_others` action: stop them
    without waiting (stop signal, then SIGKILL after `stop.timeout`), start once gone. The
    deadline lives in the waiting job's record, so it survives our own restart."""
    deadline = job.stop_deadline
    if deadline is None:
        sig, deadline = action.stop_signal, ctx.now + action.spec.stop.timeout
    elif ctx.now >= deadline:
        sig, deadline = int(signal.SIGKILL), ctx.now + KILL_GRACE_SECONDS
    else:
        sig = None
    first = procs[0]
    reason = f"waiting for {first.describe()} to stop: it holds what this action needs"
    if sig is not None:
        for proc in procs:
            ctx.emit(Kill(target=proc.identity, scope="process", signal=sig, cmd=_cmd_of(proc),
                          reason=f"{_why_in_the_way(ctx, action, proc)} "
                                 f"({'singleton' if action.spec.singleton else 'kill_others'})"))
    waiting = replace(job, phase="pending", stop_deadline=deadline, reason=reason)
    if waiting != job:
        ctx.emit(UpdateJob(waiting, "pending", reason))
    ctx.requeue(min(deadline, ctx.now + STOP_POLL_SECONDS))


def _why_in_the_way(ctx: _Pass, action: DesiredAction, proc: ProcInfo) -> str:
    state = ctx.observed.pidfiles.get(action.pidfile or "")
    if state is not None and state.proc == proc:
        return f"singleton: pidfile names a live instance of this action ({proc.describe()})"
    held = [str(r) if isinstance(r, str) else f":{r}" for r in _resources(action)
            if proc in _holders(ctx, r)]
    return f"holds {', '.join(held) or 'a declared resource'} declared by " \
           f"{action.service}.{action.name}"


def _satisfied(ctx: _Pass, service: str, dep: str) -> bool:
    """Every action the `after:` entry names (in this or another service) succeeded (a
    one-shot) or is ready (a process); an entry naming nothing desired here never is."""
    targets = ctx.desired.waits_for(service, dep)
    return bool(targets) and all(_done(ctx, key) for key in targets)


def _done(ctx: _Pass, key: tuple[str, str]) -> bool:
    job = ctx.jobs.get(key)
    if job is None:
        return False
    if not job.process:
        return job.phase == "succeeded"
    return job.phase == "running" and job.ready and ctx.observed.alive(job.identity) is not None


def _wait_text(ctx: _Pass, service: str, dep: str) -> str:
    """`migrate`, `db.migrate`, or why the target will not come on this host."""
    if ctx.desired.waits_for(service, dep):
        return dep
    other = dep.partition(".")[0]
    if other in ctx.desired.unplaced:
        return f"{dep} (not placed on this host: {ctx.desired.unplaced[other]})"
    return f"{dep} (not defined)"


def _pidfile_instance(ctx: _Pass, action: DesiredAction) -> list[ProcInfo]:
    """Singleton lifecycle: a live foreign instance named by our pidfile must be stopped
    first; a pidfile naming an unrelated process is stale and that process is never touched."""
    state = ctx.observed.pidfiles.get(action.pidfile or "")
    if action.pidfile is None or state is None or state.proc is None:
        return []
    proc = state.proc
    if ctx.being_stopped(proc) or _owned_by_job(ctx, proc):
        return []
    if action.spec.singleton and _plausible_instance(ctx, action, proc):
        return [proc]
    ctx.notes.append(f"{action.service}.{action.name}: pidfile {action.pidfile} names "
                     f"unrelated {proc.describe()}; stale, will be overwritten, not touched")
    return []


def _owned_by_job(ctx: _Pass, proc: ProcInfo) -> bool:
    return any(j.identity == proc.identity for j in ctx.jobs.values())


def _plausible_instance(ctx: _Pass, action: DesiredAction, proc: ProcInfo) -> bool:
    """Same command line (argv[0] compared by basename), or it holds our declared resources."""
    if _same_argv(proc.cmdline, action.argv):
        return True
    return any(proc in _holders(ctx, resource) for resource in _resources(action))


def _same_argv(seen: tuple[str, ...], wanted: tuple[str, ...]) -> bool:
    if not seen or len(seen) != len(wanted):
        return False
    return seen[0].rsplit("/", 1)[-1] == wanted[0].rsplit("/", 1)[-1] and seen[1:] == wanted[1:]


def _resources(action: DesiredAction) -> list[str | int]:
    return [*action.sockets, *action.spec.tcp_ports]


def _holders(ctx: _Pass, resource: str | int) -> tuple[ProcInfo, ...]:
    if isinstance(resource, int):
        port = ctx.observed.ports.get(resource)
        return port.holders if port else ()
    sock = ctx.observed.sockets.get(resource)
    return sock.holders if sock else ()


def _claim_resources(ctx: _Pass,
                     action: DesiredAction) -> tuple[list[BlockedBy], list[ProcInfo]]:
    """Clean stale sockets; return what blocks the start and the foreign holders this action
    may stop (singleton / kill_others) before it starts."""
    reclaim = action.spec.singleton or action.spec.kill_others
    blocked: list[BlockedBy] = []
    in_the_way: list[ProcInfo] = []
    for path in action.sockets:
        blocked += _claim_socket(ctx, path, reclaim, in_the_way)
    for port in action.spec.tcp_ports:
        state = ctx.observed.ports.get(port)
        if state is not None and state.listening:
            blocked += _claim_holders(ctx, f":{port}", state.holders, reclaim, in_the_way)
    return blocked, in_the_way


def _claim_socket(ctx: _Pass, path: str, reclaim: bool,
                  in_the_way: list[ProcInfo]) -> list[BlockedBy]:
    state = ctx.observed.sockets.get(path)
    if state is None or state.kind == "absent":
        return []
    if state.kind == "stale":
        ctx.emit(Cleanup(path, "stale socket: nobody listens on it"))
        return []
    if state.kind == "not-socket":
        return [BlockedBy(path, None, "path exists and is not a socket; not removed")]
    return _claim_holders(ctx, path, state.holders, reclaim, in_the_way)


def _claim_holders(ctx: _Pass, resource: str, holders: tuple[ProcInfo, ...], reclaim: bool,
                   in_the_way: list[ProcInfo]) -> list[BlockedBy]:
    """A holder that is one of our jobs, or one we are stopping already, blocks until it is
    gone; a foreign one blocks, or is in the way if this action may reclaim."""
    if not holders:
        return [BlockedBy(resource, None, "listening, owner not visible to us")]
    blocked: list[BlockedBy] = []
    for proc in holders:
        owner = _owning_job(ctx, proc)
        if ctx.being_stopped(proc):
            blocked.append(BlockedBy(resource, proc.pid, f"{_cmd_of(proc)} (stopping)"))
        elif owner is not None:
            blocked.append(BlockedBy(resource, proc.pid,
                                     f"{_cmd_of(proc)} (job {owner.service}.{owner.action})"))
        elif reclaim:
            in_the_way.append(proc)
        else:
            blocked.append(BlockedBy(resource, proc.pid, _cmd_of(proc)))
    return blocked


def _owning_job(ctx: _Pass, proc: ProcInfo) -> JobRecord | None:
    for job in (*ctx.jobs.values(), *ctx.retiring.values()):
        in_its_session = job.pid is not None and job.pid in (proc.pid, proc.session)
        if in_its_session and ctx.observed.alive(job.identity) is not None:
            return job
    return None


def blocked_retry(job: JobRecord, action: DesiredAction) -> tuple[int, float]:
    """(attempts, seconds until the next look) for a job that cannot start yet: its backoff,
    but at most BLOCKED_RECHECK_SECONDS, so a freed resource is taken promptly."""
    attempts = job.consecutive_failures + 1 if job.phase == "blocked" else 1
    return attempts, min(retry_delay(attempts, action.spec.backoff, job.id),
                         BLOCKED_RECHECK_SECONDS)


def _block(ctx: _Pass, action: DesiredAction, job: JobRecord, blocked: list[BlockedBy]) -> None:
    """Retry with backoff (see `blocked_retry`), and soon when the holder is a process we
    are stopping."""
    attempts, delay = blocked_retry(job, action)
    if all(b.pid is not None and b.pid in ctx.stopping_pids for b in blocked):
        delay = STOP_POLL_SECONDS
    first = blocked[0]
    holder = f"pid {first.pid} ({first.cmd})" if first.pid else first.cmd
    reason = f"blocked: {first.resource} held by {holder}"
    updated = replace(job, phase="blocked", blocked_by=tuple(blocked),
                      failure_class="bind-conflict", consecutive_failures=attempts,
                      next_start_at=ctx.now + delay, reason=reason, updated_at=ctx.now,
                      stop_deadline=None)
    ctx.emit(UpdateJob(updated, "blocked", f"{reason}, retry in {delay:.1f}s"))


def _cmd_of(proc: ProcInfo | None) -> str:
    return proc.command() if proc is not None else ""


def plan_down(observed: Observed, records: list[JobRecord], now: float,
              targets: frozenset[tuple[str, str | None]] | None = None, *,
              suspended: frozenset[str] = frozenset()) -> Plan:
    """Stop the targeted jobs (all when None; (service, action) pairs, action None meaning
    the whole service) and keep them stopped until their spec changes or an operator
    restarts them, like `systemctl stop`. Run again, it drives stops in progress: SIGKILL
    after the deadline, `stopped` once gone. Suspended services are left alone."""
    live = [r for r in records if r.phase not in ("removed", "stopped", "succeeded")
            and r.service not in suspended]
    ctx = _Pass(Desired(actions=()), observed, now, {},
                {r.key: r for r in live if r.stop_then != "removed"},
                {r.id: r for r in live if r.stop_then == "removed"})
    for job in live:
        if targets is not None and not _targeted(job, targets):
            continue
        _retire(ctx, job, "stopped", "stopped by operator (reconcile down)")
    return Plan(tuple(ctx.steps), tuple(ctx.notes), requeue_at=ctx.requeue_at)


def plan_restart(observed: Observed, records: list[JobRecord], now: float,
                 targets: frozenset[tuple[str, str | None]], *,
                 suspended: frozenset[str] = frozenset()) -> Plan:
    """Stop the named jobs and mark them due, so a pass starts them again once stopped.

    `targets` holds (service, action) pairs, action None meaning the whole service. A manual
    restart counts in `restart_count` (it happens at the spawn), and clears any backoff: an
    operator asking for a restart wants it now. A one-shot runs again.
    """
    ctx = _Pass(Desired(actions=()), observed, now, {}, {})
    for job in records:
        if job.phase == "removed" or not _targeted(job, targets) or job.service in suspended:
            continue
        due = replace(job, blocked_by=(), next_start_at=None, consecutive_failures=0,
                      failure_class=None)
        _retire(ctx, due, "restart", "restarted by operator (reconcile restart)")
    return Plan(tuple(ctx.steps), tuple(ctx.notes), requeue_at=ctx.requeue_at)


def _targeted(job: JobRecord, targets: frozenset[tuple[str, str | None]]) -> bool:
    return (job.service, job.action) in targets or (job.service, None) in targets
