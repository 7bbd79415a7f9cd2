"""Small test utilities: waiting on conditions, never sleeping for synchronization."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from reconciler.environment import minimal_env
from reconciler.host import procfs
from reconciler.host.identity import proc_info
from reconciler.host.sockets import inspect_unix_sockets
from reconciler.host.spawn import JOB_ID_VAR
from reconciler.identity import Identity
from reconciler.observed import ProcInfo, SocketState

T = TypeVar("T")


class ExitCalls:
    """An `ExitWatcher`'s `on_exit`: records each identity reported, from the watcher's
    thread, for the test's thread to ask about."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[Identity] = []

    def __call__(self, identity: Identity) -> None:
        with self._lock:
            self.seen.append(identity)

    def has(self, identity: Identity) -> bool:
        with self._lock:
            return identity in self.seen


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02,
              message: str = "condition") -> T:
    """Poll `condition` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def cmdline(pid: int) -> tuple[str, ...]:
    """The command line of a live process; empty for one that is gone or a zombie."""
    snapshot = procfs.read_process(pid)
    return snapshot[1] if snapshot is not None else ()


def socket_state(path: str, candidates: Iterable[int] = ()) -> SocketState:
    """The state of one socket path (`inspect_unix_sockets` of just that path)."""
    return inspect_unix_sockets([path], candidates)[path]


def marked_processes(job_id: str) -> list[ProcInfo]:
    """Every live process whose environment carries RECONCILER_JOB_ID=job_id, by pid: what a
    test asserts on or cleans up (the controller finds them with `members.job_processes`)."""
    found = []
    for pid in procfs.iter_pids():
        snapshot = procfs.read_process_environ(pid, JOB_ID_VAR)
        if snapshot is None or snapshot[0].zombie or snapshot[2] != job_id:
            continue
        stat, argv, _ = snapshot
        found.append(ProcInfo(Identity(procfs.read_boot_id(), pid, stat.starttime), argv,
                              stat.session, stat.pgrp))
    return sorted(found, key=lambda p: p.pid)


def session_members(sid: int) -> list[ProcInfo]:
    """Live (non-zombie) processes in session `sid`."""
    members = []
    for pid in procfs.iter_pids():
        try:
            if sid <= 0 or os.getsid(pid) != sid:
                continue
        except OSError:
            continue
        info = proc_info(pid)
        if info is not None and info.session == sid:
            members.append(info)
    return members


def service_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What a service started by a test gets: `minimal_env` from this process's environment."""
    return minimal_env(extra or {}, os.environ)
