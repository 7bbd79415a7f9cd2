"""The controller's memory, as plain data: jobs, events, and last-good spec files.

These are what `plan` reads (together with the spec and the host snapshot) and what
`execute` writes back. They live in SQLite (see `store.py`), but nothing here knows that.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from reconciler.identity import Identity

Phase = Literal[
    "pending", "starting", "running", "succeeded", "backoff",
    "blocked", "stopping", "stopped", "removed",
]
PHASES: tuple[str, ...] = (
    "pending", "starting", "running", "succeeded", "backoff",
    "blocked", "stopping", "stopped", "removed",
)

# What a job becomes once a stop in progress has finished (see plan._continue_stop).
# "succeeded" / "retry": a one-shot that exited (0 / not 0) while processes it started live on.
StopThen = Literal["removed", "stopped", "restart", "succeeded", "retry"]

# Why a run ended badly; shown in `status` so operators see the class of trouble at a glance.
FailureClass = Literal[
    "spawn-error", "bind-conflict", "crash-before-ready", "crash-after-ready",
    "unhealthy", "exit-nonzero", "lost",
]


@dataclass(frozen=True, slots=True)
class BlockedBy:
    """A foreign process holding one of our declared resources."""

    resource: str  # "/run/web/api.sock" or ":8080"
    pid: int | None  # None: listening, but the owner is invisible to us
    cmd: str

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "cmd": self.cmd, "resource": self.resource}


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One action run inside one generation of its service.

    The id is stable for the job's whole life: every respawn reuses it and bumps
    `restart_count`. `spec` is the action's config (JSON-able dict) at this generation, kept so a
    job can still be stopped correctly after its service vanished from the specs dir.
    """

    id: str
    service: str
    action: str
    generation: str
    phase: Phase = "pending"
    process: bool = True
    pid: int | None = None
    boot_id: str | None = None
    starttime_ticks: int | None = None
    restart_count: int = 0
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    started_at: float | None = None
    next_start_at: float | None = None
    consecutive_failures: int = 0
    failure_class: FailureClass | None = None
    ready: bool = False
    health: str | None = None
    reason: str = ""
    blocked_by: tuple[BlockedBy, ...] = ()
    spec: dict[str, Any] = field(default_factory=dict)
    created_at: float | None = None
    updated_at: float | None = None
    # A stop in progress (never waited for inside a pass): when to escalate to SIGKILL, and
    # what the job becomes once its processes are gone. On a `stopping` job it is the job's
    # own stop; on a waiting one, the stop of a foreign process standing in its way.
    stop_deadline: float | None = None
    stop_then: StopThen | None = None
    # Derived once, at construction: every pass asks for the identity and key of every job
    # several times (building the identity each time was 18 % of a pass at 1000 jobs).
    # Not columns: the store reads and writes the init fields only.
    identity: Identity | None = field(init=False, repr=False, compare=False)
    key: tuple[str, str] = field(init=False, repr=False, compare=False)  # (service, action)

    def __post_init__(self) -> None:
        known = self.pid is not None and self.boot_id is not None \
            and self.starttime_ticks is not None
        identity = Identity(self.boot_id, self.pid, self.starttime_ticks) if known else None  # type: ignore[arg-type]
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "key", (self.service, self.action))

    def with_identity(self, identity: Identity | None) -> JobRecord:
        if identity is None:
            return replace(self, pid=None, boot_id=None, starttime_ticks=None)
        return replace(
            self, pid=identity.pid, boot_id=identity.boot_id,
            starttime_ticks=identity.starttime_ticks,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the controller did or saw, and why. Append-only."""

    at: float
    kind: str
    reason: str
    job_id: str | None = None
    service: str | None = None
    action: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpecRecord:
    """The last version of a spec file that parsed and validated, and the current error."""

    file: str
    content: str | None  # last good content; None if the file never was good
    hash: str | None
    error: str | None  # current error text ("file:line:column: message"), None when good
    updated_at: float | None = None


@dataclass(frozen=True, slots=True)
class Enrollment:
    """Proof, written atomically at spawn, that a process is ours.

    It survives the controller's own crash between spawning and recording in SQLite, so a
    restarted controller can adopt what it can prove it started and nothing else.
    """

    job_id: str
    service: str
    action: str
    generation: str
    identity: Identity
    cmdline: tuple[str, ...]
    enrolled_at: float
