"""Steps → effects on the host, and the records that say what happened.

Every step is idempotent and re-checks the host right before it acts (the host layer verifies
identities through a pidfd before each signal, and re-proves a socket stale before unlinking
it), because the snapshot `plan` used may be a few milliseconds old. Execution never decides
*what* to do; it only reports what it did, as job records and events for `state`.

Nothing here waits for a process to exit (a stop only signals), and whatever goes wrong while
acting for one job (a pidfile that cannot be written, a failed spawn, an unexpected error) is
recorded as that job's failure: it never fails the pass, so every other job keeps healing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import assert_never

from reconciler import logs
from reconciler.backoff import retry_delay
from reconciler.host import pidfile, procs, sockets
from reconciler.host.markers import HostMarkers
from reconciler.host.members import job_processes
from reconciler.host.pidfile import PidfileRefused
from reconciler.host.spawn import Children, SpawnError
from reconciler.identity import Identity
from reconciler.observed import ProcInfo
from reconciler.plan import (
    MIN_START_INTERVAL,
    Adopt,
    Cleanup,
    Kill,
    Spawn,
    Step,
    UpdateJob,
    blocked_retry,
)
from reconciler.redact import redact_argv
from reconciler.state import enrollment
from reconciler.state.records import BlockedBy, Enrollment, Event, JobRecord
from reconciler.text import printable

log = logging.getLogger(__name__)

# Starts in flight at once (see Executor._spawn_all). A start mostly waits (vfork until the
# child has exec'ed, the disk for four new inodes), so on 2 cores 8 overlap better than 4
# (docs/benchmarks.md, Findings); the threads exist only while a batch runs.
_SPAWN_WORKERS = 8


@dataclass
class Outcome:
    """What a batch of steps did: the records to persist, in order."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    # the jobs whose enrollment file these steps wrote or removed (or tried to): only those
    # need reading again (most steps of a pass, e.g. marking a job ready, touch none)
    enrollments: set[str] = field(default_factory=set)
    # of those, the files written whole and not removed since, as written: what reading them
    # back would give (a thousand reads after a thousand starts)
    enrolled: dict[str, Enrollment] = field(default_factory=dict)

    def job(self, job: JobRecord, kind: str, reason: str, **detail: object) -> None:
        """A job's new record, and the event that says why."""
        self.jobs[job.id] = job
        self.job_event(job, kind, reason, job.updated_at or time.time(), **detail)

    def job_event(self, job: JobRecord, kind: str, reason: str, at: float,
                  **detail: object) -> None:
        """An event about a job whose record does not change."""
        self.events.append(Event(at=at, kind=kind, reason=reason, job_id=job.id,
                                 service=job.service, action=job.action, detail=dict(detail)))

    def event(self, kind: str, reason: str, at: float, **detail: object) -> None:
        self.events.append(Event(at=at, kind=kind, reason=reason, detail=dict(detail)))


