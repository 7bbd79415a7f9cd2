"""ExitWatcher with real processes: own children, someone else's children, and orphans."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.host import procfs
from reconciler.host.exits import ExitWatcher
from reconciler.host.identity import identity_of
from reconciler.host.pidfd import Pidfds
from reconciler.identity import Identity
from tests.conftest import Foreign
from tests.helpers import ExitCalls, wait_for


@pytest.fixture
def calls() -> ExitCalls:
    return ExitCalls()


@pytest.fixture
def watcher(calls: ExitCalls) -> Iterator[ExitWatcher]:
    w = ExitWatcher(calls, poll_interval=0.05)
    w.start()
    yield w
    w.stop()


def _sleeper(foreign: Foreign) -> tuple[subprocess.Popen[bytes], Identity]:
    proc = foreign.start(["sleep", "60"])
    identity = identity_of(proc.pid)
    assert identity is not None
    return proc, identity


def _reported(calls: ExitCalls, identity: Identity) -> None:
    wait_for(lambda: calls.has(identity), message=f"on_exit({identity})")


def _is_zombie(pid: int) -> bool:
    stat = procfs.read_stat(pid)
    return stat is not None and stat.zombie


def test_own_child_killed_is_reported_and_not_reaped(foreign: Foreign, calls: ExitCalls,
                                                     watcher: ExitWatcher) -> None:
    proc, identity = _sleeper(foreign)
    watcher.sync([identity])
    assert watcher.watching() == {identity}
    proc.kill()
    _reported(calls, identity)
    assert calls.seen == [identity]
    assert watcher.watching() == frozenset()
    # Still a zombie: reaping is Children.reap()'s job, not the watcher's.
    assert os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    assert proc.wait(timeout=5) == -signal.SIGKILL


def _pid_from_file(path: Path) -> int:
    wait_for(lambda: path.exists() and path.read_text().endswith("\n"), message="pid file")
    return int(path.read_text())


@pytest.fixture
def not_our_child(foreign: Foreign, tmp_path: Path,
                  request: pytest.FixtureRequest) -> Callable[[bool], Identity]:
    """A `sleep 60` whose parent is a shell (still running, or exited: then the sleep is an
    orphan, like a process adopted from an earlier controller run). Killed at teardown
    through a pidfd, so a recycled pid can never be hit."""
    pidfds: list[int] = []

    def kill_all() -> None:
        for fd in pidfds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            os.close(fd)

    request.addfinalizer(kill_all)

    def start(orphan: bool) -> Identity:
        pid_file = tmp_path / f"pid{len(pidfds)}"
        script = f"sleep 60 & echo $! > {pid_file}" + ("" if orphan else "; wait")
        shell = foreign.start(["sh", "-c", script])
        pid = _pid_from_file(pid_file)
        pidfds.append(os.pidfd_open(pid))
        identity = identity_of(pid)
        assert identity is not None
        if orphan:
            shell.wait(timeout=5)
        assert procfs.read_stat(pid).ppid != os.getpid()  # type: ignore[union-attr]
        return identity

    return start


def _pidfd_kill(identity: Identity) -> None:
    fd = os.pidfd_open(identity.pid)
    try:
        assert identity_of(identity.pid) == identity
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        os.close(fd)


@pytest.mark.parametrize("orphan", [False, True], ids=["child-of-shell", "orphan"])
def test_process_that_is_not_our_child(not_our_child: Callable[[bool], Identity],
                                       calls: ExitCalls, watcher: ExitWatcher,
                                       orphan: bool) -> None:
    identity = not_our_child(orphan)
    watcher.sync([identity])
    assert watcher.watching() == {identity}
    _pidfd_kill(identity)
    _reported(calls, identity)
    assert calls.seen == [identity]


def test_already_dead_is_reported_promptly(foreign: Foreign, calls: ExitCalls,
                                           watcher: ExitWatcher) -> None:
    proc, identity = _sleeper(foreign)
    proc.kill()
    proc.wait(timeout=5)  # reaped: the pid is gone
    watcher.sync([identity])
    assert watcher.watching() == frozenset()
    _reported(calls, identity)


def test_zombie_is_reported_promptly(foreign: Foreign, calls: ExitCalls,
                                     watcher: ExitWatcher) -> None:
    proc, identity = _sleeper(foreign)
    proc.kill()
    wait_for(lambda: _is_zombie(proc.pid), message="zombie")
    watcher.sync([identity])
    assert watcher.watching() == frozenset()
    _reported(calls, identity)


def test_dead_identity_reported_once_while_still_synced(foreign: Foreign, calls: ExitCalls,
                                                        watcher: ExitWatcher) -> None:
    dead_proc, dead = _sleeper(foreign)
    dead_proc.kill()
    dead_proc.wait(timeout=5)
    watcher.sync([dead])
    _reported(calls, dead)
    proc, alive = _sleeper(foreign)
    watcher.sync([dead, alive])  # a controller that has not caught up yet
    proc.kill()
    _reported(calls, alive)
    # A repeat for `dead` would have been reported before `alive` (queued by the sync).
    assert calls.seen == [dead, alive]


def test_sync_dropping_an_identity_stops_watching_it(foreign: Foreign, calls: ExitCalls,
                                                     watcher: ExitWatcher) -> None:
    dropped_proc, dropped = _sleeper(foreign)
    kept_proc, kept = _sleeper(foreign)
    watcher.sync([dropped, kept])
    watcher.sync([kept])
    assert watcher.watching() == {kept}
    dropped_proc.kill()
    dropped_proc.wait(timeout=5)
    kept_proc.kill()
    _reported(calls, kept)
    assert calls.seen == [kept]


def test_update_swaps_a_few_identities_as_a_sync_of_the_whole_set_would(
        foreign: Foreign, calls: ExitCalls, watcher: ExitWatcher) -> None:
    """A keyed pass respawned one job: the dead identity leaves (also from what was already
    reported), the new one is watched, the others stay watched untouched."""
    old_proc, old = _sleeper(foreign)
    kept_proc, kept = _sleeper(foreign)
    watcher.sync([old, kept])
    old_proc.kill()
    _reported(calls, old)
    new_proc, new = _sleeper(foreign)
    watcher.update([new], [old])
    assert watcher.watching() == {kept, new}
    watcher.update([old], [])  # synced again: a sync would report it once more, as update does
    wait_for(lambda: calls.seen == [old, old], message="the second report")
    new_proc.kill()
    _reported(calls, new)
    kept_proc.kill()
    _reported(calls, kept)
    assert calls.seen == [old, old, new, kept]


def test_recycled_identity_is_reported_and_never_watched(foreign: Foreign, calls: ExitCalls,
                                                         watcher: ExitWatcher) -> None:
    _proc, real = _sleeper(foreign)
    older = real._replace(starttime_ticks=real.starttime_ticks - 1)  # same pid, other process
    other_boot = real._replace(boot_id="0" * 32)
    watcher.sync([older, other_boot])
    assert watcher.watching() == frozenset()
    _reported(calls, older)
    _reported(calls, other_boot)
    assert real not in calls.seen


def test_callback_errors_do_not_kill_the_thread(foreign: Foreign) -> None:
    seen: list[Identity] = []

    def flaky(identity: Identity) -> None:
        seen.append(identity)
        if len(seen) == 1:
            raise RuntimeError("boom")

    w = ExitWatcher(flaky)
    w.start()
    try:
        first_proc, first = _sleeper(foreign)
        second_proc, second = _sleeper(foreign)
        w.sync([first, second])
        first_proc.kill()
        wait_for(lambda: first in seen, message="first exit")
        second_proc.kill()
        wait_for(lambda: second in seen, message="second exit after the error")
    finally:
        w.stop()


def _no_pidfds(_pid: int) -> int:
    raise OSError(errno.ENOSYS, "pidfd_open not implemented")


def test_polling_fallback_without_pidfds(foreign: Foreign, calls: ExitCalls) -> None:
    w = ExitWatcher(calls, poll_interval=0.05, pidfds=Pidfds(_no_pidfds))
    w.start()
    try:
        proc, identity = _sleeper(foreign)
        _other, other = _sleeper(foreign)
        w.sync([identity, other])
        assert w.watching() == {identity, other}
        proc.kill()
        proc.wait(timeout=5)
        _reported(calls, identity)
        assert w.watching() == {other}
    finally:
        w.stop()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_stop_is_prompt_and_closes_every_fd(foreign: Foreign, calls: ExitCalls) -> None:
    procs = [_sleeper(foreign) for _ in range(3)]
    _dropped_proc, dropped = _sleeper(foreign)
    before = _open_fds()
    w = ExitWatcher(calls)
    w.start()
    w.sync([identity for _, identity in procs] + [dropped])
    w.sync([identity for _, identity in procs])  # one fd waiting to be closed by the thread
    assert len(_open_fds() - before) >= 4  # 3 pidfds + the wake-up eventfd (+ epoll)
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 1.0
    assert _open_fds() == before
    assert not any(t.name == "exit-watcher" and t.is_alive() for t in threading.enumerate())
    w.sync([dropped])  # after stop: ignored, opens nothing
    assert _open_fds() == before
    assert calls.seen == []


def test_stop_without_start_closes_fds(foreign: Foreign, calls: ExitCalls) -> None:
    _proc, identity = _sleeper(foreign)
    before = _open_fds()
    w = ExitWatcher(calls)
    w.sync([identity])
    w.stop()
    assert _open_fds() == before
