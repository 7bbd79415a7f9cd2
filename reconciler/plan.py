"""desired × observed × records → ordered steps, each with the reason it is taken.

`plan` is a pure function: no I/O, no clock, no randomness (time comes in as `now`). That is
what makes it cheap to test exhaustively and what makes `reconcile diff` honest: the steps it
prints are exactly the steps a pass would execute against the same snapshot.

Order of the steps is part of the contract: prunes and generation changes stop old processes
first (they may hold the ports the new ones need), then each action in dependency order gets
its conflict stops, its socket cleanups and finally its spawn.
"""

from __future__ import annotations

import hashlib
import signal
from dataclasses import dataclass, field, replace
from typing import Literal

from reconciler.backoff import restart_delay, retry_delay
from reconciler.desired import Desired, DesiredAction
from reconciler.host.identity import Identity
from reconciler.host.observed import Exit, Observed, ProcInfo
from reconciler.redact import command_line
from reconciler.state.records import BlockedBy, Enrollment, JobRecord

# A process without a health check that dies sooner than this after its start crashed before
# it was ready (see `_had_started`).
STARTUP_SECONDS = 1.0

# ---------------------------------------------------------------------------------------------
# Steps: plain data handed to `execute`.


@dataclass(frozen=True, slots=True)
class Spawn:
    job: JobRecord  # the record as it should be once the process runs (identity filled later)
    action: DesiredAction
    rotate_log: bool
    reason: str
    verb: str = "spawn"

    def describe(self) -> str:
        return f"spawn {self.job.service}.{self.job.action}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Adopt:
    job: JobRecord
    reason: str
    verb: str = "adopt"

    def describe(self) -> str:
        return f"adopt {self.job.service}.{self.job.action} (pid {self.job.pid}): {self.reason}"


@dataclass(frozen=True, slots=True)
class Stop:
    target: Identity
    scope: Literal["session", "process"]  # session: a job of ours; process: a foreign process
    signal: int
    timeout: float
    reason: str
    job: JobRecord | None = None  # the record to write once stopped (None for foreign targets)
    pidfile: str | None = None  # removed after the stop if it still names the target
    cmd: str = ""
    verb: str = "kill"

    def describe(self) -> str:
        what = f"{self.job.service}.{self.job.action} " if self.job else ""
        return f"kill {what}pid {self.target.pid} {self.cmd}".rstrip() + f": {self.reason}"


@dataclass(frozen=True, slots=True)
class Cleanup:
    path: str
    reason: str
    verb: str = "cleanup"

    def describe(self) -> str:
        return f"cleanup {self.path}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Record:
    """Bookkeeping only: a job's phase or reason changes without touching the host."""

    job: JobRecord
    kind: str  # event kind
    reason: str
    verb: str = "record"

    def describe(self) -> str:
        return f"{self.kind} {self.job.service}.{self.job.action}: {self.reason}"


Step = Spawn | Adopt | Stop | Cleanup | Record
HOST_STEPS = (Spawn, Adopt, Stop, Cleanup)


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    prune_held: bool = False  # the empty-specs guard kept running services from being pruned

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
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stopping_sessions: set[int] = field(default_factory=set)
    stopping_pids: set[int] = field(default_factory=set)

    def emit(self, step: Step) -> None:
        if isinstance(step, Cleanup) and any(
                isinstance(s, Cleanup) and s.path == step.path for s in self.steps):
            return
        self.steps.append(step)
        if isinstance(step, Stop):
            self.stopping_pids.add(step.target.pid)
            if step.scope == "session":
                self.stopping_sessions.add(step.target.pid)
        job = getattr(step, "job", None)
        if isinstance(job, JobRecord) and job.phase != "removed":
            self.jobs[job.key] = job

    def being_stopped(self, proc: ProcInfo) -> bool:
        return proc.pid in self.stopping_pids or proc.session in self.stopping_sessions


