"""host/pidfd.py with real processes: a pidfd for an identity only while it names that
identity; one support decision; the fallback path through an injected opener."""

from __future__ import annotations

import errno
import os
import re
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.host import procfs, procs
from reconciler.host.identity import identity_of
from reconciler.host.pidfd import SYSTEM, NoPidfd, Pidfds
from reconciler.identity import Identity
from tests.conftest import Foreign
from tests.helpers import wait_for

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
HOST = Path(__file__).resolve().parents[1] / "reconciler" / "host"


def start(foreign: Foreign) -> tuple[subprocess.Popen[bytes], Identity]:
    proc = foreign.start(SLEEP)
    return proc, wait_for(lambda: identity_of(proc.pid), message="sleeper running")


def readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class Counting(Pidfds):
    """An opener that fails with `errno_` (the first `times` calls, or always) and counts."""

    def __init__(self, errno_: int, times: int | None = None) -> None:
        super().__init__(self._open)
        self.calls = 0
        self._errno, self._times = errno_, times

    def _open(self, pid: int) -> int:
        self.calls += 1
        if self._times is None or self.calls <= self._times:
            raise OSError(self._errno, os.strerror(self._errno))
        return os.pidfd_open(pid)


def test_a_live_identity_gets_a_pidfd_that_names_it(foreign: Foreign) -> None:
    proc, identity = start(foreign)
    fd = SYSTEM.open_verified(identity)
    assert fd is not None
    try:
        assert not readable(fd)
        proc.kill()
        wait_for(lambda: readable(fd), message="pidfd readable on exit")
    finally:
        os.close(fd)


def test_a_zombie_is_refused_unless_asked_for(foreign: Foreign) -> None:
    proc, identity = start(foreign)
    proc.kill()
    wait_for(lambda: (s := procfs.read_stat(proc.pid)) is not None and s.zombie,
             message="zombie")
    assert SYSTEM.open_verified(identity) is None
    fd = SYSTEM.open_verified(identity, zombie_ok=True)
    assert fd is not None
    assert readable(fd)  # a zombie has exited
    os.close(fd)


def test_a_reaped_process_is_gone(foreign: Foreign) -> None:
    proc, identity = start(foreign)
    proc.kill()
    proc.wait()
    assert SYSTEM.open_verified(identity, zombie_ok=True) is None


def test_a_recycled_or_foreign_boot_identity_is_refused(foreign: Foreign) -> None:
    _proc, identity = start(foreign)
    recycled = identity._replace(starttime_ticks=identity.starttime_ticks + 1)
    other_boot = identity._replace(boot_id="00000000-0000-0000-0000-000000000000")
    opened = _fds()
    for wrong in (recycled, other_boot):
        assert SYSTEM.open_verified(wrong) is None
        assert SYSTEM.open_verified(wrong, zombie_ok=True) is None
    assert _fds() == opened  # the pidfd opened for the check was closed again


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EPERM], ids=["ENOSYS", "seccomp"])
def test_no_pidfds_is_decided_once(foreign: Foreign, code: int) -> None:
    _proc, identity = start(foreign)
    pidfds = Counting(code)
    assert pidfds.supported() is False
    for _ in range(3):
        with pytest.raises(NoPidfd):
            pidfds.open_verified(identity)
        assert pidfds.try_open(identity.pid) is None
    assert pidfds.calls == 1  # the probe; never asked again


def test_running_out_of_fds_falls_back_for_that_call_only(foreign: Foreign) -> None:
    _proc, identity = start(foreign)
    pidfds = Counting(errno.EMFILE, times=2)  # the probe and the first open fail
    with pytest.raises(NoPidfd) as failed:
        pidfds.open_verified(identity)
    assert failed.value.transient
    fd = pidfds.open_verified(identity)  # nothing was remembered from the failure
    assert fd is not None
    os.close(fd)
    assert pidfds.supported() is True


def test_out_of_fds_a_signal_is_not_sent_without_a_pidfd(foreign: Foreign) -> None:
    """The kernel has pidfds, only none could be opened now: the signal fails (that job's
    step fails, the next pass retries) rather than taking the unpinned verify-then-kill path."""
    proc, identity = start(foreign)

    def out_of_fds(pid: int) -> int:
        if pid == os.getpid():  # the support probe opens one for ourselves: it still works
            return os.pidfd_open(pid)
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    pidfds = Pidfds(out_of_fds)
    with pytest.raises(OSError, match="not signalled"):
        procs.signal_identity(identity, 9, pidfds=pidfds)
    assert proc.poll() is None


def test_esrch_from_the_opener_means_gone(foreign: Foreign) -> None:
    _proc, identity = start(foreign)
    assert Counting(errno.ESRCH).open_verified(identity) is None


def test_without_pidfds_signals_still_verify_first(foreign: Foreign) -> None:
    """The fallback path: the identity is checked right before kill(2)."""
    proc, identity = start(foreign)
    pidfds = Counting(errno.ENOSYS)
    recycled = identity._replace(starttime_ticks=identity.starttime_ticks + 1)
    assert procs.signal_identity(recycled, 9, pidfds=pidfds) is False
    assert proc.poll() is None
    assert procs.signal_identity(identity, 9, pidfds=pidfds) is True
    assert proc.wait(timeout=10) == -9


def _calls(pattern: str) -> Callable[[Path], list[str]]:
    return lambda path: re.findall(pattern, path.read_text())


def test_the_package_opens_pidfds_and_signals_only_through_this_module() -> None:
    """So the rule in host/pidfd.py is the only rule, and the seam sees every signal."""
    find = _calls(r"\b(?:os\.pidfd_open|pidfd_send_signal|os\.kill|os\.killpg)\(")
    offenders = {str(path.relative_to(HOST.parent)): find(path)
                 for path in HOST.parent.rglob("*.py") if path.name != "pidfd.py" and find(path)}
    assert offenders == {}


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))
