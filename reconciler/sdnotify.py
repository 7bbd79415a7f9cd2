"""Telling systemd how the daemon is doing: the sd_notify datagram protocol.

The protocol is one `AF_UNIX`/`SOCK_DGRAM` datagram of `KEY=VALUE` lines to the socket in
`$NOTIFY_SOCKET` (a leading `@` is the abstract namespace), a few lines of code, so no
library. Without `NOTIFY_SOCKET` (not under systemd, or `Type=simple`) every call is a
no-op. Sending never raises: systemd being away must not take the controller down.

The watchdog interval comes from `WATCHDOG_USEC`, and applies to us only when
`WATCHDOG_PID` is unset or names this process (a variable inherited from a parent unit must
not make us ping for someone else). The daemon pings from its reconcile loop, never from a
timer thread: a loop stuck in a pass stops pinging, and systemd restarts the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends state changes to systemd's notify socket, if there is one."""

    def __init__(self, address: str | None, watchdog_seconds: float | None = None) -> None:
        self.address = _socket_address(address) if address else None
        self.watchdog_seconds = watchdog_seconds
        self._socket: socket.socket | None = None
        self._warned = False
        self._status: str | None = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], pid: int) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"), watchdog_of(environ, pid))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        """Only when it changed: a pass a second must not mean a datagram a second."""
        if status != self._status:
            self._status = status
            self.send(f"STATUS={status}")

    def reloading(self) -> None:
        """`Type=notify-reload`'s start of a reload: systemd waits for the next `READY=1`.
        `MONOTONIC_USEC` tells it which reload this is (older systemd ignores both)."""
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={now_usec}",
                  "STATUS=reloading: re-reading every spec file")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def send(self, *lines: str) -> bool:
        if self.address is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX,
                                             socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # never blocks: a service manager that stopped reading must not stall the loop
            # (the message is lost; the next status or ping says the same again)
            self._socket.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as err:
            if not self._warned:  # once: a missing socket would otherwise log every second
                log.warning("cannot notify systemd at %s: %s", os.fsdecode(self.address), err)
                self._warned = True
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _socket_address(text: str) -> bytes:
    """`@name` is the abstract namespace (a leading NUL byte), anything else a path."""
    return b"\0" + os.fsencode(text[1:]) if text.startswith("@") else os.fsencode(text)


def watchdog_of(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog interval systemd set for this process, in seconds; None if none."""
    usec, owner = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    if owner and owner != str(pid):
        return None
    return int(usec) / 1_000_000