def plan(desired: Desired, observed: Observed, records: list[JobRecord], now: float, *,
         enrollments: dict[str, Enrollment] | None = None, allow_empty: bool = False) -> Plan:
    """Compute the steps that make the host match `desired`. Pure: same input, same plan."""
    live = [r for r in records if r.phase != "removed"]
    ctx = _Pass(desired, observed, now, dict(enrollments or {}),
                {r.key: r for r in sorted(live, key=lambda r: r.created_at or 0.0)})
    prune_held = _prune(ctx, allow_empty)
    for action in desired.actions:
        _plan_action(ctx, action)
    return Plan(tuple(ctx.steps), tuple(ctx.notes), prune_held)


def job_id_for(action: DesiredAction, now: float) -> str:
    """A new job's id: unique per (action, generation, creation time), stable afterwards."""
    seed = f"{action.service}/{action.name}/{action.generation}/{now!r}"
    return "j" + hashlib.sha256(seed.encode()).hexdigest()[:11]


def _prune(ctx: _Pass, allow_empty: bool) -> bool:
    """Stop and retire jobs whose action is no longer desired. Acts only on our inventory."""
    wanted = {a.key for a in ctx.desired.actions}
    orphans = [job for key, job in list(ctx.jobs.items()) if key not in wanted]
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


def _retire(ctx: _Pass, job: JobRecord, phase: Literal["removed", "stopped"],
            reason: str) -> None:
    """Stop a job's processes if any still run, then record it in its final phase."""
    final = replace(job.with_identity(None), phase=phase, ready=False, reason=reason,
                    next_start_at=None, blocked_by=())
    proc = ctx.observed.alive(job.identity)
    if proc is not None:
        ctx.emit(Stop(target=proc.identity, scope="session", signal=_stop_signal(job),
                      timeout=float(job.spec.get("stop_timeout", 10.0)), reason=reason,
                      job=final, pidfile=job.spec.get("pidfile"), cmd=_cmd_of(proc)))
        for path in job.spec.get("sockets", []):
            ctx.emit(Cleanup(path, f"socket of stopped {job.service}.{job.action}"))
    else:
        ctx.emit(Record(final, phase, reason))


def _plan_action(ctx: _Pass, action: DesiredAction) -> None:
    job = ctx.jobs.get(action.key)
    if job is not None and job.generation != action.generation:
        _retire(ctx, job, "removed",
                f"spec changed (generation {job.generation[:8]} -> {action.generation[:8]})")
        job = None
    if job is None:
        job = _new_job(ctx, action)
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
        spec=action.record_spec(), created_at=ctx.now, updated_at=ctx.now,
        reason="new job",
    )
    ctx.jobs[action.key] = job
    return job


def _forget_previous_boot(ctx: _Pass, job: JobRecord) -> JobRecord:
    fresh = replace(job.with_identity(None), phase="pending", ready=False, started_at=None,
                    last_exit_at=job.started_at or ctx.now, last_exit_code=None,
                    reason="record from a previous boot: starting fresh")
    ctx.emit(Record(fresh, "stale-record", fresh.reason))
    return fresh


# --- long-running processes -------------------------------------------------------------------


def _plan_process(ctx: _Pass, action: DesiredAction, job: JobRecord) -> None:
    proc = ctx.observed.alive(job.identity)
    if proc is not None and not _unhealthy(ctx, action, job):
        _keep_running(ctx, job)
        return
    enrollment = _adoptable(ctx, job)
    if enrollment is not None:
        ctx.emit(Adopt(_adopted(job, enrollment, ctx),
                       "enrolled by us for this job and still running"))
        return
    if job.identity is not None:
        job = _record_process_exit(ctx, action, job, unhealthy=proc is not None)
        if job.phase == "stopped":
            return
    if _waiting(ctx, job):
        return
    _start(ctx, action, job)


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
    has_probe = bool(job.spec.get("health"))
    ready = job.ready or not has_probe or ctx.observed.ready.get(job.id, False)
    phase = "running" if ready else "starting"
    if (job.phase, job.ready, job.blocked_by) == (phase, ready, ()):
        return
    updated = replace(job, phase=phase, ready=ready, blocked_by=(), next_start_at=None,
                      reason="ready" if ready else "waiting for its health check")
    ctx.emit(Record(updated, "ready" if ready else "running", updated.reason))


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


