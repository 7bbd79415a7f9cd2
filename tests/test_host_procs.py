"""Signalling real processes: never the wrong one, and every process of a job."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.host import procfs, procs
from reconciler.host.identity import identity_of
from reconciler.host.members import job_processes
from reconciler.host.procs import (
    StopResult,
    is_protected,
    signal_identity,
    signal_job,
    signal_process,
)
from reconciler.host.spawn import Children
from reconciler.identity import Identity
from reconciler.observed import ProcInfo
from tests.conftest import Foreign
from tests.helpers import service_env, session_members, wait_for

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
IGNORE_TERM = ("import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
               "open(sys.argv[1], 'w').close()\n"
               "time.sleep(600)\n")
# Leader with: a child that ignores SIGTERM, and an orphaned grandchild that left the
# process group (setpgid) but stays in the session.
TREE = f"""
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", {IGNORE_TERM!r}, sys.argv[1]])
pid = os.fork()
if pid == 0:
    if os.fork() == 0:
        os.setpgid(0, 0)
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)"])
    os._exit(0)
os.waitpid(pid, 0)
time.sleep(600)
"""


@pytest.fixture
def sessions() -> Iterator[list[int]]:
    """Session ids a test created; whatever is left in them is SIGKILLed at teardown, which
    also catches members that left the process group the `foreign` fixture kills."""
    sids: list[int] = []
    yield sids
    for sid in sids:
        if sid in (0, 1, os.getsid(0)):
            continue
        for stat in filter(None, map(procfs.read_stat, procfs.iter_pids())):
            if stat.session == sid and not stat.zombie:
                with contextlib.suppress(OSError):
                    os.kill(stat.pid, signal.SIGKILL)


def start_sleeper(foreign: Foreign, argv: list[str] = SLEEP) -> Identity:
    proc = foreign.start(argv)
    return wait_for(lambda: identity_of(proc.pid), message="sleeper running")


def gone(member: ProcInfo) -> bool:
    return identity_of(member.pid) != member.identity


# --- protection ------------------------------------------------------------------------------


@pytest.mark.parametrize("pid", [-1, 0, 1])
def test_low_pids_are_protected(pid: int) -> None:
    assert is_protected(pid)


def test_self_and_ancestors_are_protected(foreign: Foreign) -> None:
    assert is_protected(os.getpid())
    assert is_protected(os.getppid())
    assert not is_protected(start_sleeper(foreign).pid)


def test_protected_pids_are_never_signalled() -> None:
    """Signal 0 only probes, so even a broken guard could not hurt the test run."""
    for pid in (1, os.getpid(), os.getppid()):
        identity = identity_of(pid)
        if identity is None:
            continue
        assert signal_identity(identity, 0) is False
    me = identity_of(os.getpid())
    assert me is not None
    assert signal_process(me, 0) == StopResult(refused=[os.getpid()])
    assert signal_job(me, [], 0) == StopResult(refused=[os.getpid()])


def test_own_session_is_never_swept() -> None:
    boot = procfs.read_boot_id()
    assert not procs.session_still_ours(Identity(boot, os.getsid(0), 0))
    parent = identity_of(os.getppid())
    assert parent is not None and not procs.session_still_ours(parent)


# --- identity checks before signalling -------------------------------------------------------


def test_matching_identity_is_signalled(foreign: Foreign) -> None:
    identity = start_sleeper(foreign)
    assert signal_identity(identity, signal.SIGKILL) is True
    wait_for(lambda: identity_of(identity.pid) is None, message="sleeper killed")
    assert signal_identity(identity, signal.SIGKILL) is False  # now a zombie, then gone


def test_mismatched_identity_is_not_signalled(foreign: Foreign) -> None:
    identity = start_sleeper(foreign)
    recycled = identity._replace(starttime_ticks=identity.starttime_ticks + 1)
    other_boot = identity._replace(boot_id="00000000-0000-0000-0000-000000000000")
    for wrong in (recycled, other_boot):
        assert signal_identity(wrong, signal.SIGKILL) is False
        assert signal_process(wrong, signal.SIGKILL) == StopResult()
        assert signal_job(wrong, [wrong], signal.SIGKILL) == StopResult()
    assert identity_of(identity.pid) == identity  # untouched


# --- signal_process --------------------------------------------------------------------------


def test_signal_process_signals_only_that_process(foreign: Foreign) -> None:
    code = (f"import subprocess, sys, time; subprocess.Popen({SLEEP!r}); time.sleep(600)")
    proc = foreign.start([sys.executable, "-c", code])
    members = wait_for(lambda: len(m := session_members(proc.pid)) == 2 and m,
                       message="parent and child running")
    [child] = [m for m in members if m.pid != proc.pid]
    [parent] = [m for m in members if m.pid == proc.pid]
    result = signal_process(parent.identity, signal.SIGTERM)
    assert result == StopResult(signalled=[proc.pid])
    wait_for(lambda: gone(parent), message="parent stopped")
    assert not gone(child)  # same process group and session, but not the target


def test_a_stopped_process_is_continued_so_it_can_act_on_sigterm(
        foreign: Foreign, tmp_path: Path) -> None:
    """Its SIGTERM handler only runs once it is continued (as systemd knows): signal_process
    sends SIGCONT after the signal."""
    marker, ready = tmp_path / "terminated", tmp_path / "ready"
    code = ("import pathlib, signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path(sys.argv[1]).touch(),"
            " sys.exit(0)))\n"
            "pathlib.Path(sys.argv[2]).touch()\n"
            "time.sleep(600)\n")
    identity = start_sleeper(foreign, [sys.executable, "-c", code, str(marker), str(ready)])
    wait_for(ready.exists, message="handler installed")
    os.kill(identity.pid, signal.SIGSTOP)
    wait_for(lambda: (s := procfs.read_stat(identity.pid)) is not None and s.state == "T",
             message="process stopped")
    assert signal_process(identity, signal.SIGTERM) == StopResult(signalled=[identity.pid])
    wait_for(marker.exists, message="SIGTERM handled")


# --- signal_job ------------------------------------------------------------------------------


def test_signal_job_reaches_the_leader_and_strays_that_left_its_group(
        foreign: Foreign, sessions: list[int], tmp_path: Path) -> None:
    """The members job_processes finds (the whole session, including a grandchild that
    left the process group) all get the signal, each verified first."""
    marker = tmp_path / "ignoring"
    leader = foreign.start([sys.executable, "-c", TREE, str(marker)])
    sessions.append(leader.pid)
    wait_for(marker.exists, message="SIGTERM ignored")
    members = wait_for(lambda: len(m := session_members(leader.pid)) == 3 and m,
                       message="leader, child and grandchild running")
    assert len({m.pgrp for m in members}) == 2  # the grandchild left the process group
    leader_identity = identity_of(leader.pid)
    assert leader_identity is not None
    found = job_processes({"job": leader_identity})["job"]
    assert {m.identity for m in found} == {m.identity for m in members} - {leader_identity}

    result = signal_job(leader_identity, [m.identity for m in found], signal.SIGKILL)

    assert sorted(result.signalled) == sorted(m.pid for m in members)
    assert result.refused == []
    wait_for(lambda: all(gone(m) for m in members), message="whole job killed")
    assert session_members(leader.pid) == []


def test_signal_job_after_the_leader_exited_signals_what_it_left(sessions: list[int],
                                                                 tmp_path: Path) -> None:
    """The leader is dead and reaped; what it left behind in its session is still found
    and signalled, and the dead leader is not."""
    children = Children()
    code = f"import subprocess; subprocess.Popen({SLEEP!r})"
    leader = children.spawn([sys.executable, "-c", code], cwd=tmp_path, env=service_env({}),
                            log_path=tmp_path / "leader.log")
    sessions.append(leader.pid)
    wait_for(lambda: children.reap().get(leader.pid), message="leader exited")
    [orphan] = wait_for(lambda: job_processes({"job": leader}).get("job"),
                        message="orphan running")

    result = signal_job(leader, [orphan.identity], signal.SIGTERM)

    assert result == StopResult(signalled=[orphan.pid])
    wait_for(lambda: gone(orphan), message="orphan stopped")
    children.close()


def test_signal_job_of_an_empty_session_does_nothing(tmp_path: Path) -> None:
    children = Children()
    leader = children.spawn([sys.executable, "-c", "pass"], cwd=tmp_path,
                            env=service_env({}), log_path=tmp_path / "leader.log")
    wait_for(lambda: children.reap().get(leader.pid), message="leader exited")
    assert job_processes({"job": leader}) == {}
    assert signal_job(leader, [], signal.SIGTERM) == StopResult()
    children.close()
