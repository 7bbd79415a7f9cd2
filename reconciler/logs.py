"""Job log files: `<logs_dir>/<service>/<action>.log`, previous runs at `.log.1`, `.log.2`, ...

Rotation between runs (before a respawn) is plain renames: no copy-truncate, no lost lines.
Only `cap_size`, which bounds the log of a process that is still running, has to copy and
truncate under a live writer (see its docstring for the cost). Every operation here works on
directory entries (rename, unlink) or opens with O_NOFOLLOW, so a symlink planted in the logs
dir can never make the controller (often root) clobber or disclose the file it points to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from reconciler.logpaths import previous_path

log = logging.getLogger(__name__)

_BLOCK = 64 * 1024


def rotate(path: Path, keep: int, max_size: int | None = None) -> None:
    """Shift `.log` to `.log.1` (and so on), keeping at most `keep` old runs.

    keep=0 removes the current log. Old runs beyond `keep` are removed too, so lowering
    `logs.keep` in a spec takes effect at the next restart. A `.log` that is a symlink is left
    alone (logged): rotating it would keep a pointer to a foreign file in the history.

    With `max_size`, a live log bigger than that (a burst the capper could not keep up with)
    is not renamed whole into the history: only its last `max_size` bytes are copied to
    `.log.1` and the file is truncated in place (so a leftover writer of the old run, still
    holding it open, keeps writing into a file that is watched and capped, not into history).
    Work is proportional to the history files present, never to `keep`.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    if path.is_symlink():
        log.warning("not rotating %s: it is a symlink", path)
        return
    if max_size is not None and cap_size(path, max_size, keep):
        return
    _remove_beyond(path, keep)
    try:
        if os.lstat(path).st_size == 0:
            return  # a start that failed before its command wrote anything: keep the history
    except FileNotFoundError:
        return  # nothing ran since the last rotation
    if keep == 0:
        path.unlink(missing_ok=True)
        return
    _shift_history(path, keep)
    os.replace(path, previous_path(path, 1))


def cap_size(path: Path, max_size: int, keep: int, *, over: int | None = None) -> bool:
    """If the live log is over `over` bytes (default `max_size`), move its last `max_size`
    bytes to `.log.1` (older runs shift like `rotate`) and truncate it in place. Returns
    whether it rotated. `.log.1` is therefore never bigger than `max_size`, whatever the
    live log had grown to.

    copytruncate, because the child holds the log open with O_APPEND and we cannot make it
    reopen: after the truncate its next write lands at the new end (offset 0). The price, as
    with logrotate's copytruncate: lines written between the end of the copy and the truncate
    are lost, and so is whatever came before the last `max_size` bytes. A symlink or anything
    but a regular file is left alone.

    The live file grows by the writer's rate for as long as this takes, so only the copy (by
    the kernel: copy_file_range) stands between the decision and the truncate. The tail goes
    to a hidden temp file; shifting the history (whose unlink of the oldest file frees
    `max_size` of blocks) and naming the copy `.log.1` come after the truncate. Should we die
    in between, the tail is left in that hidden `.<name>.1.*` file: no history file is ever
    half-written or over `max_size`.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    threshold = max_size if over is None else min(over, max_size)
    fd = _open_live(path, over=threshold)
    if fd is None:
        return False
    tail = None
    try:
        size = os.fstat(fd).st_size
        if size <= threshold:
            return False
        if keep > 0:
            start = _line_start(fd, max(0, size - max_size), size)
            tail = _copy_to_temp(fd, previous_path(path, 1), start=start, end=size)
        os.ftruncate(fd, 0)
    except BaseException:
        _discard(tail)
        raise
    finally:
        os.close(fd)
    if tail is None:
        _remove_beyond(path, 0)
        return True
    try:
        _shift_history(path, keep)
        os.replace(tail, previous_path(path, 1))  # replaces even a symlink: never writes through
    except BaseException:
        _discard(tail)
        raise
    return True


def _open_live(path: Path, over: int) -> int | None:
    """The live log opened read-write if it is bigger than `over` bytes; None if it is not,
    or is missing, a symlink or not a regular file (checked before opening so a planted FIFO
    or device is never opened at all). Every pass checks every running job's log, so the
    common case costs one lstat."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(before.st_mode):
        if stat.S_ISLNK(before.st_mode):
            log.warning("not capping %s: it is a symlink", path)
        return None
    if before.st_size <= over:
        return None
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return None  # swapped or removed since the lstat
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        return None
    return fd


def _shift_history(path: Path, keep: int) -> None:
    """Make room for a new `.log.1`, exactly as `rotate` numbers runs: every existing
    `.log.<n>` becomes `.log.<n+1>` (gaps stay gaps: numbers are ages), and runs that would
    pass `keep` are removed. Visits the files present, never the numbers up to `keep`."""
    history = _history(path)
    for n in sorted(history, reverse=True):
        if n >= keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(history[n])
        else:
            os.replace(history[n], previous_path(path, n + 1))


