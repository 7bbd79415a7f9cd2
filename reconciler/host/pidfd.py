"""The one place that opens pidfds, and the rule that makes signalling a pid safe.

**Open first, verify second.** A pid names a process only until it is reaped; then the
kernel may hand the number to a stranger. A pidfd pins one exact process for as long as it is
open. So every pidfd for an `Identity` (boot id, pid, start time) is opened *before* the
identity is checked against /proc, and the check is made while the fd is held:

* recycled before the open: the check sees the new process's start time, and we refuse;
* recycled after the open: the fd still names the old process, which has exited (a signal
  through it fails with ESRCH; polling it reports the exit).

There is no window in which a stranger is signalled or watched. Checking first and opening
second would leave exactly that window; nothing here does it.

Where the kernel has no pidfds (Linux < 5.3: ENOSYS) or a sandbox forbids them (seccomp:
EPERM), `Pidfds.supported()` says so, decided once by probing ourselves (trio's
`can_try_pidfd_open`). Callers then fall back to checking /proc right before they act: a
window of microseconds for a signal, polling for exit detection. A single open that fails
for want of resources (EMFILE, ENFILE, ENOMEM) is `NoPidfd(transient=True)` for that call
only, and nothing is remembered from it: watching falls back to polling, but a *signal* is
not sent (the step fails and the next pass tries again), because a kernel that has pidfds
gives no reason to accept the fallback's window. ESRCH (and EINVAL: not a thread-group
leader) means the process is gone.

**One pidfd per process, shared.** The spawn registry, the exit watcher and the process
cache each need a pidfd for every job. Three per job made every spawn slower as hosts grew:
the vfork child of each spawn copies the whole fd table and then closes it again (at 2000
jobs ~7000 fds, ~1 ms a spawn). So a pidfd that provably names an identity is shared through
`share`/`acquire`/`release`: one fd per process, closed when its last holder releases it. Only
*verified* fds are shared (opened before the identity was read, or by `open_verified`), so a
holder gets exactly what it would have opened itself. Each holder registers the fd in its own
epoll object and unregisters it before it releases; the fd number cannot be reused while
anyone holds it.

`Pidfds` is also the seam: everything that opens a pidfd or delivers a signal takes one
(the real `SYSTEM` by default), so tests pass a recorder instead of patching modules.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Callable

from reconciler.host import procfs
from reconciler.identity import Identity

_UNSUPPORTED = (errno.ENOSYS, errno.EPERM)  # no pidfds in this kernel, or seccomp says no
_GONE = (errno.ESRCH, errno.EINVAL)  # no such process, or not a thread-group leader


class NoPidfd(Exception):
    """No pidfd for this call: the kernel or sandbox has none (`transient` False: fall back
    to checking /proc right before acting), or none could be opened now (`transient` True,
    e.g. out of fds: watching may fall back, signalling must not)."""

    def __init__(self, message: str = "", *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def _system_open(pid: int) -> int:
    if not hasattr(os, "pidfd_open"):  # a Python built without it
        raise OSError(errno.ENOSYS, "os.pidfd_open is not available")
    return os.pidfd_open(pid)


class _Shared:
    """One shared pidfd and how many holders it has."""

    __slots__ = ("fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1


class Pidfds:
    """Opens pidfds (through `open_fd`, with `os.pidfd_open`'s contract: an fd, or OSError)
    and delivers signals. The defaults are the kernel's; a test passes its own."""

    def __init__(self, open_fd: Callable[[int], int] = _system_open) -> None:
        self._open_fd = open_fd
        self._supported: bool | None = None  # decided by the first probe
        self._lock = threading.Lock()  # innermost: nothing is called out while it is held
        self._shared: dict[Identity, _Shared] = {}
        self._shared_pid: dict[int, Identity] = {}  # pid -> the newest shared identity

    def supported(self) -> bool:
        """Whether this kernel (and sandbox) has pidfds at all, decided once by opening one
        for ourselves. Only ENOSYS and EPERM mean no; any other error leaves it undecided."""
        if self._supported is None:
            try:
                os.close(self._open_fd(os.getpid()))
            except OSError as err:
                if err.errno not in _UNSUPPORTED:
                    return True  # e.g. EMFILE: the kernel has them; try again per call
                self._supported = False
            else:
                self._supported = True
        return self._supported

    def open(self, pid: int) -> int | None:
        """A pidfd for whatever process `pid` is now (verify before trusting it, see the
        module docstring), or None if there is none. Raises NoPidfd (see there)."""
        if not self.supported():
            raise NoPidfd
        try:
            return self._open_fd(pid)
        except OSError as err:
            if err.errno in _GONE:
                return None
            raise NoPidfd(f"pid {pid}: {err.strerror}", transient=True) from err

    def open_verified(self, identity: Identity, *, zombie_ok: bool = False) -> int | None:
        """A pidfd that provably names the process `identity` names, else None (gone,
        recycled, from another boot, or a zombie unless `zombie_ok`). Raises NoPidfd.
        The caller owns the fd and closes it."""
        if identity.boot_id != procfs.read_boot_id():
            return None
        fd = self.open(identity.pid)
        if fd is None:
            return None
        stat = procfs.read_stat(identity.pid)  # AFTER the open: see the module docstring
        if (stat is not None and stat.starttime == identity.starttime_ticks
                and (zombie_ok or not stat.zombie)):
            return fd
        os.close(fd)
        return None

    def try_open(self, pid: int) -> int | None:
        """A pidfd, or None for whatever reason, for callers whose fallback is the same
        either way (a cache that then just re-reads /proc)."""
        try:
            return self.open(pid)
        except NoPidfd:
            return None

    # --- shared pidfds (see "One pidfd per process" in the module docstring) ---------------

    def share(self, identity: Identity, fd: int) -> int:
        """Hand over `fd`, which provably names `identity` (opened before the identity was
        read). Returns the fd to hold from now on: an already shared one for the same
        identity (and `fd` is closed), or `fd` itself. Release it with `release`."""
        with self._lock:
            shared = self._shared.get(identity)
            if shared is None:
                self._add_shared(identity, fd)
                return fd
            shared.refs += 1
        os.close(fd)
        return shared.fd

    def acquire(self, identity: Identity) -> int | None:
        """`open_verified(identity)`, sharing the fd another holder already has. None if the
        process is gone; raises NoPidfd as `open_verified` does. Release it with `release`."""
        with self._lock:
            shared = self._shared.get(identity)
            if shared is not None:
                shared.refs += 1
                return shared.fd
        fd = self.open_verified(identity)
        return None if fd is None else self.share(identity, fd)

    def acquire_pid(self, pid: int) -> tuple[Identity, int] | None:
        """The newest shared pidfd opened for `pid` and the identity it names, if any (it
        may have exited since: compare what /proc says now). Release it with `release`."""
        with self._lock:
            identity = self._shared_pid.get(pid)
            if identity is None:
                return None
            shared = self._shared[identity]
            shared.refs += 1
            return identity, shared.fd

    def release(self, identity: Identity) -> None:
        """Give back one hold on `identity`'s shared fd; the last one closes it."""
        with self._lock:
            shared = self._shared[identity]
            shared.refs -= 1
            if shared.refs:
                return
            del self._shared[identity]
            if self._shared_pid.get(identity.pid) == identity:
                del self._shared_pid[identity.pid]
        os.close(shared.fd)

    def shared_count(self) -> int:
        """How many shared pidfds are open (for tests and diagnostics)."""
        with self._lock:
            return len(self._shared)

    def _add_shared(self, identity: Identity, fd: int) -> None:
        self._shared[identity] = _Shared(fd)
        newest = self._shared_pid.get(identity.pid)
        if newest is None or newest.starttime_ticks <= identity.starttime_ticks:
            self._shared_pid[identity.pid] = identity

    def send_signal(self, fd: int, sig: int) -> None:
        """Deliver `sig` through a verified pidfd. ProcessLookupError if it has exited."""
        signal.pidfd_send_signal(fd, sig)

    def kill(self, pid: int, sig: int) -> None:
        """The fallback without pidfds: only right after verifying `pid`'s identity."""
        os.kill(pid, sig)

    def kill_own_group(self, leader: int, sig: int) -> None:
        """Signal the process group led by our own child `leader`, which must not have been
        reaped yet: until it is, its pid (and so its group id) cannot name anybody else's.
        For helpers we run ourselves (exec health probes), never for a job."""
        os.killpg(leader, sig)


SYSTEM = Pidfds()  # the kernel's pidfds; the default everywhere
