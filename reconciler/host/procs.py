"""Signalling and stopping processes without ever hitting the wrong one.

Two rules hold for every signal sent from here:

* Protected pids (≤ 1, the controller itself, its ancestors) are never signalled.
* The target's identity is re-read right before the signal. With pidfds the order is
  `pidfd_open` → verify identity → `pidfd_send_signal`: once the pidfd is open it pins that
  exact process, and the identity (which includes the start time) proves it is the one we
  mean, so a recycled pid cannot be hit. Without pidfds (kernel < 5.3) we verify, then
  `kill`, leaving a window of a few microseconds.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from reconciler.host import procfs
from reconciler.host.identity import identity_of, proc_info
from reconciler.identity import Identity
from reconciler.observed import ProcInfo

KILL_WAIT_SECONDS = 5.0  # how long we wait for SIGKILLed processes to disappear
_FALLBACK_POLL_SECONDS = 0.02  # only where the kernel has no pidfds
_pidfd_supported = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


@dataclass(slots=True)
class StopResult:
    signalled: list[int] = field(default_factory=list)  # got the stop signal
    killed: list[int] = field(default_factory=list)  # still there after the timeout: SIGKILL
    survivors: list[int] = field(default_factory=list)  # alive even after SIGKILL + wait
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


# --- pidfds ----------------------------------------------------------------------------------


class _NoPidfd(Exception):
    """The kernel has no pidfd_open (ENOSYS): fall back to verify-then-kill."""


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid`, or None if no such process exists."""
    global _pidfd_supported
    if not _pidfd_supported:
        raise _NoPidfd
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError as err:
        if err.errno == errno.ENOSYS:
            _pidfd_supported = False
            raise _NoPidfd from err
        if err.errno == errno.EINVAL:  # not a thread-group leader, or a bad pid
            return None
        raise


@contextlib.contextmanager
def _verified_pidfd(identity: Identity) -> Iterator[int | None]:
    """A pidfd that provably refers to the process `identity` names, else None."""
    fd = _pidfd_open(identity.pid)
    if fd is None:
        yield None
        return
    try:
        yield fd if identity_of(identity.pid) == identity else None
    finally:
        os.close(fd)


def signal_identity(identity: Identity, sig: int) -> bool:
    """Send `sig` to the process `identity` names. False if it is gone, a zombie, recycled,
    from another boot, or protected: in all those cases nothing was signalled."""
    if identity.boot_id != procfs.read_boot_id() or is_protected(identity.pid):
        return False
    try:
        with _verified_pidfd(identity) as fd:
            if fd is None:
                return False
            signal.pidfd_send_signal(fd, sig)
            return True
    except _NoPidfd:
        if identity_of(identity.pid) != identity:
            return False
        os.kill(identity.pid, sig)
        return True
    except ProcessLookupError:
        return False


# --- waiting ---------------------------------------------------------------------------------


def _wait_gone(targets: Iterable[Identity], timeout: float) -> list[Identity]:
    """Wait until every target has exited (a zombie counts as exited); return the ones
    still alive at the deadline. Uses pidfds, which become readable on exit."""
    deadline = time.monotonic() + timeout
    fds: dict[int, Identity] = {}
    polled: list[Identity] = []  # no pidfd support: checked by re-reading /proc
    try:
        for target in targets:
            try:
                fd = _pidfd_open(target.pid)
            except _NoPidfd:
                polled.append(target)
                continue
            if fd is not None and identity_of(target.pid) == target:
                fds[fd] = target
            elif fd is not None:
                os.close(fd)
        _poll_until(fds, polled, deadline)
        return [*fds.values(), *polled]
    finally:
        for fd in fds:
            os.close(fd)


