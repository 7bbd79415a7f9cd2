"""Identities of real processes: live, dead, zombie."""

from __future__ import annotations

import os
import subprocess
import sys

from reconciler.host import procfs
from reconciler.host.identity import identity_of, proc_info
from reconciler.identity import Identity
from reconciler.observed import ProcInfo
from tests.conftest import Foreign
from tests.helpers import wait_for


def test_own_identity() -> None:
    stat = procfs.read_stat(os.getpid())
    assert stat is not None
    expected = Identity(procfs.read_boot_id(), os.getpid(), stat.starttime)
    assert identity_of(os.getpid()) == expected
    assert identity_of(os.getpid()) == identity_of(os.getpid())  # stable across reads


def test_own_proc_info() -> None:
    info = proc_info(os.getpid())
    assert info is not None
    assert info.identity == identity_of(os.getpid())
    assert (info.session, info.pgrp) == (os.getsid(0), os.getpgrp())
    assert info.cmdline and "pytest" in " ".join(info.cmdline)


def test_child_identity_differs_and_has_its_own_session(foreign: Foreign) -> None:
    proc = foreign.start([sys.executable, "-c", "import time; time.sleep(600)"])
    # Popen returns (vfork) while the child's exec still places its arguments: its command
    # line reads empty until then
    def with_cmdline() -> ProcInfo | None:
        info = proc_info(proc.pid)
        return info if info is not None and info.cmdline else None

    info = wait_for(with_cmdline, message="child visible with its command line")
    assert info.identity != identity_of(os.getpid())
    assert info.identity.starttime_ticks >= identity_of(os.getpid()).starttime_ticks  # type: ignore[union-attr]
    assert info.session == proc.pid and info.pgrp == proc.pid
    assert info.describe().startswith(f"pid {proc.pid} ({sys.executable} -c")


def test_dead_child_has_no_identity() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert identity_of(proc.pid) is None
    assert proc_info(proc.pid) is None


def test_zombie_has_no_identity() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped: the child stays a zombie until we wait() for it.
        wait_for(lambda: (s := procfs.read_stat(proc.pid)) is not None and s.zombie,
                 message="child became a zombie")
        assert identity_of(proc.pid) is None
        assert proc_info(proc.pid) is None
    finally:
        proc.kill()
        proc.wait()
