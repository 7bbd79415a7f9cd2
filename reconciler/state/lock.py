"""One pass at a time per state dir, across processes (a daemon and a `--once` alike), and
one daemon per state dir."""

from __future__ import annotations

import os
import time

from reconciler.host import procfs
from reconciler.state.errors import DaemonRunning

# `status` reads `daemon_pid` (issue 13): fcntl (a shared library to load), the files'
# modes and the retry interval are imported by the locks that take a lock, where they do
TYPE_CHECKING = False  # not typing's
if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType


class LockTimeout(Exception):
    """Another reconciler held the state dir's lock for too long."""


_EPOCH_WIDTH = 20  # digits: the counter is rewritten in place, never shorter


class StateLock:
    """An exclusive `flock` on `<state-dir>/lock`, released on exit or when the holder dies.

    Every holder also counts its hold in the file (an epoch), so a process that keeps one
    `StateLock` across passes learns whether anybody else held the lock in between
    (`changed_hands`): only then can files in the state dir have changed behind its back,
    which is what lets it trust what it cached from its own previous pass.
    """

    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None
        self._epoch: int | None = None  # the value we wrote at our last hold
        self.changed_hands = True

    def __enter__(self) -> StateLock:
        import fcntl

        from reconciler.files import PRIVATE_FILE
        from reconciler.timing import LOCK_RETRY_SECONDS

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LockTimeout(f"{self.path} is held by another reconciler") from None
                time.sleep(LOCK_RETRY_SECONDS)  # polling a lock, not synchronizing a test
        self._fd = fd
        epoch = _read_epoch(fd)
        self.changed_hands = self._epoch is None or epoch != self._epoch
        self._epoch = (epoch + 1) % 10**_EPOCH_WIDTH
        os.pwrite(fd, f"{self._epoch:0{_EPOCH_WIDTH}d}\n".encode(), 0)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_epoch(fd: int) -> int:
    """The counter in the lock file; an empty file (new, or from an older version) is 0."""
    raw = os.pread(fd, _EPOCH_WIDTH + 1, 0).strip()
    return int(raw) if raw.isdigit() else 0


class DaemonLock:
    """One daemon per state dir: an exclusive `flock` on `<state-dir>/daemon.lock` for the
    daemon's lifetime, with its pid in the file for the message a second daemon prints.

    The kernel drops the lock when the holder dies, however it dies, so a crashed daemon
    never blocks the next one; a stale pid left in the file means nothing without the lock.
    The fd is close-on-exec (O_CLOEXEC, and Python's default anyway): a spawned service
    holding it would outlive the daemon and block every later one.
    """

    def __init__(self, path: Path, purpose: str = "") -> None:
        self.path = path
        self.purpose = purpose  # appended to the refusal, e.g. ": stop it first"
        self._fd: int | None = None

    def __enter__(self) -> DaemonLock:
        import fcntl

        from reconciler.files import PRIVATE_FILE

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "pid unknown"
            raise DaemonRunning(f"another reconciler ({who}) runs on {self.path.parent}"
                                f"{self.purpose}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            import fcntl

            os.ftruncate(self._fd, 0)  # before unlocking: never a pid without its lock
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def daemon_pid(path: str | Path) -> int | None:
    """The pid of the daemon holding `path` (a `DaemonLock`), or None when none does.

    Read-only on purpose: taking the lock, even for a moment, could make a daemon starting
    at that moment refuse to run. The kernel's lock table says whether the file is locked
    by the pid the file names; a pid left behind by a crashed daemon holds no lock.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None  # no lock file: no daemon ever ran here
    try:
        inode = os.fstat(fd).st_ino
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    if not holder.isdigit():
        return None
    pid = int(holder)
    held = any(e.kind == "FLOCK" and e.inode == inode and e.pid in (pid, 0, -1)
               for e in procfs.read_locks())
    return pid if held else None
