"""The read-only snapshot of the host that one pass plans against.

Everything here is plain, frozen data so that `plan` can be a pure function: the host layer
fills it in, nobody mutates it, and unit tests of `plan` build it by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from reconciler.identity import Identity
from reconciler.redact import command_line


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """A live (non-zombie) process as seen during this pass."""

    identity: Identity
    cmdline: tuple[str, ...]
    session: int
    pgrp: int

    @property
    def pid(self) -> int:
        return self.identity.pid

    def command(self) -> str:
        """Its command line, redacted and on one short line (`redact.command_line`)."""
        return command_line(self.cmdline)

    def describe(self) -> str:
        """`pid 4070 (python3 -m http.server)`: what an operator needs to find the culprit."""
        return f"pid {self.pid} ({self.command() or '?'})"


SocketKind = Literal["absent", "stale", "listening", "not-socket"]


@dataclass(frozen=True, slots=True)
class SocketState:
    """A declared unix socket path.

    `stale`: a socket file nobody listens on (connect gave ECONNREFUSED), safe to unlink.
    `not-socket`: something else lives at the path (regular file, dir, symlink): never unlinked.
    `holders` lists the processes that hold the listening socket; empty with
    `listening` means the owner could not be found (other user or namespace), which is
    still a conflict, never "free".
    """

    path: str
    kind: SocketKind
    holders: tuple[ProcInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class PortState:
    """A declared TCP port on this network namespace (IPv4 and IPv6 listeners)."""

    port: int
    listening: bool
    holders: tuple[ProcInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class PidfileState:
    """What a pidfile says and whether the process it names is alive right now."""

    path: str
    pid: int | None  # None: missing, empty or unparsable
    proc: ProcInfo | None  # the live process with that pid, if any (zombies count as dead)


@dataclass(frozen=True, slots=True)
class Exit:
    """An own child reaped by the host layer, with its real exit status."""

    identity: Identity
    returncode: int  # negative: killed by that signal number (subprocess convention)


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything one pass knows about the host: the processes, sockets, ports and pidfiles
    it asked about, the exits it reaped, and the probe results. `plan` reads only this."""

    boot_id: str
    procs: dict[int, ProcInfo] = field(default_factory=dict)  # live processes we asked about
    sockets: dict[str, SocketState] = field(default_factory=dict)
    ports: dict[int, PortState] = field(default_factory=dict)
    pidfiles: dict[str, PidfileState] = field(default_factory=dict)
    exits: dict[int, Exit] = field(default_factory=dict)  # pid -> reaped exit of an own child
    ready: dict[str, bool] = field(default_factory=dict)  # job id -> health probe passed
    failing: dict[str, int] = field(default_factory=dict)  # job id -> failed probes since ready
    # job id -> (the process that was over its limit, why): from the resource monitor
    over_limit: dict[str, tuple[Identity, str]] = field(default_factory=dict)
    # job id -> its live processes other than a live main process: what is left of its
    # session, and processes carrying its RECONCILER_JOB_ID anywhere else (a daemonized
    # child). Only asked for jobs whose main process exited or that are being stopped.
    members: dict[str, tuple[ProcInfo, ...]] = field(default_factory=dict)

    def alive(self, identity: Identity | None) -> ProcInfo | None:
        """The live process if `identity` still names it (same boot, pid and start time)."""
        if identity is None or identity.boot_id != self.boot_id:
            return None
        proc = self.procs.get(identity.pid)
        if proc is None or proc.identity != identity:
            return None
        return proc