def _record_process_exit(ctx: _Pass, action: DesiredAction, job: JobRecord, *,
                         unhealthy: bool = False) -> JobRecord:
    """The job's process is gone (or is unhealthy and must go): stop what is left of its
    session, record how it ended and decide when it comes back."""
    exit_code = None if unhealthy else _exit_code(ctx.observed.exits.get(job.pid or -1),
                                                  job.identity)
    lived = ctx.now - job.started_at if job.started_at is not None else 0.0
    reset = lived >= action.spec.backoff.reset_after
    failures = 1 if reset else job.consecutive_failures + 1
    failure_class = ("unhealthy" if unhealthy
                     else "crash-after-ready" if _had_started(action, job, lived)
                     else "crash-before-ready")
    policy = action.spec.effective_restart
    clean_exit = exit_code == 0
    why = (f"unhealthy: {ctx.observed.failing.get(job.id, 0)} health checks failed in a row"
           if unhealthy else "sweep what is left of the exited run's session")
    ctx.emit(Stop(target=job.identity, scope="session", signal=action.stop_signal,  # type: ignore[arg-type]
                  timeout=action.spec.stop.timeout, reason=why, pidfile=action.pidfile,
                  cmd=command_line(action.argv) if unhealthy else ""))
    base = replace(job.with_identity(None), last_exit_code=exit_code, last_exit_at=ctx.now,
                   ready=False, blocked_by=(), updated_at=ctx.now)
    if policy == "never" or (policy == "on-failure" and clean_exit):
        stopped = replace(base, phase="stopped", consecutive_failures=0,
                          reason=f"{_exit_text(exit_code)}; restart={policy}")
        ctx.emit(Record(stopped, "exit", stopped.reason))
        return stopped
    if clean_exit and reset:
        failures = 0
    delay = restart_delay(max(failures, 1), action.spec.backoff, job.id) if failures else 0.0
    what = "stopped as unhealthy" if unhealthy else _exit_text(exit_code)
    if delay > 0:
        waiting = replace(base, phase="backoff", consecutive_failures=failures,
                          failure_class=failure_class, next_start_at=ctx.now + delay,
                          reason=f"crash-loop ({failure_class}, {what})")
        ctx.emit(Record(waiting, "backoff", f"{waiting.reason}, next start in {delay:.1f}s"))
        return waiting
    due = replace(base, phase="pending", consecutive_failures=failures,
                  failure_class=None if clean_exit else failure_class,
                  next_start_at=None, reason=f"{what}; restarting")
    ctx.emit(Record(due, "exit", due.reason))
    return due


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
            ctx.emit(Record(replace(job, phase="running", reason="running"), "running",
                            "running"))
        return
    if job.identity is not None:
        job = _record_oneshot_exit(ctx, action, job)
        if job.phase == "succeeded":
            return
    if _waiting(ctx, job):
        return
    _start(ctx, action, job)


def _record_oneshot_exit(ctx: _Pass, action: DesiredAction, job: JobRecord) -> JobRecord:
    code = _exit_code(ctx.observed.exits.get(job.pid or -1), job.identity)
    base = replace(job.with_identity(None), last_exit_code=code, last_exit_at=ctx.now,
                   updated_at=ctx.now)
    if code == 0:
        done = replace(base, phase="succeeded", consecutive_failures=0, failure_class=None,
                       reason="exited 0")
        ctx.emit(Record(done, "succeeded", done.reason))
        return done
    failures = job.consecutive_failures + 1
    delay = retry_delay(failures, action.spec.backoff, job.id)
    failed = replace(base, phase="backoff", consecutive_failures=failures,
                     failure_class="exit-nonzero", next_start_at=ctx.now + delay,
                     reason=f"one-shot failed ({_exit_text(code)})")
    ctx.emit(Record(failed, "backoff", f"{failed.reason}, retry in {delay:.1f}s"))
    return failed


# --- starting: dependencies, pidfile, resources, spawn -----------------------------------------


