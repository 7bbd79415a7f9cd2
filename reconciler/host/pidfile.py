"""Pidfiles: read defensively, written atomically, removed only when they are still ours.

A pidfile sits in a directory other users may be able to write (`/run/<service>/`), so it is
never followed through a symlink: reading one could leak a file's content into our decisions,
and writing through one would let anyone clobber an arbitrary file as root.
"""

from __future__ import annotations

import os
import stat

from reconciler.files import write_atomic

_MAX_PIDFILE_BYTES = 64  # a pid and a newline; anything longer is not a pidfile


def parse_pid(raw: bytes) -> int | None:
    """`b"1234\\n"` → 1234. Empty, garbage, zero or negative → None."""
    text = raw.strip()
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    return pid if pid > 0 else None


def _open_regular(path: str | os.PathLike[str]) -> int | None:
    """A read fd on `path` if it is a regular file reached without following a final
    symlink; O_NONBLOCK so a FIFO planted at the path cannot hang the pass."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError:  # missing, symlink (ELOOP), no permission, …
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return fd


def read_pidfile(path: str | os.PathLike[str]) -> int | None:
    """The pid the file names, or None when it is missing, empty, garbage or a symlink."""
    fd = _open_regular(path)
    if fd is None:
        return None
    try:
        return parse_pid(os.read(fd, _MAX_PIDFILE_BYTES + 1))
    except OSError:
        return None
    finally:
        os.close(fd)


def write_pidfile(path: str | os.PathLike[str], pid: int) -> None:
    """Atomic and never through a symlink (see `files.write_atomic`). Not fsynced: after a
    machine crash the pid it names belongs to another boot and reads as stale anyway."""
    write_atomic(path, f"{int(pid)}\n".encode(), durable=False)


def remove_pidfile(path: str | os.PathLike[str], pid: int) -> bool:
    """Remove the pidfile only if it is a regular file that still names `pid`: a successor
    may already have written its own pid there, and that file must survive our cleanup."""
    fd = _open_regular(path)
    if fd is None:
        return False
    try:
        opened = os.fstat(fd)
        if parse_pid(os.read(fd, _MAX_PIDFILE_BYTES + 1)) != pid:
            return False
        current = os.lstat(path)
        if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            return False  # replaced between our read and now
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
