"""Declared TCP ports: is anything listening, and who holds the listener?

Read from /proc/net/tcp{,6} (one read of each per call) instead of
`psutil.net_connections()`, which walks every process's fds on every call. Only LISTEN
entries count: a port in TIME_WAIT has no owner and does not stop a new bind with
SO_REUSEADDR, so it is not a conflict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reconciler.host import procfs
from reconciler.host.holders import find_socket_holders
from reconciler.observed import PortState, ProcInfo


def inspect_tcp_ports(ports: Iterable[int], candidates: Iterable[int] = (), *,
                      every_pid: Callable[[], Iterable[int]] = procfs.iter_pids,
                      ) -> dict[int, PortState]:
    """port → PortState for every requested port, on any local address, IPv4 or IPv6.

    `listening` with no holders means the owner is invisible to us (for instance a process
    in another pid namespace that shares our network namespace): the port is still taken.
    """
    wanted = set(ports)
    if not wanted:
        return {}
    inodes_by_port: dict[int, set[int]] = {port: set() for port in wanted}
    listening: set[int] = set()
    for entry in procfs.read_net_tcp():
        if entry.listening and entry.local_port in wanted:
            listening.add(entry.local_port)
            if entry.inode:
                inodes_by_port[entry.local_port].add(entry.inode)
    all_inodes = set().union(*inodes_by_port.values())
    holders = find_socket_holders(all_inodes, candidates, every_pid=every_pid) \
        if all_inodes else {}
    return {port: PortState(port, port in listening,
                            _unique(holders, inodes_by_port[port])) for port in wanted}


def _unique(holders: dict[int, list[ProcInfo]], inodes: set[int]) -> tuple[ProcInfo, ...]:
    """One entry per process, even if it listens on several addresses (v4 and v6)."""
    procs = {p.pid: p for inode in inodes for p in holders.get(inode, ())}
    return tuple(procs[pid] for pid in sorted(procs))
