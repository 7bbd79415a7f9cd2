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

Cost: a lookup per process started since the last sweep (host/markers.py remembers the
rest while they live), one open + one read of the environment per process not seen
before outside the running jobs' sessions, and a full snapshot
(stat, cmdline, environ through one /proc dir fd) only for the few that match. Processes of
other users are unreadable as non-root (EACCES at open): they are skipped, and cannot be our
members unless a job changed its uid, which we never do.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping

from reconciler.host import procfs
from reconciler.host.identity import proc_info
from reconciler.host.markers import HostMarkers
from reconciler.host.procs import self_and_ancestors, session_still_ours
from reconciler.identity import Identity
from reconciler.observed import ProcInfo


def job_processes(leaders: Mapping[str, Identity], *, by_environ: Iterable[str] = (),
                  other_sessions: Container[int] = (),
                  markers: HostMarkers | None = None) -> dict[str, tuple[ProcInfo, ...]]:
    """What runs of each job (job id → its main process's identity), except a live main
    process itself, from one look at /proc (host/markers.py): the main process's session
    (while that session is provably still the job's, see `procs.session_still_ours`) and,
    for the jobs named in `by_environ`, every process carrying the job's id.

    A process in `other_sessions` (the sessions of other jobs that still run) is never a
    candidate by its job id: a session cannot be joined, only created, so nothing of these
    jobs can be in it. Reading environments costs a read per process; `markers` remembers
    what each process was found to be (host/markers.py), so a sweep reads the environments
    of new processes and of candidates only; without it, every process is new."""
    sessions = {leader.pid: job_id for job_id, leader in leaders.items()
                if session_still_ours(leader)}
    wanted = frozenset(by_environ)
    if not sessions and not wanted:
        return {}
    host = markers if markers is not None else HostMarkers()
    # `other_sessions` may hold swept sessions too: their processes are members first
    found: dict[str, list[ProcInfo]] = {}
    for pid, sid, marked in host.candidates(sessions, wanted, other_sessions,
                                            self_and_ancestors()):
        if marked is None:
            info = _session_member(pid, sid, sessions[sid])
        else:
            info = _marked_member(host, pid, marked)
        if info is not None and info[1].identity != leaders[info[0]]:
            found.setdefault(info[0], []).append(info[1])
    return {job_id: tuple(procs) for job_id, procs in found.items()}


def _session_member(pid: int, sid: int, job_id: str) -> tuple[str, ProcInfo] | None:
    info = proc_info(pid)
    if info is None or info.session != sid:  # recycled since getsid: not a member
        return None
    return job_id, info


def _marked_member(host: HostMarkers, pid: int, job_id: str) -> tuple[str, ProcInfo] | None:
    """The process again, read as one snapshot through one dir fd: the pid may have been
    recycled since its environ was read (or it exec'd since), and then the process there
    now must carry the job id too to count."""
    snapshot = host.snapshot(pid, job_id)
    if snapshot is None:
        return None
    stat, cmdline = snapshot
    return job_id, ProcInfo(identity=Identity(procfs.read_boot_id(), pid, stat.starttime),
                            cmdline=cmdline, session=stat.session, pgrp=stat.pgrp)
