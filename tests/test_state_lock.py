"""The state dir lock: one pass at a time, across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.state.errors import DaemonRunning
from reconciler.state.lock import DaemonLock, LockTimeout, StateLock

HOLD = """
import sys, time
from pathlib import Path
from reconciler.state.lock import StateLock
with StateLock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin
"""


def test_a_second_holder_waits_and_gets_the_lock_once_released(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LockTimeout), StateLock(lock, timeout=0.2):
            pass
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0
        with StateLock(lock, timeout=5):  # released by the holder's exit
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_holder_never_wedges_the_state_dir(tmp_path: Path) -> None:
    lock = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.kill()  # kill -9 mid-pass: the kernel drops the flock with the process
    holder.wait()
    with StateLock(lock, timeout=5):
        pass


def test_lock_file_is_private_and_never_followed_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (tmp_path / "lock").symlink_to(target)
    with pytest.raises(OSError), StateLock(tmp_path / "lock", timeout=0.1):
        pass
    assert target.read_text() == "keep"
    with StateLock(tmp_path / "real", timeout=1):
        assert (tmp_path / "real").stat().st_mode & 0o777 == 0o600


def test_a_holder_learns_whether_anybody_else_held_the_lock_in_between(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    mine = StateLock(lock_path)
    with mine:
        assert mine.changed_hands  # the first hold: nothing is known yet
    with mine:
        assert not mine.changed_hands
    held_elsewhere = subprocess.run([sys.executable, "-c", HOLD, str(lock_path)], input="",
                                    capture_output=True, text=True, check=True)
    assert held_elsewhere.stdout == "held\n"
    with mine:
        assert mine.changed_hands
    with mine:
        assert not mine.changed_hands


def test_an_empty_or_garbled_lock_file_still_locks(tmp_path: Path) -> None:
    lock_path = tmp_path / "lock"
    lock_path.write_text("garbage from an older version\n")
    lock_path.chmod(0o600)
    with StateLock(lock_path) as lock:
        assert lock.changed_hands
    assert lock_path.read_text().splitlines()[0].isdigit()  # the counter took over


HOLD_DAEMON = """
import sys
from pathlib import Path
from reconciler.state.lock import DaemonLock
with DaemonLock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_the_daemon_lock_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    lock = tmp_path / "daemon.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_DAEMON, str(lock)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(DaemonRunning, match=rf"another reconciler \(pid {holder.pid}\) "
                                                rf"runs on {tmp_path}"), DaemonLock(lock):
            pass
    finally:
        holder.kill()  # kill -9: the kernel drops the flock; the stale pid means nothing
        holder.wait()
    with DaemonLock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
        assert lock.stat().st_mode & 0o777 == 0o600
    assert lock.read_text() == ""
