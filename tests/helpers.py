"""Small test utilities: waiting on conditions, never sleeping for synchronization."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from reconciler.host import procfs
from reconciler.host.sockets import inspect_unix_sockets
from reconciler.observed import SocketState

T = TypeVar("T")


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
