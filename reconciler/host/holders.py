"""Which processes hold a given socket inode.

The only way to map a socket to a process is to read every candidate's /proc/<pid>/fd
links. A full scan costs one directory listing plus one readlink per open fd of every
process on the machine, so it is the last resort: the pids we already suspect (our own jobs,
pidfile owners) are checked first, and the full scan only runs for inodes still unresolved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reconciler.host import procfs
from reconciler.host.identity import proc_info
from reconciler.observed import ProcInfo


def _scan(pids: Iterable[int], wanted: set[int],
          found: dict[int, list[ProcInfo]], seen: set[int]) -> None:
    """Record in `found` every process among `pids` that holds one of the `wanted` inodes."""
    for pid in pids:
        if pid in seen:
            continue
        seen.add(pid)
        held = procfs.read_socket_inodes(pid) & wanted
        if not held:
            continue
        info = proc_info(pid)
        if info is None:  # died (or became a zombie) since we read its fds
            continue
        for inode in held:
            found[inode].append(info)


def find_socket_holders(inodes: Iterable[int], candidates: Iterable[int] = (), *,
                        every_pid: Callable[[], Iterable[int]] = procfs.iter_pids,
                        ) -> dict[int, list[ProcInfo]]:
    """inode → live processes holding it (every requested inode is a key; an empty list means
    no holder could be found, which is NOT proof that nobody holds it: it may belong to
    another network namespace or a process we may not inspect).

    A candidate that holds an inode ends the search for that inode, so processes that
    inherited the same socket (pre-fork workers) are only reported when no candidate
    holds it. `every_pid` lists the processes of the full scan (a test passes one that
    proves the scan never ran).
    """
    wanted = {inode for inode in inodes if inode > 0}
    found: dict[int, list[ProcInfo]] = {inode: [] for inode in wanted}
    seen: set[int] = set()
    _scan(candidates, wanted, found, seen)
    unresolved = {inode for inode, procs in found.items() if not procs}
    if unresolved:
        _scan(every_pid(), unresolved, found, seen)
    return found
