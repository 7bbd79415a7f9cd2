"""The test harness itself: `Foreign.cleanup` leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import select
import signal
from pathlib import Path

from reconciler.host import procfs
from tests.conftest import FOREIGN_MARKER, Foreign
from tests.helpers import wait_for


def _exited(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


def test_cleanup_kills_the_group_and_escapees_after_the_leader_was_reaped(
        tmp_path: Path) -> None:
    """The shell leaves a `sleep` in its group and a `setsid sleep` in a session of its own,
    exits, and the test reaps it: both sleeps must still die at cleanup."""
    registry = Foreign()
    pids = tmp_path / "pids"
    script = f'sleep 600 & a=$!; setsid sleep 600 & echo "$a $!" > {pids}.tmp; mv {pids}.tmp {pids}'
    leader = registry.start(["/bin/sh", "-c", script])
    assert leader.wait() == 0  # the leader exited first and is reaped
    in_group, escaped = map(int, wait_for(pids.exists) and pids.read_text().split())
    pidfds = [os.pidfd_open(in_group), os.pidfd_open(escaped)]
    try:
        assert procfs.read_environ_var(in_group, FOREIGN_MARKER) == registry.marker
        assert procfs.read_stat(in_group).pgrp == leader.pid  # type: ignore[union-attr]
        # `$!` is the `setsid` program, which may not have called setsid() yet
        wait_for(lambda: procfs.read_stat(escaped).session == escaped,  # type: ignore
                 timeout=5, message="the escapee in a session of its own")
        assert not any(_exited(fd) for fd in pidfds)
        registry.cleanup()
        wait_for(lambda: all(_exited(fd) for fd in pidfds), timeout=5,
                 message="both sleeps killed by cleanup")
    finally:
        for fd in pidfds:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)


def test_cleanup_spares_processes_without_the_marker(tmp_path: Path) -> None:
    mine, other = Foreign(), Foreign()
    try:
        spared = other.start(["sleep", "600"])
        mine.start(["sleep", "600"])
        mine.cleanup()
        assert spared.poll() is None
    finally:
        other.cleanup()
    assert spared.returncode == -signal.SIGKILL
