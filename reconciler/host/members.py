"""A job's members: every live process that carries its `RECONCILER_JOB_ID`.

Sessions and process groups lose a daemon that double-forks (fork, setsid, fork, parents
exit): it is in a new session, reparented to init, and no longer our child. Its environment
still carries the job id we put into the first process (host/spawn.py), because environments
are inherited across fork and exec. So membership is read from /proc/<pid>/environ.

That is evidence, not proof: a process can exec itself with another environment (then it
escapes, as with systemd's KillMode=process), and anyone may start a process with a forged
variable. Results therefore carry full identities (boot id, pid, start time), and a caller
must still verify the identity (pidfd) before it signals anything, and should only ever
signal members of a job it owns. Only the initial environment is visible (what the process
was exec'd with), which is exactly what children inherit at fork.

Cost: one open + one read per process for the scan, and a full snapshot (stat, cmdline,
environ through one /proc dir fd) only for the few that match. Processes of other users are
unreadable as non-root (EACCES at open): they are skipped, and cannot be our members unless
a job changed its uid, which we never do.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping

from reconciler.host import procfs
from reconciler.host.identity import proc_info
from reconciler.host.procs import self_and_ancestors, session_still_ours
from reconciler.host.spawn import JOB_ID_VAR
from reconciler.identity import Identity
from reconciler.observed import ProcInfo


def _member(pid: int, job_id: str) -> ProcInfo | None:
    """The process again, read as one snapshot through one dir fd: the pid may have been
    recycled since the filter read its environ, and then the new process must carry the job
    id too to count."""
    snapshot = procfs.read_process_environ(pid, JOB_ID_VAR)
    if snapshot is None:
        return None
    stat, cmdline, value = snapshot
    if stat.zombie or value != job_id:
        return None
    return ProcInfo(identity=Identity(procfs.read_boot_id(), pid, stat.starttime),
                    cmdline=cmdline, session=stat.session, pgrp=stat.pgrp)


def job_processes(leaders: Mapping[str, Identity], *, by_environ: Iterable[str] = (),
                  other_sessions: Collection[int] = ()) -> dict[str, tuple[ProcInfo, ...]]:
    """What runs of each job (job id → its main process's identity), except a live main
    process itself, in one walk over /proc: the main process's session (while that session
    is provably still the job's, see `procs.session_still_ours`) and, for the jobs named in
    `by_environ`, every process carrying the job's id.

    Reading environments costs a read per process. A process in `other_sessions` (the
    sessions of other jobs that still run) is skipped without one: a session cannot be
    joined, only created, so nothing of these jobs can be in it. On a host whose processes
    are mostly our jobs', that leaves a handful of reads."""
    sessions = {leader.pid: job_id for job_id, leader in leaders.items()
                if session_still_ours(leader)}
    wanted = frozenset(by_environ)
    if not sessions and not wanted:
        return {}
    skipped = frozenset(other_sessions) - sessions.keys()
    excluded = self_and_ancestors()
    found: dict[str, list[ProcInfo]] = {}
    for pid in procfs.iter_pids():
        if pid <= 1 or pid in excluded:
            continue
        try:
            sid = os.getsid(pid)
        except OSError:  # gone, or a security module said no
            continue
        if sid in sessions:
            info = _session_member(pid, sid, sessions[sid])
        elif wanted and sid not in skipped:
            info = _marked_member(pid, wanted)
        else:
            continue
        if info is not None and info[1].identity != leaders[info[0]]:
            found.setdefault(info[0], []).append(info[1])
    return {job_id: tuple(procs) for job_id, procs in found.items()}


def _session_member(pid: int, sid: int, job_id: str) -> tuple[str, ProcInfo] | None:
    info = proc_info(pid)
    if info is None or info.session != sid:  # recycled since getsid: not a member
        return None
    return job_id, info


def _marked_member(pid: int, wanted: frozenset[str]) -> tuple[str, ProcInfo] | None:
    job_id = procfs.read_environ_var(pid, JOB_ID_VAR)
    if job_id is None or job_id not in wanted:
        return None
    info = _member(pid, job_id)
    return (job_id, info) if info is not None else None