def _start(ctx: _Pass, action: DesiredAction, job: JobRecord) -> None:
    waiting_for = [dep for dep in action.spec.after if not _satisfied(ctx, action.service, dep)]
    if waiting_for:
        reason = "waiting for " + ", ".join(waiting_for)
        if job.phase != "pending" or job.reason != reason:
            updated = replace(job, phase="pending", reason=reason)
            ctx.emit(Record(updated, "pending", reason))
        return
    if action.pidfile is not None:
        _check_pidfile(ctx, action, job)
    blocked = _claim_resources(ctx, action)
    if blocked:
        _block(ctx, action, job, blocked)
        return
    restart = job.started_at is not None  # it ran in this boot: this start is a restart
    had_log = restart or job.last_exit_at is not None
    spawned = replace(
        job, phase="starting", restart_count=job.restart_count + (1 if restart else 0),
        blocked_by=(), next_start_at=None, ready=False, updated_at=ctx.now,
        reason="restart" if restart else "start")
    ctx.emit(Spawn(spawned, action, rotate_log=had_log,
                   reason=f"{'restart' if restart else 'start'} ({job.reason or 'new job'})"))


def _satisfied(ctx: _Pass, service: str, dep: str) -> bool:
    job = ctx.jobs.get((service, dep))
    if job is None:
        return False
    if not job.process:
        return job.phase == "succeeded"
    return job.phase == "running" and job.ready and ctx.observed.alive(job.identity) is not None


def _check_pidfile(ctx: _Pass, action: DesiredAction, job: JobRecord) -> None:
    """Singleton lifecycle: a live foreign instance named by our pidfile is stopped; a pidfile
    naming an unrelated process is stale and that process is never touched."""
    state = ctx.observed.pidfiles.get(action.pidfile or "")
    if state is None or state.proc is None:
        return
    proc = state.proc
    if ctx.being_stopped(proc) or _owned_by_job(ctx, proc):
        return
    if action.spec.singleton and _plausible_instance(ctx, action, proc):
        ctx.emit(Stop(target=proc.identity, scope="process", signal=action.stop_signal,
                      timeout=action.spec.stop.timeout, cmd=_cmd_of(proc),
                      reason=f"singleton: pidfile names a live instance of this action "
                             f"({proc.describe()}) that is not ours"))
        return
    ctx.notes.append(f"{action.service}.{action.name}: pidfile {action.pidfile} names "
                     f"unrelated {proc.describe()}; stale, will be overwritten, not touched")


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


def _claim_resources(ctx: _Pass, action: DesiredAction) -> list[BlockedBy]:
    """Clean stale sockets and stop reclaimable holders; return what still blocks the start."""
    reclaim = action.spec.singleton or action.spec.kill_others
    blocked: list[BlockedBy] = []
    for path in action.sockets:
        blocked += _claim_socket(ctx, action, path, reclaim)
    for port in action.spec.tcp_ports:
        state = ctx.observed.ports.get(port)
        if state is not None and state.listening:
            blocked += _claim_holders(ctx, action, f":{port}", state.holders, reclaim)
    return blocked


def _claim_socket(ctx: _Pass, action: DesiredAction, path: str, reclaim: bool) -> list[BlockedBy]:
    state = ctx.observed.sockets.get(path)
    if state is None or state.kind == "absent":
        return []
    if state.kind == "stale":
        ctx.emit(Cleanup(path, "stale socket: nobody listens on it"))
        return []
    if state.kind == "not-socket":
        return [BlockedBy(path, None, "path exists and is not a socket; not removed")]
    blocked = _claim_holders(ctx, action, path, state.holders, reclaim)
    if not blocked:
        ctx.emit(Cleanup(path, "socket left by the stopped holder"))
    return blocked


def _claim_holders(ctx: _Pass, action: DesiredAction, resource: str,
                   holders: tuple[ProcInfo, ...], reclaim: bool) -> list[BlockedBy]:
    if not holders:
        return [BlockedBy(resource, None, "listening, owner not visible to us")]
    blocked: list[BlockedBy] = []
    for proc in holders:
        if ctx.being_stopped(proc):
            continue
        owner = _owning_job(ctx, proc)
        if owner is not None:
            blocked.append(BlockedBy(resource, proc.pid,
                                     f"{_cmd_of(proc)} (job {owner.service}.{owner.action})"))
        elif reclaim:
            ctx.emit(Stop(target=proc.identity, scope="process", signal=action.stop_signal,
                          timeout=action.spec.stop.timeout, cmd=_cmd_of(proc),
                          reason=f"holds {resource} declared by {action.service}.{action.name}"
                                 f" ({'singleton' if action.spec.singleton else 'kill_others'})"))
        else:
            blocked.append(BlockedBy(resource, proc.pid, _cmd_of(proc)))
    return blocked


