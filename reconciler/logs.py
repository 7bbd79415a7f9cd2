"""Job log files: `<logs_dir>/<service>/<action>.log`, previous runs at `.log.1`, `.log.2`, ...

Rotation happens between runs (before a respawn), never under a live writer, so it is plain
renames: no copy-truncate, no lost lines. Every operation here works on directory entries
(rename, unlink) or opens with O_NOFOLLOW, so a symlink planted in the logs dir can never make
the controller (often root) clobber or disclose the file it points to.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_BLOCK = 64 * 1024


def log_path(logs_dir: Path, service: str, action: str) -> Path:
    for name in (service, action):
        _check_name(name)
    return logs_dir / service / f"{action}.log"


def previous_path(path: Path, n: int = 1) -> Path:
    """The log of the n-th previous run (1 = the run before the current one)."""
    if n < 1:
        raise ValueError(f"previous run numbers start at 1, got {n}")
    return path.with_name(f"{path.name}.{n}")


def rotate(path: Path, keep: int) -> None:
    """Shift `.log` to `.log.1` (and so on), keeping at most `keep` old runs.

    keep=0 removes the current log. Old runs beyond `keep` are removed too, so lowering
    `logs.keep` in a spec takes effect at the next restart. A `.log` that is a symlink is left
    alone (logged): rotating it would keep a pointer to a foreign file in the history.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    if path.is_symlink():
        log.warning("not rotating %s: it is a symlink", path)
        return
    _remove_beyond(path, keep)
    if not os.path.lexists(path):
        return  # nothing ran since the last rotation
    if keep == 0:
        path.unlink(missing_ok=True)
        return
    for n in range(keep - 1, 0, -1):
        older = previous_path(path, n)
        if os.path.lexists(older):
            os.replace(older, previous_path(path, n + 1))
    os.replace(path, previous_path(path, 1))


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
    prefix = f"{path.name}."
    try:
        names = os.listdir(path.parent)
    except FileNotFoundError:
        return
    for name in names:
        suffix = name[len(prefix):] if name.startswith(prefix) else ""
        if suffix.isascii() and suffix.isdigit() and int(suffix) > keep:
            (path.parent / name).unlink(missing_ok=True)


def _check_name(name: str) -> None:
    """Service and action names become path parts: refuse anything that leaves the dir."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"invalid name for a log path: {name!r}")
