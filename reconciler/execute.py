"""Steps → effects on the host, and the records that say what happened.

Every step is idempotent and re-checks the host right before it acts (the host layer verifies
identities through a pidfd before each signal, and re-proves a socket stale before unlinking
it), because the snapshot `plan` used may be a few milliseconds old. Execution never decides
*what* to do; it only reports what it did, as job records and events for `state`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler import logs
from reconciler.backoff import retry_delay
from reconciler.host import pidfile, procs, sockets
from reconciler.host.identity import Identity
from reconciler.host.spawn import Children, SpawnError, create_logs
from reconciler.plan import Adopt, Cleanup, Record, Spawn, Step, Stop
from reconciler.redact import redact_argv
from reconciler.state import enrollment
from reconciler.state.records import Enrollment, Event, JobRecord

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a batch of steps did: the records to persist, in order."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def job(self, job: JobRecord, kind: str, reason: str, **detail: object) -> None:
        self.jobs[job.id] = job
        self.events.append(Event(at=job.updated_at or time.time(), kind=kind, reason=reason,
                                 job_id=job.id, service=job.service, action=job.action,
                                 detail=dict(detail)))

    def event(self, kind: str, reason: str, at: float, **detail: object) -> None:
        self.events.append(Event(at=at, kind=kind, reason=reason, detail=dict(detail)))


class Executor:
    """Carries out steps. Owns nothing but the handle on our children and the run dir."""

    def __init__(self, run_dir: Path, children: Children,
                 clock: Callable[[], float] = time.time) -> None:
        self.run_dir = run_dir
        self.children = children
        self.clock = clock

    def run(self, steps: Sequence[Step]) -> Outcome:
        outcome = Outcome()
        new_logs = [s.action.log_path for s in steps if isinstance(s, Spawn) and not s.rotate_log]
        if len(new_logs) > 1:  # many new jobs (start-up, a new spec file): create in parallel
            create_logs(new_logs)
        for step in steps:
            handler = getattr(self, f"_{type(step).__name__.lower()}")
            handler(step, outcome)
        return outcome

    def _record(self, step: Record, out: Outcome) -> None:
        if step.job.identity is None:
            enrollment.unenroll(self.run_dir, step.job.id)  # its process is gone for good
        out.job(replace(step.job, updated_at=self.clock()), step.kind, step.reason)

    def _stop(self, step: Stop, out: Outcome) -> None:
        stop = procs.stop_session if step.scope == "session" else procs.stop_process
        result = stop(step.target, step.signal, step.timeout)
        if step.pidfile:
            pidfile.remove_pidfile(step.pidfile, step.target.pid)
        detail = {"pid": step.target.pid, "cmd": step.cmd, "signalled": result.signalled,
                  "killed": result.killed, "survivors": result.survivors}
        if step.job is not None:
            enrollment.unenroll(self.run_dir, step.job.id)
            out.job(replace(step.job, updated_at=self.clock()), "kill", step.reason, **detail)
        elif result.signalled or result.killed:
            out.event("kill", step.reason, self.clock(), **detail)
        if result.survivors:
            log.error("pids %s survived SIGKILL while %s", result.survivors, step.reason)

    def _cleanup(self, step: Cleanup, out: Outcome) -> None:
        if sockets.remove_stale_socket(step.path):
            out.event("cleanup", step.reason, self.clock(), path=step.path)

    def _adopt(self, step: Adopt, out: Outcome) -> None:
        job = replace(step.job, updated_at=self.clock())
        if job.pid is not None and job.spec.get("pidfile"):
            pidfile.write_pidfile(job.spec["pidfile"], job.pid)
        out.job(job, "adopt", step.reason, pid=job.pid)

    def _spawn(self, step: Spawn, out: Outcome) -> None:
        action, now = step.action, self.clock()
        log_path = Path(action.log_path)
        if step.rotate_log:
            logs.rotate(log_path, action.spec.logs.keep)

        def enroll(identity: Identity) -> None:
            """Proof of ownership, on disk before the command runs (see host/spawn.py)."""
            enrollment.enroll(self.run_dir, Enrollment(
                job_id=step.job.id, service=action.service, action=action.name,
                generation=action.generation, identity=identity, cmdline=action.argv,
                enrolled_at=now))
            if action.pidfile:
                pidfile.write_pidfile(action.pidfile, identity.pid)

        try:
            identity = self.children.spawn(list(action.argv), cwd=action.cwd,
                                           env=dict(action.env), log_path=log_path,
                                           enroll=enroll)
        except SpawnError as err:
            self._spawn_failed(step, str(err), now, out)
            return
        # Not ready until a later pass sees it alive (or its probe passes): a process that
        # dies at once crashed *before* it was ready.
        phase = "starting" if action.spec.health else "running"
        job = replace(step.job.with_identity(identity), phase=phase, ready=False,
                      started_at=now, updated_at=now, reason=step.reason)
        out.job(job, "spawn", step.reason, pid=identity.pid, argv=redact_argv(action.argv))

    def _spawn_failed(self, step: Spawn, error: str, now: float, out: Outcome) -> None:
        failures = step.job.consecutive_failures + 1
        delay = retry_delay(failures, step.action.spec.backoff, step.job.id)
        job = replace(step.job.with_identity(None), phase="backoff", failure_class="spawn-error",
                      consecutive_failures=failures, next_start_at=now + delay,
                      updated_at=now, reason=f"spawn-error: {error}")
        out.job(job, "backoff", f"{job.reason}, retry in {delay:.1f}s")