class Executor:
    """Carries out steps. Owns nothing but the handle on our children and the run dir."""

    def __init__(self, run_dir: Path, children: Children,
                 clock: Callable[[], float] = time.time, *,
                 markers: HostMarkers | None = None) -> None:
        self.run_dir = run_dir
        self.markers = markers if markers is not None else HostMarkers()
        self.children = children
        self.clock = clock
        self._members: dict[str, tuple[ProcInfo, ...]] = {}  # of the jobs this batch stops
        self._enrollments: set[str] = set()  # see Outcome.enrollments
        self._enrolled: dict[str, Enrollment] = {}  # see Outcome.enrolled

    def run(self, steps: Sequence[Step]) -> Outcome:
        outcome = Outcome()
        self._members = self._members_of_killed_jobs(steps)
        # filled by _enroll/_unenroll, also on threads
        self._enrollments, self._enrolled = outcome.enrollments, outcome.enrolled
        for batch in _batches(steps):
            if isinstance(batch, tuple):
                self._spawn_all(batch, outcome)
                continue
            try:
                self._carry_out(batch, outcome)
            except Exception as err:  # one job's trouble must not fail the pass
                self._step_failed(batch, err, outcome)
        return outcome

    def _carry_out(self, step: Step, out: Outcome) -> None:
        match step:
            case Spawn():
                self._spawn(step, out)
            case Adopt():
                self._adopt(step, out)
            case Kill():
                self._kill(step, out)
            case Cleanup():
                self._cleanup(step, out)
            case UpdateJob():
                self._update_job(step, out)
            case _:
                assert_never(step)

    def _step_failed(self, step: Step, err: Exception, out: Outcome) -> None:
        log.error("%s failed: %s", printable(step.describe()), err, exc_info=err)
        if isinstance(step, Spawn):
            self._spawn_failed(step, f"{type(err).__name__}: {err}", self.clock(), out)
            return
        job = getattr(step, "job", None)
        detail = {"step": step.describe(), "error": f"{type(err).__name__}: {err}"}
        if isinstance(job, JobRecord):
            out.job_event(job, "error", detail["error"], self.clock(), **detail)
        else:
            out.event("error", detail["error"], self.clock(), **detail)

    def _members_of_killed_jobs(self, steps: Sequence[Step]) -> dict[str, tuple[ProcInfo, ...]]:
        """Every process carrying the id of a job this batch signals, found in one walk over
        /proc for all of them (a daemonized child left the job's session, not its job)."""
        leaders = {s.job.id: s.target for s in steps
                   if isinstance(s, Kill) and s.scope == "session" and s.job is not None}
        if not leaders:
            return {}
        return job_processes(leaders, by_environ=leaders, markers=self.markers)

    def _spawn_all(self, steps: Sequence[Spawn], out: Outcome) -> None:
        """Start several jobs at once, recording them in plan order.

        Consecutive spawns are independent: `plan` starts an action only once what it waits
        for runs (or succeeded) in an earlier pass, and each action's conflict stops and
        cleanups come before its spawns. A start mostly waits (on the disk for a new log and
        its dir, on the kernel for the child's exec), so a few at a time overlap (what that
        saves at start-up: docs/benchmarks.md, Findings).
        """
        with _no_collection(), ThreadPoolExecutor(max_workers=_SPAWN_WORKERS,
                                                  thread_name_prefix="spawn") as pool:
            # each recorded as soon as it (and those before it) started, while the workers
            # start the rest: ~40 ms of a thousand starts' records no longer after the last
            for step, (now, result) in zip(steps, pool.map(self._start, steps), strict=True):
                self._record_start(step, now, result, out)

    def _update_job(self, step: UpdateJob, out: Outcome) -> None:
        if step.job.identity is None:
            self._unenroll(step.job.id)  # its process is gone for good
        if step.pidfile is not None:
            pidfile.remove_pidfile(*step.pidfile)
        out.job(replace(step.job, updated_at=self.clock()), step.kind, step.reason)

    def _kill(self, step: Kill, out: Outcome) -> None:
        """Signal and move on: the job is `stopping`, and a later pass escalates or records
        its end (see plan._continue_stop)."""
        if step.scope == "session" and step.job is not None:
            members = [m.identity for m in self._members.get(step.job.id, ())]
            result = procs.signal_job(step.target, members, step.signal)
        else:
            result = procs.signal_process(step.target, step.signal)
        detail = {"pid": step.target.pid, "cmd": step.cmd, "signal": step.signal,
                  "signalled": result.signalled, "refused": result.refused}
        if step.job is not None:
            out.job(replace(step.job, updated_at=self.clock()), "kill", step.reason, **detail)
        elif result.signalled:
            out.event("kill", step.reason, self.clock(), **detail)
        if result.refused:
            log.error("refused to signal protected pids %s while %s", result.refused,
                      printable(step.reason))

    def _cleanup(self, step: Cleanup, out: Outcome) -> None:
        if sockets.remove_stale_socket(step.path):
            out.event("cleanup", step.reason, self.clock(), path=step.path)

    def _adopt(self, step: Adopt, out: Outcome) -> None:
        job = replace(step.job, updated_at=self.clock())
        if step.kind == "daemonized" and job.identity is not None:
            # proof of ownership for the process the job now runs as, so that a restarted
            # controller adopts it instead of starting a second instance
            old = enrollment.read_enrollment(self.run_dir, job.id)
            self._enroll(Enrollment(
                job_id=job.id, service=job.service, action=job.action,
                generation=job.generation, identity=job.identity,
                cmdline=old.cmdline if old else job.spec.argv,
                enrolled_at=self.clock()))
        if job.pid is not None and job.spec.pidfile is not None:
            pidfile.write_pidfile(job.spec.pidfile, job.pid)
        out.job(job, step.kind, step.reason, pid=job.pid)

    def _spawn(self, step: Spawn, out: Outcome) -> None:
        self._record_start(step, *self._start(step), out)

    def _start(self, step: Spawn) -> tuple[float, Identity | SpawnError | PidfileRefused]:
        """The effects of a spawn, and nothing that touches the outcome (so several can run
        on worker threads): rotate the log, start behind the gate, enroll."""
        action, now = step.action, self.clock()
        log_path = Path(action.log_path)
        logs.rotate(log_path, action.spec.logs.keep, action.spec.logs.max_size)

        def enroll(identity: Identity) -> None:
            """Proof of ownership, on disk before the command runs (see host/spawn.py)."""
            self._enroll(Enrollment(
                job_id=step.job.id, service=action.service, action=action.name,
                generation=action.generation, identity=identity, cmdline=action.argv,
                enrolled_at=now))
            if action.pidfile:
                pidfile.write_pidfile(action.pidfile, identity.pid)

        try:
            return now, self.children.spawn(list(action.argv), cwd=action.cwd,
                                            env=dict(action.env), log_path=log_path,
                                            enroll=enroll, job_id=step.job.id,
                                            rlimits=action.rlimits)
        except (SpawnError, pidfile.PidfileRefused) as err:
            if isinstance(err, pidfile.PidfileRefused):
                self._unenroll(step.job.id)
            return now, err
        except OSError as err:  # e.g. the pidfile cannot be written: the command never ran
            self._unenroll(step.job.id)
            return now, SpawnError(f"{action.pidfile or log_path}: {err.strerror or err}")
        except Exception as err:  # a bug must cost this job a retry, not every job a pass
            log.exception("starting %s.%s failed", action.service, action.name)
            self._unenroll(step.job.id)
            return now, SpawnError(f"internal error: {type(err).__name__}: {err}")

    def _enroll(self, record: Enrollment) -> None:
        self._enrollments.add(record.job_id)  # first: a failed write is read back too
        self._enrolled.pop(record.job_id, None)
        enrollment.enroll(self.run_dir, record)
        self._enrolled[record.job_id] = record

    def _unenroll(self, job_id: str) -> None:
        self._enrollments.add(job_id)
        self._enrolled.pop(job_id, None)
        enrollment.unenroll(self.run_dir, job_id)

    def _record_start(self, step: Spawn, now: float,
                      result: Identity | SpawnError | PidfileRefused, out: Outcome) -> None:
        if isinstance(result, PidfileRefused):
            self._pidfile_refused(step, result, now, out)
            return
        if isinstance(result, SpawnError):
            self._spawn_failed(step, str(result), now, out)
            return
        job = replace(step.job.with_identity(result), started_at=now, updated_at=now)
        out.job(job, "spawn", step.reason, pid=result.pid, argv=redact_argv(step.action.argv))

    def _pidfile_refused(self, step: Spawn, err: PidfileRefused, now: float,
                         out: Outcome) -> None:
        """Something that is not our pidfile sits where the spec says it goes: never
        overwritten, so the job cannot start until an operator moves it. Blocked, looked at
        again like any blocked job (at most every BLOCKED_RECHECK_SECONDS)."""
        attempts, delay = blocked_retry(step.job, step.action)
        blocked = (BlockedBy(err.path, None, err.reason),)
        job = replace(_not_started(step), phase="blocked", failure_class="spawn-error",
                      consecutive_failures=attempts, next_start_at=now + delay,
                      blocked_by=blocked, updated_at=now, reason=f"blocked: {err}")
        out.job(job, "blocked", f"{job.reason}, retry in {delay:.1f}s")

    def _spawn_failed(self, step: Spawn, error: str, now: float, out: Outcome) -> None:
        failures = step.job.consecutive_failures + 1
        delay = max(retry_delay(failures, step.action.spec.backoff, step.job.id),
                    MIN_START_INTERVAL)
        job = replace(_not_started(step), phase="backoff", failure_class="spawn-error",
                      consecutive_failures=failures, next_start_at=now + delay,
                      updated_at=now, reason=f"spawn-error: {error}")
        out.job(job, "backoff", f"{job.reason}, retry in {delay:.1f}s")


def _not_started(step: Spawn) -> JobRecord:
    """The record of a start that did not happen: no process, and no restart counted (the
    next start that succeeds counts it once)."""
    return replace(step.job.with_identity(None), restart_count=step.restarts_before)


@contextlib.contextmanager
def _no_collection() -> Iterator[None]:
    """The cyclic collector held off while a batch of starts runs: a collection stops every
    thread (a full one took ~70 ms with a thousand parsed specs in memory, while eight starts
    and the children waiting at their gates stood still), and a batch makes almost no cycles.
    Whatever it leaves is collected at the next allocation threshold after it."""
    if not gc.isenabled():  # someone else holds it off; leave it as we found it
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _batches(steps: Sequence[Step]) -> list[Step | tuple[Spawn, ...]]:
    """Runs of two or more consecutive spawns form one batch (a tuple, started together);
    every other step stands alone."""
    batches: list[Step | tuple[Spawn, ...]] = []
    run: list[Spawn] = []
    for step in (*steps, None):
        if isinstance(step, Spawn):
            run.append(step)
            continue
        if len(run) > 1:
            batches.append(tuple(run))
        else:
            batches.extend(run)
        run = []
        if step is not None:
            batches.append(step)
    return batches
