"""One snapshot of the host for one pass: the only entry point `plan` depends on.

Read-only, with one deliberate exception: our own exited children are reaped first. That
is not a change to the host anyone could observe, it keeps them from lingering as zombies,
and it is the only moment their exit codes can be collected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from reconciler.host.identity import proc_info
from reconciler.host.pidfile import read_pidfile
from reconciler.host.ports import inspect_tcp_ports
from reconciler.host.proccache import ProcCache
from reconciler.host.procfs import read_boot_id
from reconciler.host.sockets import inspect_unix_sockets
from reconciler.host.spawn import Children
from reconciler.observed import Observed, PidfileState, ProcInfo


def observe(*, pids: Iterable[int] = (), pidfiles: Iterable[str] = (),
            sockets: Iterable[str] = (), ports: Iterable[int] = (),
            candidates: Iterable[int] = (), children: Children | None = None,
            known: Mapping[int, ProcInfo] | None = None,
            cache: ProcCache | None = None, forget_others: bool = True) -> Observed:
    """Snapshot the processes, pidfiles, sockets and ports a pass asks about.

    `procs` holds every live process named by `pids`, by a pidfile, or holding a declared
    socket/port. Holders are looked for first among `candidates`, `pids` and pidfile pids
    (cheap), and only then in a full /proc scan. `known` holds processes this pass has
    already read, so they are not read again. With a `cache`, `pids` are looked up through
    it (see `ProcCache`); it then forgets every pid not in `pids` (unless not
    `forget_others`: a keyed pass asks about some of them).
    """
    exits = children.reap() if children is not None else {}
    procs: dict[int, ProcInfo] = dict(known or {})
    if cache is not None:
        procs.update(cache.lookup(pids, forget_others=forget_others))
    else:
        for pid in dict.fromkeys(pids):
            _remember(procs, pid)
    pidfile_states: dict[str, PidfileState] = {}
    for path in dict.fromkeys(os.fspath(p) for p in pidfiles):
        named = read_pidfile(path)
        proc = _remember(procs, named) if named is not None else None
        pidfile_states[path] = PidfileState(path, named, proc)
    suspects = list(dict.fromkeys([*candidates, *procs]))
    socket_states = inspect_unix_sockets(sockets, suspects)
    port_states = inspect_tcp_ports(ports, suspects)
    holders = [h for s in socket_states.values() for h in s.holders] \
        + [h for p in port_states.values() for h in p.holders]
    for holder in holders:
        procs.setdefault(holder.pid, holder)
    return Observed(boot_id=read_boot_id(), procs=procs, sockets=socket_states,
                    ports=port_states, pidfiles=pidfile_states, exits=exits)


def _remember(procs: dict[int, ProcInfo], pid: int) -> ProcInfo | None:
    if pid not in procs:
        info = proc_info(pid)
        if info is None:
            return None
        procs[pid] = info
    return procs[pid]
