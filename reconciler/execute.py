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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from reconciler import logs
from reconciler.backoff import retry_delay
from reconciler.host import pidfile, procs, sockets
from reconciler.host.identity import Identity
from reconciler.host.spawn import Children, SpawnError
from reconciler.plan import Adopt, Cleanup, Record, Spawn, Step, Stop
from reconciler.redact import redact_argv
from reconciler.state import enrollment
from reconciler.state.records import Enrollment, Event, JobRecord

log = logging.getLogger(__name__)

_SPAWN_WORKERS = 4  # starts in flight at once (see Executor._spawn_all)


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
        for batch in _batches(steps):
            if len(batch) > 1:
                self._spawn_all(batch, outcome)  # type: ignore[arg-type]
                continue
            handler = getattr(self, f"_{type(batch[0]).__name__.lower()}")
            handler(batch[0], outcome)
        return outcome

    def _spawn_all(self, steps: Sequence[Spawn], out: Outcome) -> None:
        """Start several jobs at once, recording them in plan order.

        Consecutive spawns are independent: `plan` starts an action only once what it waits
        for runs (or succeeded) in an earlier pass, and each action's conflict stops and
        cleanups come before its spawns. A start mostly waits (on the disk for a new log and
        its dir, on the kernel for the child's exec), so a few at a time overlap: at start-up
        with hundreds of new jobs this halves the pass.
        """
        with ThreadPoolExecutor(max_workers=_SPAWN_WORKERS,
                                thread_name_prefix="spawn") as pool:
            started = list(pool.map(self._start, steps))
        for step, (now, result) in zip(steps, started, strict=True):
            self._record_start(step, now, result, out)

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
        self._record_start(step, *self._start(step), out)

    def _start(self, step: Spawn) -> tuple[float, Identity | SpawnError]:
        """The effects of a spawn, and nothing that touches the outcome (so several can run
        on worker threads): rotate the log, start behind the gate, enroll."""
        action, now = step.action, self.clock()
        log_path = Path(action.log_path)
        if step.rotate_log:
            logs.rotate(log_path, action.spec.logs.keep, action.spec.logs.max_size)

        def enroll(identity: Identity) -> None:
            """Proof of ownership, on disk before the command runs (see host/spawn.py)."""
            enrollment.enroll(self.run_dir, Enrollment(
                job_id=step.job.id, service=action.service, action=action.name,
                generation=action.generation, identity=identity, cmdline=action.argv,
                enrolled_at=now))
            if action.pidfile:
                pidfile.write_pidfile(action.pidfile, identity.pid)

        try:
            return now, self.children.spawn(list(action.argv), cwd=action.cwd,
                                            env=dict(action.env), log_path=log_path,
                                            enroll=enroll, job_id=step.job.id)
        except SpawnError as err:
            return now, err

    def _record_start(self, step: Spawn, now: float, result: Identity | SpawnError,
                      out: Outcome) -> None:
        if isinstance(result, SpawnError):
            self._spawn_failed(step, str(result), now, out)
            return
        # Not ready until a later pass sees it alive (or its probe passes): a process that
        # dies at once crashed *before* it was ready.
        phase = "starting" if step.action.spec.health else "running"
        job = replace(step.job.with_identity(result), phase=phase, ready=False,
                      started_at=now, updated_at=now, reason=step.reason)
        out.job(job, "spawn", step.reason, pid=result.pid, argv=redact_argv(step.action.argv))

    def _spawn_failed(self, step: Spawn, error: str, now: float, out: Outcome) -> None:
        failures = step.job.consecutive_failures + 1
        delay = retry_delay(failures, step.action.spec.backoff, step.job.id)
        job = replace(step.job.with_identity(None), phase="backoff", failure_class="spawn-error",
                      consecutive_failures=failures, next_start_at=now + delay,
                      updated_at=now, reason=f"spawn-error: {error}")
        out.job(job, "backoff", f"{job.reason}, retry in {delay:.1f}s")


def _batches(steps: Sequence[Step]) -> list[list[Step]]:
    """Runs of consecutive spawns form one batch; every other step is a batch of its own."""
    batches: list[list[Step]] = []
    for step in steps:
        if isinstance(step, Spawn) and batches and isinstance(batches[-1][-1], Spawn):
            batches[-1].append(step)
        else:
            batches.append([step])
    return batches
