"""One pidfd per process, shared by the spawn registry, the exit watcher and the process cache
(host/pidfd.py): every spawn's vfork child copies and closes the whole fd table, so three
pidfds per job made each spawn slower as the host grew."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.host.exits import ExitWatcher
from reconciler.host.identity import identity_of, proc_info
from reconciler.host.pidfd import Pidfds
from reconciler.host.proccache import ProcCache
from reconciler.host.spawn import Children
from reconciler.identity import Identity
from tests.conftest import Foreign
from tests.helpers import ExitCalls, service_env, wait_for

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def _sleeper(foreign: Foreign) -> Identity:
    pid = foreign.start(SLEEP).pid
    wait_for(lambda: (info := proc_info(pid)) and info.cmdline == tuple(SLEEP), message="exec")
    identity = identity_of(pid)
    assert identity is not None
    return identity


def test_holders_of_one_identity_share_one_fd_closed_by_the_last(foreign: Foreign) -> None:
    pidfds = Pidfds()
    identity = _sleeper(foreign)
    first = pidfds.acquire(identity)
    second = pidfds.acquire(identity)
    assert first is not None and second == first and pidfds.shared_count() == 1
    assert pidfds.acquire_pid(identity.pid) == (identity, first)
    pidfds.release(identity)
    pidfds.release(identity)
    assert not _closed(first)  # the third hold (acquire_pid) keeps it open
    pidfds.release(identity)
    assert _closed(first) and pidfds.shared_count() == 0
    assert pidfds.acquire_pid(identity.pid) is None


def test_share_hands_back_the_fd_already_shared_and_closes_the_new_one(
        foreign: Foreign) -> None:
    pidfds = Pidfds()
    identity = _sleeper(foreign)
    held = pidfds.acquire(identity)
    assert held is not None
    extra = os.pidfd_open(identity.pid)
    assert pidfds.share(identity, extra) == held and _closed(extra)
    pidfds.release(identity)
    pidfds.release(identity)
    assert _closed(held)


def test_a_recycled_identity_is_neither_opened_nor_shared(foreign: Foreign) -> None:
    pidfds = Pidfds()
    identity = _sleeper(foreign)
    held = pidfds.acquire(identity)
    older = Identity(identity.boot_id, identity.pid, identity.starttime_ticks - 1)
    assert pidfds.acquire(older) is None and pidfds.shared_count() == 1
    assert pidfds.acquire_pid(identity.pid) == (identity, held)
    pidfds.release(identity)
    pidfds.release(identity)


@pytest.fixture
def children() -> Iterator[Children]:
    registry = Children()
    yield registry
    for pid in registry.pids():
        os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: registry.reap() is not None and not registry.pids(),
             message="children reaped")
    registry.close()


def test_a_child_costs_one_pidfd_for_the_registry_the_watcher_and_the_cache(
        children: Children, tmp_path: Path) -> None:
    """Before: three pidfds per job (one per holder)."""
    exits = ExitCalls()
    watcher = ExitWatcher(exits)
    cache = ProcCache()
    watcher.start()
    try:
        before = _open_fds()
        identity = children.spawn(SLEEP, cwd=tmp_path, env=service_env({}),
                                  log_path=tmp_path / "main.log")
        watcher.sync([identity])
        assert identity in watcher.watching()
        wait_for(lambda: (cache.lookup([identity.pid]).get(identity.pid) or None)
                 and len(cache) == 1, message="cached once its gate opened")
        assert _open_fds() == before + 1  # the one shared pidfd
        os.killpg(identity.pid, signal.SIGKILL)
        wait_for(lambda: exits.has(identity), message="the exit reported through the shared fd")
        reaped = wait_for(lambda: children.reap().get(identity.pid), message="reaped")
        assert reaped.returncode == -signal.SIGKILL
        assert cache.lookup([identity.pid]) == {} and len(cache) == 0
        wait_for(lambda: _open_fds() == before, message="the last holder closed it")
    finally:
        watcher.stop()
        cache.close()


def test_a_watch_dropped_and_added_back_before_the_watcher_ran_still_reports_the_exit(
        foreign: Foreign) -> None:
    """The same shared fd is released (the drop) and held again (the add) in one round: the
    watcher must release first and register after, or it would lose the registration."""
    pidfds = Pidfds()
    exits = ExitCalls()
    watcher = ExitWatcher(exits, pidfds=pidfds)
    identity = _sleeper(foreign)
    keeper = pidfds.acquire(identity)  # another holder, so the fd number stays the same
    watcher.sync([identity])
    watcher.sync([])
    watcher.sync([identity])
    watcher.start()
    try:
        os.kill(identity.pid, signal.SIGKILL)
        wait_for(lambda: exits.has(identity), message="exit reported")
        assert keeper is not None and not _closed(keeper)
    finally:
        watcher.stop()
        pidfds.release(identity)
    assert pidfds.shared_count() == 0


def test_a_watch_added_and_dropped_before_the_watcher_ran_is_released_unwatched(
        foreign: Foreign) -> None:
    pidfds = Pidfds()
    exits = ExitCalls()
    watcher = ExitWatcher(exits, pidfds=pidfds)
    gone, kept = _sleeper(foreign), _sleeper(foreign)
    watcher.sync([gone, kept])
    watcher.update([], [gone])
    watcher.start()
    try:
        wait_for(lambda: pidfds.shared_count() == 1, message="the dropped watch released")
        os.kill(gone.pid, signal.SIGKILL)
        os.kill(kept.pid, signal.SIGKILL)
        wait_for(lambda: exits.has(kept), message="the kept one's exit reported")
        assert not exits.has(gone) and watcher.watching() == frozenset()
    finally:
        watcher.stop()
    assert pidfds.shared_count() == 0
