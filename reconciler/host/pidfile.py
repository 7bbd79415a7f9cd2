"""Pidfiles: read defensively, written atomically, removed only when they are still ours.

A pidfile sits in a directory other users may be able to write (`/run/<service>/`), so it is
never followed through a symlink: reading one could leak a file's content into our decisions,
and writing through one would let anyone clobber an arbitrary file as root. And a spec may
name any absolute path: whatever already sits there is replaced only if it is provably a
pidfile (a decimal pid, or nothing at all), so `pidfile: /etc/passwd` can never destroy it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat

from reconciler.files import PRIVATE_FILE, make_private_dirs

_MAX_PIDFILE_BYTES = 64  # a pid and a newline; anything longer is not a pidfile


class PidfileRefused(OSError):
    """Something other than a pidfile sits at the path (a directory, a device, a file with
    other content, or one we cannot read): it is never overwritten. `reason` says what, for
    the job's `blocked` status. An OSError, so a caller that only knows "writing the pidfile
    failed" still handles it as the job's failure."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(errno.EEXIST, f"refusing to overwrite {path}: {reason}", path)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"refusing to overwrite {self.path}: {self.reason}"


def parse_pid(raw: bytes) -> int | None:
    """`b"1234\\n"` → 1234. Empty, garbage, zero or negative → None."""
    text = raw.strip()
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    return pid if pid > 0 else None


def _is_pidfile_content(raw: bytes) -> bool:
    """What we may overwrite: ASCII decimal digits with optional surrounding whitespace, or
    nothing (an empty file holds nothing to lose; daemons that write their own pidfile with
    O_TRUNC leave one behind when they crash between the truncate and the write)."""
    text = raw.strip()
    return len(raw) <= _MAX_PIDFILE_BYTES and (not text or (text.isascii() and text.isdigit()))


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
    """Write `pid` atomically (temp file + rename), never through a symlink, and only over
    nothing or over a pidfile (see `check_overwritable`). Raises `PidfileRefused` when
    something else sits at the path, and another OSError when the write itself fails
    (read-only file system, a parent that is a file, EACCES, …). Not fsynced: after a
    machine crash the pid it names belongs to another boot and reads as stale anyway."""
    path = os.fspath(path)
    if "\0" in path:
        raise OSError(errno.EINVAL, "a pidfile path cannot contain a NUL byte", path)
    directory = os.path.dirname(os.path.abspath(path))
    check_overwritable(path)  # first, so a refused path costs no temp file or mkdir
    make_private_dirs(directory)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, PRIVATE_FILE)
    try:
        try:
            os.write(fd, f"{int(pid)}\n".encode())  # a few bytes: one write is never short
        finally:
            os.close(fd)
        # Again, right before the rename: whatever is there now is what gets replaced.
        check_overwritable(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def check_overwritable(path: str | os.PathLike[str]) -> None:
    """Raise `PidfileRefused` unless `path` is missing, a symlink (the rename replaces the
    link itself; what it points to is never opened for writing) or a regular file that
    holds a decimal pid (or nothing). An lstat first, so a device is never opened at all; then the
    content and type are checked on the opened fd (O_NOFOLLOW, O_NONBLOCK), which is what
    we actually read, whatever was swapped in meanwhile."""
    path = os.fspath(path)
    try:
        seen = os.lstat(path)  # a device is never opened: opening some has side effects
    except FileNotFoundError:
        return  # (ENOTDIR, EACCES on a parent, … propagate: the write would fail the same way)
    if stat.S_ISLNK(seen.st_mode):
        return  # replaced by the rename, never followed: its target is not touched
    if not stat.S_ISREG(seen.st_mode):
        raise PidfileRefused(path, f"it is not a regular file ({_kind(seen.st_mode)})")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return
    except OSError as err:
        raise _refusal(path, err) from err
    try:
        mode = os.fstat(fd).st_mode  # what we read, whatever the lstat saw
        if not stat.S_ISREG(mode):
            raise PidfileRefused(path, f"it is not a regular file ({_kind(mode)})")
        try:
            raw = os.read(fd, _MAX_PIDFILE_BYTES + 1)
        except OSError as err:
            raise PidfileRefused(path, f"cannot read it: {err.strerror}") from err
        if not _is_pidfile_content(raw):
            raise PidfileRefused(path, "it holds something other than a pid")
    finally:
        os.close(fd)


def _refusal(path: str, err: OSError) -> OSError:
    """Opening what the lstat saw as a regular file: ELOOP is a symlink swapped in since,
    EACCES a file we may not read (so we cannot prove it is a pidfile). Other errors are
    failures to report as such, not refusals."""
    if err.errno == errno.ELOOP:
        return PidfileRefused(path, "it is a symlink")
    if err.errno in (errno.EACCES, errno.EPERM):
        return PidfileRefused(path, f"cannot read it: {err.strerror}")
    return err


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a file"


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
