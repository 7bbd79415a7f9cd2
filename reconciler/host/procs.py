"""Signalling processes without ever hitting the wrong one.

Two rules hold for every signal sent from here:

* Protected pids (<= 1, the controller itself, its ancestors) are never signalled.
* The target's identity is verified right before the signal, through a pidfd opened first
  (host/pidfd.py states that rule, and the fallback where the kernel has no pidfds).

A pass never waits here for a process to exit: it signals and moves on, and a later pass
escalates (plan.py). Everything that delivers a signal takes a `Pidfds` (the kernel's by
default), so tests can record signals instead of sending them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field

from reconciler.host import procfs
from reconciler.host.identity import identity_of
from reconciler.host.pidfd import SYSTEM, NoPidfd, Pidfds
from reconciler.identity import Identity


@dataclass(slots=True)
class StopResult:
    """Which pids got a signal and which were refused as protected, for the `kill` event
    and for the error an operator must see."""

    signalled: list[int] = field(default_factory=list)  # got the signal
    refused: list[int] = field(default_factory=list)  # protected: never signalled


# --- safety ----------------------------------------------------------------------------------


def self_and_ancestors() -> set[int]:
    """Walked afresh each time: our parent can change (re-parenting when it dies)."""
    chain: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in chain:  # stops at init, or at 0 outside our pid namespace
        chain.add(pid)
        stat = procfs.read_stat(pid)
        if stat is None:
            break
        pid = stat.ppid
    return chain


def is_protected(pid: int) -> bool:
    """Killing init, ourselves or whatever supervises us would turn a cleanup into an
    outage, whatever a stale record claims."""
    return pid <= 1 or pid in self_and_ancestors()


# --- signalling one verified process ----------------------------------------------------


def signal_identity(identity: Identity, sig: int, *, pidfds: Pidfds = SYSTEM) -> bool:
    """Send `sig` to the process `identity` names. False if it is gone, a zombie, recycled,
    from another boot, or protected: in all those cases nothing was signalled."""
    if identity.boot_id != procfs.read_boot_id() or is_protected(identity.pid):
        return False
    try:
        fd = pidfds.open_verified(identity)
    except NoPidfd as err:
        if err.transient:  # the kernel has pidfds: no reason to accept the fallback's window
            raise OSError(f"not signalled: no pidfd for {identity} now ({err})") from err
        return _verify_then_kill(identity, sig, pidfds)
    if fd is None:
        return False
    try:
        pidfds.send_signal(fd, sig)
    except ProcessLookupError:  # exited since the check: the fd names no one else
        return False
    finally:
        os.close(fd)
    return True


def _verify_then_kill(identity: Identity, sig: int, pidfds: Pidfds) -> bool:
    """Without a pidfd: the same check, then kill(2), a few microseconds apart."""
    if identity_of(identity.pid) != identity:
        return False
    try:
        pidfds.kill(identity.pid, sig)
    except ProcessLookupError:
        return False
    return True


def _continue(targets: Iterable[Identity], sig: int, pidfds: Pidfds) -> None:
    """A stopped process (SIGSTOP, ^Z) only acts on SIGTERM once continued, as systemd knows."""
    if sig not in (signal.SIGKILL, signal.SIGCONT):
        for target in targets:
            signal_identity(target, signal.SIGCONT, pidfds=pidfds)


# --- sessions --------------------------------------------------------------------------------


def session_still_ours(leader: Identity) -> bool:
    """May the session named by `leader.pid` be swept?

    Refused when the record is from another boot, when the session is our own (or init's)
    or a protected pid's, and when the pid now belongs to a process with another start
    time: then the old session is certainly empty (the kernel does not reuse a pid while it
    is a session id) and `sid == pid` names someone else's session.
    """
    sid = leader.pid
    if leader.boot_id != procfs.read_boot_id() or is_protected(sid):
        return False
    if sid == os.getsid(0):
        return False
    stat = procfs.read_stat(sid)
    return stat is None or stat.starttime == leader.starttime_ticks


# --- signalling without waiting (a pass never blocks on a stop) ------------------------------


def signal_process(identity: Identity, sig: int, *,
                   pidfds: Pidfds = SYSTEM) -> StopResult:
    """Send `sig` to ONE verified process (a foreign holder of our resource) and return at
    once; the pass that sent it escalates in a later pass if it is still there."""
    result = StopResult()
    if is_protected(identity.pid):
        result.refused.append(identity.pid)
    elif signal_identity(identity, sig, pidfds=pidfds):
        result.signalled.append(identity.pid)
        _continue([identity], sig, pidfds)
    return result


def signal_job(leader: Identity, members: Iterable[Identity], sig: int, *,
               pidfds: Pidfds = SYSTEM) -> StopResult:
    """Send `sig` to every process of a job and return at once: its main process (`leader`,
    alive or not) and its `members` (the rest of its session and whatever carries its job
    id: host/members.job_processes, found for every stop of a pass in one walk just before).
    Each signal verifies its target's identity first; a child forked after that walk is
    found by the next pass, which finishes the stop only once nothing of the job is left."""
    result = StopResult()
    targets: dict[int, Identity] = {leader.pid: leader}  # verified (or skipped) when signalled
    targets.update((m.pid, m) for m in members)
    protected = self_and_ancestors()
    for target in targets.values():
        if target.pid in protected:
            if target.pid not in result.refused:
                result.refused.append(target.pid)
        elif signal_identity(target, sig, pidfds=pidfds):
            result.signalled.append(target.pid)
    _continue([targets[pid] for pid in result.signalled], sig, pidfds)
    return result

