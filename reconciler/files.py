"""Private, crash-safe file writes, shared by pidfiles, enrollments, logs and the state dir;
and `file_version`, how cheaply-polled inputs (git's files, the labels file) tell a change.

Readers (a restarted controller, an operator's `cat`) must see the old content or the new
one, never half a file; and we often run as root in directories others may write, so a
write never goes through a symlink planted at the path.
"""

from __future__ import annotations

import contextlib
import os

# The modes of everything we create (state dir, run dir, logs, pidfiles, enrollments, the
# database, locks): one place, so no module picks its own.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dirs(directory: str | os.PathLike[str]) -> None:
    """Create missing directories 0700 (chmod, because mkdir's mode is masked by the umask).
    Directories that already exist are left as their owner set them."""
    directory = os.fspath(directory)
    if not directory or os.path.isdir(directory):
        return
    make_private_dirs(os.path.dirname(directory.rstrip("/")))
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, PRIVATE_DIR)
        os.chmod(directory, PRIVATE_DIR)


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = PRIVATE_FILE, *,
                 durable: bool = True) -> None:
    """Write a temp file next to `path` (O_EXCL|O_NOFOLLOW), `os.replace` it onto `path`,
    and with `durable` fsync the file and the directory. `os.replace` swaps whatever sits at
    `path`, a symlink included, for our file: it never writes through a link."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    make_private_dirs(directory)
    import secrets  # here: with hmac and hashlib ~4 ms of every read-only command's start

    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(directory)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in `directory` durable, not only the file's bytes."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


FileVersion = tuple[int, int, int]  # (mtime_ns, size, inode)


def file_version(path: str | os.PathLike[str], *,
                 follow_symlinks: bool = True) -> FileVersion | None:
    """What changes when a file is rewritten or replaced (a rename gives a new inode): one
    stat instead of a read. None when nothing is there; other errors are raised."""
    try:
        st = os.stat(path, follow_symlinks=follow_symlinks)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
