"""Job membership by the inherited RECONCILER_JOB_ID, across double-forking daemons."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.environment import minimal_env
from reconciler.host import procfs
from reconciler.host.identity import identity_of
from reconciler.host.members import job_members, scan_members
from reconciler.host.spawn import Children
from tests.helpers import wait_for

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
        members = job_members(job_id)
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
          job_id: str) -> int:
    # RECONCILER_STATE_DIR too, so the conftest sweep catches anything a failed test leaves.
    env = minimal_env({"RECONCILER_STATE_DIR": str(state_dir)})
    return children.spawn(argv, cwd=tmp_path, env=env, log_path=tmp_path / "job.log",
                          job_id=job_id).pid


def test_a_double_fork_daemon_is_found_after_its_parents_exit(
        children: Children, tmp_path: Path, state_dir: Path) -> None:
    job_id = f"members-test-{os.getpid()}-daemon"
    pidfile = tmp_path / "daemon.pid"
    try:
        main = spawn(children, tmp_path, state_dir, [sys.executable, "-c", DAEMON,
                                                     str(pidfile)], job_id)
        wait_for(pidfile.exists, message="the daemon to write its pid")
        survivor = int(pidfile.read_text())

        def main_reaped() -> bool:
            children.wait(0.2)
            children.reap()
            return main not in children.pids()
        wait_for(main_reaped, message="the job's main process to exit")

        members = job_members(job_id)
        assert [m.pid for m in members] == [survivor]
        [member] = members
        assert member.identity == identity_of(survivor)  # boot id + pid + start time
        assert member.session != main  # it left the job's session (setsid)
        assert member.cmdline[:2] == (sys.executable, "-c")
        assert job_members(job_id, candidates=[survivor, main, 1, os.getpid()]) == members
        assert job_members(job_id, candidates=[main]) == []
        assert job_members("some-other-job") == []
        assert scan_members({job_id, "x"}) == {job_id: members}
    finally:
        kill_members(job_id)
    assert job_members(job_id) == []


def test_every_process_of_a_tree_is_a_member_and_zombies_are_not(
        children: Children, tmp_path: Path, state_dir: Path) -> None:
    job_id = f"members-test-{os.getpid()}-tree"
    try:
        main = spawn(children, tmp_path, state_dir,
                     ["/bin/sh", "-c", "sleep 600 & sleep 600 & exec sleep 600"], job_id)
        members = wait_for(lambda: len(job_members(job_id)) == 3 and job_members(job_id),
                           message="three members")
        assert main in {m.pid for m in members}
        assert {m.session for m in members} == {main}
        os.kill(main, signal.SIGKILL)  # our child: a zombie until we reap it

        def main_is_zombie() -> bool:
            stat = procfs.read_stat(main)
            return stat is not None and stat.zombie
        wait_for(main_is_zombie, message="the main process to be a zombie")
        assert main not in {m.pid for m in job_members(job_id)}
        assert len(job_members(job_id)) == 2
    finally:
        kill_members(job_id)
