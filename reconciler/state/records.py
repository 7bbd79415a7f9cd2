"""The controller's memory, as plain data: jobs, events, and last-good spec files.

These are what `plan` reads (together with the spec and the host snapshot) and what
`execute` writes back. They live in SQLite (see `store.py`), but nothing here knows that.

Immutable either way: frozen dataclasses where code relies on what only a dataclass has
(`dataclasses.replace` of a `JobRecord` or an `Event`, `fields(JobRecord)` for the store's
columns), named tuples for the rest; `BlockedBy`, `Anomaly` and `ControllerFacts` are
defined in `state/basic.py` (what `reconcile status` imports instead of this module) and
re-exported here. Every process that reads the
state builds these classes at import, and a frozen dataclass costs 0.5–2 ms to build (its
methods are generated and compiled), a named tuple a tenth of that (`reconcile status`,
issue 13; figures in docs/benchmarks.md).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

from reconciler.identity import Identity
from reconciler.spec.defaults import DEFAULT_LOGS_KEEP, DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT
from reconciler.state.basic import Anomaly, BlockedBy, ControllerFacts

__all__ = ["Anomaly", "BlockedBy", "ControllerFacts", "Enrollment", "EnvFiles", "Event",
           "FailureClass", "JobRecord", "JobSpec", "Phase", "Sample", "SpecRecord", "StopThen"]

Phase = Literal[
    "pending", "starting", "running", "succeeded", "backoff",
    "blocked", "stopping", "stopped", "removed",
]

# What a job becomes once a stop in progress has finished (see plan._continue_stop).
# "succeeded" / "retry": a one-shot that exited (0 / not 0) while processes it started live on.
StopThen = Literal["removed", "stopped", "restart", "succeeded", "retry"]

# Why a run ended badly; shown in `status` so operators see the class of trouble at a glance.
FailureClass = Literal[
    "spawn-error", "bind-conflict", "crash-before-ready", "crash-after-ready",
    "unhealthy", "exit-nonzero", "memory-limit",
]


class JobSpec(NamedTuple):
    """What a job must remember of its action to be stopped and cleaned up correctly after
    its service vanished from the specs dir (and by a controller that never saw the spec).

    Stored as JSON in the job's row. Reading is tolerant: a key from an older version that is
    missing takes its default, one from a newer version is ignored, a value of the wrong type
    falls back to the default (see `from_dict`), so an old or damaged database still opens.
    """

    argv: tuple[str, ...] = ()
    pidfile: str | None = None
    sockets: tuple[str, ...] = ()
    tcp_ports: tuple[int, ...] = ()
    stop_signal: str = DEFAULT_STOP_SIGNAL
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    log_path: str | None = None
    health: bool = False  # it has a health probe: not ready until the probe passes once
    keep_logs: int = DEFAULT_LOGS_KEEP
    # `limits.max_rss` in bytes (None: no limit): the planner restarts a job over it from
    # its record, so a limit holds for the generation that was started with it.
    max_rss: int | None = None

    @property
    def stop_signal_number(self) -> int:
        """The stop signal as a number; SIGTERM for a name this Python does not know."""
        try:
            return int(signal.Signals[self.stop_signal])
        except KeyError:
            return int(signal.SIGTERM)

    def to_dict(self) -> dict[str, Any]:
        return {name: _jsonable(getattr(self, name)) for name in self._fields}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> JobSpec:
        default = cls()
        return cls(
            argv=_strings(raw.get("argv"), default.argv),
            pidfile=_optional_str(raw.get("pidfile")),
            sockets=_strings(raw.get("sockets"), default.sockets),
            tcp_ports=tuple(p for p in _items(raw.get("tcp_ports"))
                            if isinstance(p, int) and not isinstance(p, bool)),
            stop_signal=_str(raw.get("stop_signal"), default.stop_signal),
            stop_timeout=_number(raw.get("stop_timeout"), default.stop_timeout),
            log_path=_optional_str(raw.get("log_path")),
            health=bool(raw.get("health", default.health)),
            keep_logs=int(_number(raw.get("keep_logs"), default.keep_logs)),
            max_rss=_positive_int(raw.get("max_rss")),
        )


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _items(value: object) -> tuple[object, ...]:
    return tuple(value) if isinstance(value, list | tuple) else ()


def _strings(value: object, default: tuple[str, ...]) -> tuple[str, ...]:
    items = _items(value)
    strings = tuple(i for i in items if isinstance(i, str))
    return strings if items and len(strings) == len(items) else default


def _str(value: object, default: str) -> str:
    return value if isinstance(value, str) else default


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _positive_int(value: object) -> int | None:
    """A byte count, or None for anything else (absent in an older database, damaged)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def _number(value: object, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One action run inside one generation of its service.

    The id is stable for the job's whole life: every respawn reuses it and bumps
    `restart_count`. `spec` is what the job keeps of its action's config at this generation.
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
    spec: JobSpec = field(default_factory=JobSpec)
    created_at: float | None = None
    updated_at: float | None = None
    # A stop in progress (never waited for inside a pass): when to escalate to SIGKILL, and
    # what the job becomes once its processes are gone. On a `stopping` job it is the job's
    # own stop; on a waiting one, the stop of a foreign process standing in its way.
    stop_deadline: float | None = None
    stop_then: StopThen | None = None
    # The specs dir's revision when this job's generation was first started (None: not
    # known, e.g. recorded before revisions were, or no git and no --revision label).
    revision: str | None = None
    # Derived once, at construction: every pass asks for the identity and key of every job
    # several times (building them each time showed in profiles: docs/benchmarks.md).
    # Not columns: the store reads and writes the init fields only.
    identity: Identity | None = field(init=False, repr=False, compare=False)
    key: tuple[str, str] = field(init=False, repr=False, compare=False)  # (service, action)

    def __post_init__(self) -> None:
        identity = None
        if self.pid is not None and self.boot_id is not None and self.starttime_ticks is not None:
            identity = Identity(self.boot_id, self.pid, self.starttime_ticks)
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
    revision: str | None = None  # the specs dir's revision at the pass that recorded it


class Sample(NamedTuple):
    """One look at a running job's resources (DESIGN §8.4), summed over its members (the
    processes of its session) where a sum means something. `at` never goes backwards for a
    job, whatever the wall clock does (see sampling). A named tuple: a round makes a
    thousand every 5 s (a frozen dataclass cost 6 µs each), and its fields in order are
    the row the store inserts."""

    at: float
    job_id: str
    service: str
    action: str
    members: int  # live processes of the job
    rss_bytes: int  # summed
    cpu_seconds: float  # user + system, summed over the live members
    threads: int  # summed
    open_fds: int | None  # summed (None: not ours to count)
    fd_limit: int | None  # the main process's soft RLIMIT_NOFILE
    oom_score: int | None  # the highest of the members
    state: str  # the main process's state letter (R, S, D, Z, T, …)
    wchan: str  # where the main process sleeps in the kernel ("0" or "" when running)
    dstate: int = 0  # members in uninterruptible sleep (D)
    zombies: int = 0  # zombie children of the members, not yet reaped
    max_fds: int | None = None  # the most fds one member holds (the fd limit is per process)

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.action)


EnvFiles = tuple[tuple[str, tuple[tuple[str, str], ...]], ...]  # (path, ((key, value), ...))


class SpecRecord(NamedTuple):
    """The last version of a spec file that parsed and validated, and the current error."""

    file: str
    content: str | None  # last good content; None if the file never was good
    hash: str | None
    error: str | None  # current error text ("file:line:column: message"), None when good
    updated_at: float | None = None
    # What the `env_file`s of the last good content held when it was read: that version
    # stays in force with these values while an env file is missing or broken, also for a
    # controller that never read them itself.
    env_files: EnvFiles = ()


class Enrollment(NamedTuple):
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