def _poll_until(fds: dict[int, Identity], polled: list[Identity], deadline: float) -> None:
    """Remove from `fds`/`polled` every process that exits before `deadline`."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while fds or polled:
        polled[:] = [t for t in polled if identity_of(t.pid) == t]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not (fds or polled):
            return
        wait = min(remaining, _FALLBACK_POLL_SECONDS) if polled else remaining
        if not fds:
            time.sleep(wait)
            continue
        for fd, _event in poller.poll(math.ceil(wait * 1000)):
            poller.unregister(fd)
            os.close(fd)
            del fds[fd]


# --- stopping one process --------------------------------------------------------------------


def stop_process(identity: Identity, sig: int, timeout: float) -> StopResult:
    """Stop ONE process (a foreign holder of our socket or port), not its group: `sig`,
    wait up to `timeout`, then SIGKILL and wait again."""
    result = StopResult()
    if is_protected(identity.pid):
        result.refused.append(identity.pid)
        return result
    if not signal_identity(identity, sig):
        return result
    result.signalled.append(identity.pid)
    _continue([identity], sig)
    if not _wait_gone([identity], timeout):
        return result
    if signal_identity(identity, signal.SIGKILL):
        result.killed.append(identity.pid)
    result.survivors = [t.pid for t in _wait_gone([identity], KILL_WAIT_SECONDS)]
    return result


def _continue(targets: Iterable[Identity], sig: int) -> None:
    """A stopped process (SIGSTOP, ^Z) only acts on SIGTERM once continued, as systemd knows."""
    if sig not in (signal.SIGKILL, signal.SIGCONT):
        for target in targets:
            signal_identity(target, signal.SIGCONT)


# --- stopping a session ----------------------------------------------------------------------


def session_members(sid: int) -> list[ProcInfo]:
    """Live (non-zombie) processes whose session id is `sid`.

    Every process on the host is a candidate, so this asks the kernel with getsid(2), one
    cheap syscall per pid, instead of reading and parsing each /proc/<pid>/stat (ten times
    the cost; a crash sweep at a thousand processes spent 30 ms here). Only members are
    then read in full, and their session is checked again in that consistent snapshot.
    """
    if sid <= 0:
        return []
    members = []
    for pid in procfs.iter_pids():
        try:
            if os.getsid(pid) != sid:
                continue
        except OSError:  # gone (ESRCH), or a security module said no
            continue
        info = proc_info(pid)
        if info is not None and info.session == sid:
            members.append(info)
    return members


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


def stop_session(leader: Identity, sig: int, timeout: float) -> StopResult:
    """Stop a job we started in its own session: every process of that session, including
    descendants that left the process group (setpgid, a shell's `&`) and processes that
    ignore `sig`.

    `sig` to every member, wait up to `timeout` for all to exit, then re-scan the session
    (to catch children forked meanwhile) and SIGKILL whatever is left, in rounds, for up to
    KILL_WAIT_SECONDS. Works whether the leader is still running, a zombie, or already
    reaped: the session outlives its leader.

    Residual risk: membership is decided by the session id in /proc/<pid>/stat. Linux does
    not hand out a pid while it is still in use as a session (or group) id, so while any
    member lives, no unrelated process can have `sid == leader.pid`; once the session is
    empty the pid may be reused, which `session_still_ours` detects by the leader pid's
    start time before every round. A descendant that called setsid() itself has left the
    job for good and is not found here (as with systemd's scope-less services).
    """
    result = StopResult()
    if not session_still_ours(leader):
        return result
    stat = procfs.read_stat(leader.pid)
    if stat is not None and not stat.zombie and stat.session != leader.pid:
        return stop_process(leader, sig, timeout)  # not a session leader: no session to sweep
    members = _sweepable(leader.pid, result)
    if not members:
        return result  # empty (the common crash): no member is left to fork another
    for member in members:
        if signal_identity(member, sig):
            result.signalled.append(member.pid)
    _continue(members, sig)
    _wait_gone(members, timeout)
    result.killed, result.survivors = _kill_session(leader, result)
    return result


def _sweepable(sid: int, result: StopResult) -> list[Identity]:
    """Members of the session that we may signal; protected ones are noted as refused."""
    protected = self_and_ancestors()
    members = []
    for member in session_members(sid):
        if member.pid in protected:
            if member.pid not in result.refused:
                result.refused.append(member.pid)
        else:
            members.append(member.identity)
    return members


def _kill_session(leader: Identity, result: StopResult) -> tuple[list[int], list[int]]:
    """SIGKILL rounds until the session is empty or KILL_WAIT_SECONDS passed; a round
    re-scans, so children forked by a dying member are caught too."""
    deadline = time.monotonic() + KILL_WAIT_SECONDS
    killed: set[int] = set()
    while session_still_ours(leader):
        members = _sweepable(leader.pid, result)
        remaining = deadline - time.monotonic()
        if not members or remaining <= 0:
            return sorted(killed), [m.pid for m in members]
        for member in members:
            if signal_identity(member, signal.SIGKILL):
                killed.add(member.pid)
        _wait_gone(members, min(remaining, 1.0))
    return sorted(killed), []


# --- signalling without waiting (a pass never blocks on a stop) ------------------------------


def signal_process(identity: Identity, sig: int) -> StopResult:
    """Send `sig` to ONE verified process (a foreign holder of our resource) and return at
    once; the pass that sent it escalates in a later pass if it is still there."""
    result = StopResult()
    if is_protected(identity.pid):
        result.refused.append(identity.pid)
    elif signal_identity(identity, sig):
        result.signalled.append(identity.pid)
        _continue([identity], sig)
    return result


def signal_job(leader: Identity, members: Iterable[Identity], sig: int) -> StopResult:
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
        elif signal_identity(target, sig):
            result.signalled.append(target.pid)
    _continue([targets[pid] for pid in result.signalled], sig)
    return result

