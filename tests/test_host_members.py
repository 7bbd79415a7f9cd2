"""Job membership by the inherited RECONCILER_JOB_ID, across double-forking daemons."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.host import procfs
from reconciler.host.identity import identity_of
from reconciler.host.members import job_processes
from reconciler.host.spawn import Children
from reconciler.identity import Identity
from reconciler.observed import ProcInfo
from tests.helpers import marked_processes, service_env, wait_for

# fork, setsid, fork again, both parents exit: the grandchild is in a new session, reparented
# to init (or a subreaper), and no longer anybody's child we know.
DAEMON = """
import os, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(600)
"""


def kill_members(job_id: str) -> None:
    """SIGKILL every member through a pidfd opened after re-checking its identity."""
    def gone() -> bool:
        members = marked_processes(job_id)
        for member in members:
            with contextlib.suppress(OSError):
                pidfd = os.pidfd_open(member.pid)
                try:
                    if identity_of(member.pid) == member.identity:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                finally:
                    os.close(pidfd)
        return not members
    wait_for(gone, message=f"members of {job_id} killed")


@pytest.fixture
def children(state_dir: Path) -> Iterator[Children]:
    registry = Children()
    yield registry
    for pid in registry.pids():
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not (registry.reap() or registry.pids()), message="children reaped")
    registry.close()


def spawn(children: Children, tmp_path: Path, state_dir: Path, argv: list[str],
          job_id: str) -> Identity:
    # RECONCILER_STATE_DIR too, so the conftest sweep catches anything a failed test leaves.
    env = service_env({"RECONCILER_STATE_DIR": str(state_dir)})
    return children.spawn(argv, cwd=tmp_path, env=env, log_path=tmp_path / "job.log",
                          job_id=job_id)


def test_a_double_fork_daemon_is_found_after_its_parents_exit(
        children: Children, tmp_path: Path, state_dir: Path) -> None:
    job_id = f"members-test-{os.getpid()}-daemon"
    pidfile = tmp_path / "daemon.pid"
    try:
        leader = spawn(children, tmp_path, state_dir, [sys.executable, "-c", DAEMON,
                                                       str(pidfile)], job_id)
        main = leader.pid
        wait_for(pidfile.exists, message="the daemon to write its pid")
        survivor = int(pidfile.read_text())

        def main_reaped() -> bool:
            children.wait(0.2)
            children.reap()
            return main not in children.pids()
        wait_for(main_reaped, message="the job's main process to exit")

        found = job_processes({job_id: leader}, by_environ=[job_id])
        assert [m.pid for m in found.get(job_id, ())] == [survivor]
        [member] = found[job_id]
        assert member.identity == identity_of(survivor)  # boot id + pid + start time
        assert member.session != main  # it left the job's session (setsid)
        assert member.cmdline[:2] == (sys.executable, "-c")
        # without the job id, only the (gone) main process's session is looked at
        assert job_processes({job_id: leader}) == {}
        # a process in another running job's session is skipped without reading it
        assert job_processes({job_id: leader}, by_environ=[job_id],
                             other_sessions=[member.session]) == {}
        assert job_processes({"some-other-job": leader}, by_environ=["some-other-job"]) == {}
    finally:
        kill_members(job_id)
    assert marked_processes(job_id) == []


def test_every_process_of_a_tree_is_a_member_and_zombies_are_not(
        children: Children, tmp_path: Path, state_dir: Path) -> None:
    job_id = f"members-test-{os.getpid()}-tree"
    try:
        leader = spawn(children, tmp_path, state_dir,
                       ["/bin/sh", "-c", "sleep 600 & sleep 600 & exec sleep 600"], job_id)
        main = leader.pid

        def others() -> tuple[ProcInfo, ...]:
            return job_processes({job_id: leader}, by_environ=[job_id]).get(job_id, ())
        members = wait_for(lambda: len(m := others()) == 2 and m, message="two more members")
        assert main not in {m.pid for m in members}  # the live main process is not listed
        assert {m.session for m in members} == {main}
        os.kill(main, signal.SIGKILL)  # our child: a zombie until we reap it

        def main_is_zombie() -> bool:
            stat = procfs.read_stat(main)
            return stat is not None and stat.zombie
        wait_for(main_is_zombie, message="the main process to be a zombie")
        assert {m.pid for m in others()} == {m.pid for m in members}
    finally:
        kill_members(job_id)
