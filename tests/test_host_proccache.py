"""ProcCache against real processes: snapshots live exactly as long as their pidfd says."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.host.identity import proc_info
from reconciler.host.proccache import ProcCache
from reconciler.host.spawn import Children
from tests.conftest import Foreign
from tests.helpers import service_env, wait_for

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> Iterator[ProcCache]:
    procs = ProcCache(max_age=30.0, clock=clock)
    yield procs
    procs.close()


def started(foreign: Foreign) -> int:
    pid = foreign.start(SLEEP).pid
    wait_for(lambda: (info := proc_info(pid)) and info.cmdline == tuple(SLEEP), message="exec")
    return pid


def test_a_live_process_is_read_once_then_served_from_memory(cache: ProcCache,
                                                             foreign: Foreign) -> None:
    pid = started(foreign)
    first = cache.lookup([pid])
    assert first == {pid: proc_info(pid)}
    again = cache.lookup([pid])
    assert again[pid] is first[pid] and len(cache) == 1


def test_an_exited_process_is_dropped_at_once_even_as_an_unreaped_zombie(
        cache: ProcCache, foreign: Foreign) -> None:
    proc = foreign.start(SLEEP)
    wait_for(lambda: proc_info(proc.pid), message="start")
    assert proc.pid in cache.lookup([proc.pid])
    os.kill(proc.pid, signal.SIGKILL)
    wait_for(lambda: proc_info(proc.pid) is None, message="death (a zombie: not reaped yet)")
    assert cache.lookup([proc.pid]) == {} and len(cache) == 0


def test_pids_no_longer_asked_about_are_forgotten(cache: ProcCache, foreign: Foreign) -> None:
    a, b = started(foreign), started(foreign)
    assert set(cache.lookup([a, b])) == {a, b}
    assert set(cache.lookup([b])) == {b} and len(cache) == 1


def test_a_snapshot_is_read_again_after_max_age(cache: ProcCache, clock: Clock,
                                                foreign: Foreign) -> None:
    pid = started(foreign)
    first = cache.lookup([pid])[pid]
    clock.now += 29.0
    assert cache.lookup([pid])[pid] is first
    clock.now += 1.0
    fresh = cache.lookup([pid])[pid]
    assert fresh is not first and fresh == first


def test_a_keyed_lookup_keeps_others_and_expires_the_oldest_first(
        cache: ProcCache, clock: Clock, foreign: Foreign) -> None:
    """forget_others=False (a keyed pass): the pids not asked about stay cached, and the
    ones taken more than max_age ago are read again; the sessions follow the entries."""
    a = started(foreign)
    old = cache.lookup([a])[a]
    clock.now += 20.0
    b = started(foreign)
    cache.lookup([b], forget_others=False)
    assert len(cache) == 2 and set(cache.sessions()) == {old.session, proc_info(b).session}
    clock.now += 15.0  # a is 35 s old, b 15 s
    assert cache.lookup([b], forget_others=False)[b] is not None and len(cache) == 1
    assert set(cache.sessions()) == {proc_info(b).session}
    assert cache.lookup([a], forget_others=False)[a] is not old  # read again


def test_missing_pids_are_simply_absent(cache: ProcCache) -> None:
    assert cache.lookup([2**22 + 12345]) == {} and len(cache) == 0


def test_a_child_still_in_its_spawn_gate_is_not_cached(cache: ProcCache, tmp_path: Path) -> None:
    """Its command line is about to change when the gate opens."""
    children = Children()
    seen: dict[int, object] = {}

    def enroll(identity: object) -> None:
        pid = identity.pid  # type: ignore[attr-defined]
        wait_for(lambda: proc_info(pid) and proc_info(pid).cmdline, message="gate")  # type: ignore[union-attr]
        seen.update(cache.lookup([pid]))

    identity = children.spawn(SLEEP, cwd=tmp_path, env=service_env({}),
                              log_path=tmp_path / "main.log", enroll=enroll)
    try:
        assert identity.pid in seen and len(cache) == 0
        wait_for(lambda: cache.lookup([identity.pid]).get(identity.pid) is not None
                 and cache.lookup([identity.pid])[identity.pid].cmdline == tuple(SLEEP),
                 message="the command to run")
        assert len(cache) == 1
    finally:
        os.killpg(identity.pid, signal.SIGKILL)
        wait_for(lambda: identity.pid in children.reap(), message="reaped")
        children.close()


def test_close_releases_every_pidfd(clock: Clock, foreign: Foreign) -> None:
    procs = ProcCache(clock=clock)
    pids = [started(foreign) for _ in range(3)]
    before = len(os.listdir("/proc/self/fd"))
    procs.lookup(pids)
    assert len(os.listdir("/proc/self/fd")) == before + 3
    procs.close()
    assert len(os.listdir("/proc/self/fd")) == before and len(procs) == 0
