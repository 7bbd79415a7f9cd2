"""Peers for the health tests: real listeners on 127.0.0.1 that answer well, badly or never.

Shared by tests/test_host_probes.py (one probe against each) and tests/test_health.py (the
monitor scheduling many probes), through the `listener` and `trickler` fixtures in
tests/conftest.py.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable


class Listeners:
    """In-process TCP listeners on 127.0.0.1 that accept nothing by themselves (the kernel's
    backlog completes a connect); `close()` at teardown."""

    def __init__(self) -> None:
        self._opened: list[socket.socket] = []

    def __call__(self, port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        self._opened.append(sock)
        return sock

    def close(self) -> None:
        for sock in self._opened:
            sock.close()


class Trickler:
    """An HTTP server on 127.0.0.1 that answers every connection with a status line that never
    ends, one byte every 0.3 s for up to 60 s: every recv of a client gets data well within
    any per-operation timeout, so only a deadline for the whole probe ends it."""

    TRICKLE_SECONDS = 60.0

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self._server.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}/health"
        self.stopping = threading.Event()
        self.on_connect: Callable[[], None] = lambda: None
        self._lock = threading.Lock()
        self._connections = 0
        self._trickling = 0
        self._threads: list[threading.Thread] = [
            threading.Thread(target=self._accept, name="trickler", daemon=True)]
        self._threads[0].start()

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    @property
    def trickling(self) -> int:
        """Connections still being trickled to (the client has not gone away)."""
        with self._lock:
            return self._trickling

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _trickle(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._trickling += 1
        try:
            with conn:
                self.on_connect()
                conn.sendall(b"HTTP/1.1 200 ")
                until = time.monotonic() + self.TRICKLE_SECONDS
                while not self.stopping.wait(0.3) and time.monotonic() < until:  # the pace
                    conn.sendall(b"O")
        except OSError:
            pass  # the client gave up
        finally:
            with self._lock:
                self._trickling -= 1

    def close(self) -> None:
        self.stopping.set()
        for thread in list(self._threads):
            thread.join()
        self._server.close()



def in_thread(call: Callable[[], object]) -> list[object]:
    """Run `call` on a daemon thread; the returned list receives its result."""
    box: list[object] = []
    threading.Thread(target=lambda: box.append(call()), daemon=True).start()
    return box