def _line_start(fd: int, start: int, end: int) -> int:
    """`start`, moved just past the next newline so the kept tail begins with a whole line;
    unchanged at offset 0 or when no newline is near (within one block, and never giving up
    more than half of what is kept)."""
    if start == 0:
        return 0
    head = os.pread(fd, min(_BLOCK, (end - start) // 2), start - 1)
    newline = head.find(b"\n")
    return start - 1 + newline + 1 if newline >= 0 else start


def _history(path: Path) -> dict[int, Path]:
    """The previous runs present on disk: {n: path of `.log.<n>`}, one listdir."""
    prefix = f"{path.name}."
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        suffix = name[len(prefix):] if name.startswith(prefix) else ""
        if suffix.isascii() and suffix.isdigit() and not suffix.startswith("0"):
            found[int(suffix)] = path.parent / name
    return found


def _copy_to_temp(src_fd: int, dest: Path, *, start: int, end: int) -> str:
    """Copy bytes [start, end) into a new private temp file beside `dest` and return its
    path, for the caller to rename onto `dest`: `dest` is never half-written, and the rename
    replaces whatever entry is there (even a symlink) instead of writing through it. The
    kernel copies (no Python buffers) where it can."""
    out_fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    try:
        _copy_range(src_fd, out_fd, start, end)
    except BaseException:
        os.close(out_fd)
        _discard(tmp)
        raise
    os.close(out_fd)
    return tmp


def _discard(tmp: str | None) -> None:
    if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _copy_range(src_fd: int, out_fd: int, start: int, end: int) -> None:
    offset = start
    with contextlib.suppress(OSError):  # EXDEV, ENOSYS, EINVAL: fall back to read/write
        while offset < end:
            copied = os.copy_file_range(src_fd, out_fd, end - offset, offset)
            if copied == 0:
                return  # the source shrank under us
            offset += copied
        return
    os.ftruncate(out_fd, 0)
    os.lseek(out_fd, 0, os.SEEK_SET)
    offset = start
    while offset < end and (chunk := os.pread(src_fd, min(_BLOCK * 16, end - offset), offset)):
        offset += len(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(out_fd, view):]


def follow(path: Path, *, poll: float = 0.2,
           stop: Callable[[], bool] = lambda: False) -> Iterator[str]:
    """Yield lines (without their newline) appended to the log from now on, like `tail -F`.

    Survives a rotation (the name now points at another inode: finish the old file, then read
    the new one from its start) and a truncation (size below our offset: read from 0). A
    truncation followed by growth past our offset within one `poll` goes unnoticed, as with
    `tail -F`. A log that does not exist yet is waited for; a symlink raises ELOOP. Stops
    when stop() is true, checked at least every `poll` seconds while the log is quiet.
    """
    reader = _Follower(path)  # opened now, not at the first next(): "from now on" means now
    return _follow(reader, poll, stop)


def _follow(reader: _Follower, poll: float, stop: Callable[[], bool]) -> Iterator[str]:
    try:
        while not stop():
            lines, progressed = reader.step()
            yield from lines
            if not progressed:
                time.sleep(poll)
    finally:
        reader.close()


class _Follower:
    """One open log and our offset in it. Bytes are split on newlines before decoding, so a
    multi-byte character split across two reads is not mangled; reads are bounded, so a burst
    of gigabytes between two polls is streamed, not loaded."""

    _READ = 1024 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.offset = 0
        self.pending = b""
        if self._open():
            self.offset = self._size()

    def step(self) -> tuple[list[str], bool]:
        """Lines ready now, and whether anything happened (if not, the caller may sleep)."""
        if self.fd is None and not self._open():
            return [], False
        if self._size() < self.offset:
            self.offset = 0  # truncated in place (copytruncate)
            return self._flush_pending(), True
        data = os.pread(self._fd(), self._READ, self.offset)
        if data:
            return self._take(data), True
        if self._replaced():
            # Read the old file once more: what its writer wrote between our read and the
            # new file's appearance (its last words before a respawn) is there, not in the new.
            data = os.pread(self._fd(), self._READ, self.offset)
            if data:
                return self._take(data), True
            lines = self._flush_pending()  # the old file is drained: its unfinished last line
            self.close()
            self._open()
            return lines, True
        return [], False

    def _take(self, data: bytes) -> list[str]:
        """The complete lines of `data` (read at our offset), the rest kept for later."""
        self.offset += len(data)
        *complete, self.pending = (self.pending + data).split(b"\n")
        return [_decode(line) for line in complete]

    def _replaced(self) -> bool:
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False  # renamed away, the new one not created yet: keep the old one
        mine = os.fstat(self._fd())
        return (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino)

    def _open(self) -> bool:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        self.offset = 0
        return True

    def _fd(self) -> int:
        assert self.fd is not None
        return self.fd

    def _size(self) -> int:
        return os.fstat(self._fd()).st_size

    def _flush_pending(self) -> list[str]:
        line, self.pending = self.pending, b""
        return [_decode(line)] if line else []

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def tail(path: Path, lines: int) -> list[str]:
    """The last `lines` lines (without newlines), read backwards in blocks so a multi-GB log
    costs no more than its tail. A missing file has no lines; a symlink is refused (ELOOP)."""
    if lines <= 0:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as handle:
        data = _read_tail(handle.fileno(), lines)
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()  # the final newline ends the last line; it does not start a new one
    return [piece.decode("utf-8", errors="replace") for piece in pieces[-lines:]]


def _read_tail(fd: int, lines: int) -> bytes:
    """Enough bytes from the end to hold `lines` complete lines (one extra newline proves the
    first kept line is complete). Decoding waits for the join, so a UTF-8 sequence split
    across blocks is not mangled."""
    pos = os.fstat(fd).st_size
    chunks: list[bytes] = []
    newlines = 0
    while pos > 0 and newlines <= lines:
        size = min(_BLOCK, pos)
        pos -= size
        chunk = os.pread(fd, size, pos)
        chunks.append(chunk)
        newlines += chunk.count(b"\n")
    return b"".join(reversed(chunks))


def _remove_beyond(path: Path, keep: int) -> None:
    for n, older in _history(path).items():
        if n > keep:
            older.unlink(missing_ok=True)