def _owning_job(ctx: _Pass, proc: ProcInfo) -> JobRecord | None:
    for job in ctx.jobs.values():
        in_its_session = job.pid is not None and job.pid in (proc.pid, proc.session)
        if in_its_session and ctx.observed.alive(job.identity) is not None:
            return job
    return None


def _block(ctx: _Pass, action: DesiredAction, job: JobRecord, blocked: list[BlockedBy]) -> None:
    attempts = job.consecutive_failures + 1 if job.phase == "blocked" else 1
    delay = retry_delay(attempts, action.spec.backoff, job.id)
    first = blocked[0]
    holder = f"pid {first.pid} ({first.cmd})" if first.pid else first.cmd
    reason = f"blocked: {first.resource} held by {holder}"
    updated = replace(job, phase="blocked", blocked_by=tuple(blocked),
                      failure_class="bind-conflict", consecutive_failures=attempts,
                      next_start_at=ctx.now + delay, reason=reason, updated_at=ctx.now)
    ctx.emit(Record(updated, "blocked", f"{reason}, retry in {delay:.1f}s"))


def _cmd_of(proc: ProcInfo | None) -> str:
    return proc.command() if proc is not None else ""


def _stop_signal(job: JobRecord) -> int:
    name = str(job.spec.get("stop_signal", "SIGTERM"))
    try:
        return int(signal.Signals[name])
    except KeyError:
        return int(signal.SIGTERM)


def plan_down(observed: Observed, records: list[JobRecord], now: float,
              targets: frozenset[tuple[str, str | None]] | None = None) -> Plan:
    """Stop the targeted jobs (all when None) and keep them stopped until their spec changes
    or an operator restarts them, like `systemctl stop`. `targets` holds (service, action)
    pairs as in `plan_restart`, action None meaning the whole service."""
    live = [r for r in records if r.phase not in ("removed", "stopped", "succeeded")]
    ctx = _Pass(Desired(actions=()), observed, now, {}, {r.key: r for r in live})
    for job in live:
        if targets is None or _targeted(job, targets):
            _retire(ctx, job, "stopped", "stopped by operator (reconcile down)")
    return Plan(tuple(ctx.steps), tuple(ctx.notes))


def plan_restart(observed: Observed, records: list[JobRecord], now: float,
                 targets: frozenset[tuple[str, str | None]]) -> Plan:
    """Stop the named jobs and mark them due, so the next pass starts them again at once.

    `targets` holds (service, action) pairs, action None meaning the whole service. A manual
    restart counts in `restart_count` (it happens at the spawn), and clears any backoff: an
    operator asking for a restart wants it now. A one-shot runs again.
    """
    ctx = _Pass(Desired(actions=()), observed, now, {}, {})
    for job in records:
        if job.phase == "removed" or not _targeted(job, targets):
            continue
        due = replace(job.with_identity(None), phase="pending", ready=False, blocked_by=(),
                      next_start_at=None, consecutive_failures=0,
                      reason="restarted by operator (reconcile restart)")
        proc = observed.alive(job.identity)
        if proc is not None:
            ctx.emit(Stop(target=proc.identity, scope="session", signal=_stop_signal(job),
                          timeout=float(job.spec.get("stop_timeout", 10.0)), reason=due.reason,
                          job=due, pidfile=job.spec.get("pidfile"), cmd=_cmd_of(proc)))
        else:
            ctx.emit(Record(due, "restart", due.reason))
    return Plan(tuple(ctx.steps), tuple(ctx.notes))


def _targeted(job: JobRecord, targets: frozenset[tuple[str, str | None]]) -> bool:
    return (job.service, job.action) in targets or (job.service, None) in targets
