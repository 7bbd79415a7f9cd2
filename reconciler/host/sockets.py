"""Declared unix socket paths: is anyone listening, who, and is the file safe to remove?

Only `connect()` tells a stale socket file from a live one: ECONNREFUSED means no socket is
bound to that inode any more. Everything here works on an O_PATH descriptor of the file
(opened without following a symlink) and connects through `/proc/self/fd/N`, so the file we
type-check is the file we probe, even if someone swaps the path meanwhile, and paths longer
than `sun_path` (108 bytes) work too.

Holders are found by the bind path recorded in /proc/net/unix. A process that bound the
socket through a relative path or another mount namespace shows no matching path, so a
listening socket may come back with no holders: that still means "in use", never "free".
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterable, Iterator

from reconciler.host import procfs
from reconciler.host.holders import find_socket_holders
from reconciler.observed import ProcInfo, SocketKind, SocketState

# A stream connect to a datagram/seqpacket socket fails with EPROTOTYPE: retry as those.
_SOCKET_TYPES = (socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM)


@contextlib.contextmanager
def _opath(path: str) -> Iterator[tuple[int, os.stat_result] | None]:
    """An O_PATH fd on the path itself (a symlink is opened, not followed) and its stat."""
    try:
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        yield None
        return
    try:
        yield fd, os.fstat(fd)
    finally:
        os.close(fd)


def _connect_errno(fd: int, sock_type: int) -> int:
    """0 on success. Non-blocking: a unix connect never waits for the peer; a full backlog
    gives EAGAIN at once, which still proves a listener."""
    with socket.socket(socket.AF_UNIX, sock_type | socket.SOCK_NONBLOCK) as probe:
        try:
            return probe.connect_ex(f"/proc/self/fd/{fd}")
        except OSError as err:
            return err.errno or errno.EIO


def _probe(fd: int) -> SocketKind:
    """Connect to the socket file behind `fd`. Anything other than a clear ECONNREFUSED
    (EACCES, an unknown error) counts as listening: the file must then never be removed."""
    for sock_type in _SOCKET_TYPES:
        code = _connect_errno(fd, sock_type)
        if code == errno.EPROTOTYPE:
            continue
        if code == errno.ECONNREFUSED:
            return "stale"
        if code == errno.ENOENT:
            return "absent"
        return "listening"
    return "listening"


def _kind(path: str) -> SocketKind:
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    except OSError:  # cannot even look: something is there that we must not touch
        return "not-socket"
    with _opath(path) as opened:
        if opened is None:
            return "absent" if not os.path.lexists(path) else "not-socket"
        fd, st = opened
        if not stat.S_ISSOCK(st.st_mode):
            return "not-socket"
        return _probe(fd)


def _path_holders(paths: list[str],
                  candidates: Iterable[int]) -> dict[str, tuple[ProcInfo, ...]]:
    """One read of /proc/net/unix and one holder search for all listening paths."""
    entries = procfs.read_net_unix()
    inodes_by_path: dict[str, set[int]] = {}
    for path in paths:
        names = {path, os.path.abspath(path)}
        matching = [e for e in entries if e.path in names]
        listening = [e for e in matching if e.listening]
        # Datagram sockets never "listen": the bound entry itself is the server.
        inodes_by_path[path] = {e.inode for e in (listening or matching)}
    wanted = set().union(*inodes_by_path.values())
    holders = find_socket_holders(wanted, candidates) if wanted else {}
    result: dict[str, tuple[ProcInfo, ...]] = {}
    for path, inodes in inodes_by_path.items():
        procs = {p.pid: p for inode in sorted(inodes) for p in holders.get(inode, ())}
        result[path] = tuple(procs[pid] for pid in sorted(procs))
    return result


def inspect_unix_sockets(paths: Iterable[str],
                         candidates: Iterable[int] = ()) -> dict[str, SocketState]:
    """State of several declared socket paths; read-only."""
    kinds = {os.fspath(path): _kind(os.fspath(path)) for path in paths}
    listening = [path for path, kind in kinds.items() if kind == "listening"]
    holders = _path_holders(listening, candidates) if listening else {}
    return {path: SocketState(path, kind, holders.get(path, ())) for path, kind in kinds.items()}


def remove_stale_socket(path: str) -> bool:
    """Unlink `path` only if it is, right now, a socket file nobody listens on.

    Regular files, directories and symlinks are never removed, whatever they point to.
    Residual race: Linux cannot unlink by file descriptor, so between the final identity
    check (same device and inode as the file we probed) and `unlink` the name could be
    swapped; that window is a few syscalls wide, and a server that starts listening after
    our probe typically unlinks and re-binds the path itself anyway.
    """
    with _opath(path) as opened:
        if opened is None:
            return False
        fd, probed = opened
        if not stat.S_ISSOCK(probed.st_mode) or _probe(fd) != "stale":
            return False
        try:
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) != (probed.st_dev, probed.st_ino):
                return False
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True
