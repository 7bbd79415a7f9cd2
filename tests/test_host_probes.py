"""Health probes against real listeners: one bounded attempt each (reconciler.host.probes)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reconciler.host import probes
from reconciler.spec.model import ExecHealth, HttpHealth, TcpHealth, UnixHealth
from tests.helpers import wait_for
from tests.probe_peers import Listeners, Trickler, in_thread

FAST = {"interval": "50ms", "timeout": "1s"}


@pytest.fixture
def http_server() -> Iterator[Callable[[int], str]]:
    """A tiny HTTP server answering GET /<status> with that status; returns its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.strip("/")))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    port = server.server_address[1]
    yield lambda status: f"http://127.0.0.1:{port}/{status}"
    server.shutdown()
    server.server_close()
    thread.join()


# --- single probes ---------------------------------------------------------------------------


def test_tcp_probe_ready_against_a_real_listener(free_port: Callable[[], int],
                                                 listener: Listeners) -> None:
    port = free_port()
    probe = TcpHealth(tcp=port, **FAST)
    assert probes.probe_reason(probe) == "connection refused"
    listener(port)
    assert probes.probe_reason(probe) is None


def test_http_probe_2xx_is_ready_500_is_not(http_server: Callable[[int], str]) -> None:
    assert probes.probe_reason(HttpHealth(http=http_server(200), **FAST)) is None
    assert probes.probe_reason(HttpHealth(http=http_server(204), **FAST)) is None
    assert probes.probe_reason(HttpHealth(http=http_server(500), **FAST)) == "HTTP 500"
    assert probes.probe_reason(HttpHealth(http=http_server(404), **FAST)) == "HTTP 404"


def test_http_probe_ignores_proxy_settings(http_server: Callable[[int], str],
                                           free_port: Callable[[], int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    assert probes.probe_reason(HttpHealth(http=http_server(200), **FAST)) is None


def test_http_probe_connection_refused(free_port: Callable[[], int]) -> None:
    probe = HttpHealth(http=f"http://127.0.0.1:{free_port()}/", **FAST)
    assert probes.probe_reason(probe) == "connection refused"


def test_unix_probe(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    probe = UnixHealth(unix=str(path), **FAST)
    assert probes.probe_reason(probe) == "no such file or directory"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(8)
        assert probes.probe_reason(probe) is None
    assert probes.probe_reason(probe) == "connection refused"  # stale socket file


def test_exec_probe_exit_codes(tmp_path: Path) -> None:
    assert probes.probe_reason(ExecHealth(exec=[sys.executable, "-c", "pass"], **FAST)) is None
    assert probes.probe_reason(ExecHealth(exec="exit 1", **FAST)) == "exit 1"
    test_sub = ExecHealth(exec="test -d sub", **FAST)
    assert probes.probe_reason(test_sub, cwd=str(tmp_path)) == "exit 1"
    (tmp_path / "sub").mkdir()
    assert probes.probe_reason(test_sub, cwd=str(tmp_path)) is None
    assert probes.probe_reason(ExecHealth(exec='test "$X" = 1', **FAST), env={"X": "1"}) is None


def test_exec_probe_timeout_kills_its_whole_group() -> None:
    mark = f"probe-{uuid.uuid4()}"
    probe = ExecHealth(exec="sleep 30; true", interval="50ms", timeout="100ms")
    try:
        assert probes.probe_reason(probe, env={"PROBE_MARK": mark}) == "timeout"
        wait_for(lambda: not pids_with_mark(mark), message="the probe's sleep to be killed")
    finally:
        for pid in pids_with_mark(mark):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def pids_with_mark(mark: str) -> list[int]:
    """Live processes carrying PROBE_MARK=mark (a zombie's environ reads empty)."""
    needle = f"PROBE_MARK={mark}".encode()
    found = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and needle in Path(f"/proc/{entry}/environ").read_bytes():
                found.append(int(entry))
    return found


def test_exec_probe_missing_command() -> None:
    reason = probes.probe_reason(ExecHealth(exec=["/nonexistent/probe"], **FAST))
    assert reason is not None and reason.startswith("cannot run /nonexistent/probe")


# --- bounds: a probe ends by its timeout, whatever the other side does ----------------------


def test_http_timeout_bounds_the_whole_probe_not_each_read(trickler: Trickler) -> None:
    """urllib's timeout applied per recv: a byte every 0.3 s kept a 0.5 s probe going for as
    long as the server trickled (60 s here)."""
    probe = HttpHealth(http=trickler.url, interval="50ms", timeout="500ms")
    result = in_thread(lambda: probes.probe_reason(probe))
    wait_for(lambda: result, timeout=10.0, message="the probe to give up mid-trickle")
    assert result == ["timeout"]
    assert trickler.connections == 1 and not trickler.stopping.is_set()


def test_a_callers_deadline_cuts_a_longer_probe_timeout(trickler: Trickler,
                                                        tmp_path: Path) -> None:
    """`--once --wait` passes its own deadline; a probe with a 60 s timeout ends by it."""
    mark = f"probe-{uuid.uuid4()}"
    slow = [HttpHealth(http=trickler.url, interval="1s", timeout="60s"),
            ExecHealth(exec="sleep 60", interval="1s", timeout="60s")]
    try:
        for probe in slow:
            result = in_thread(lambda probe=probe: probes.probe_reason(
                probe, env={"PROBE_MARK": mark}, deadline=time.monotonic() + 0.3))
            wait_for(lambda result=result: result, timeout=10.0, message=f"{probe.kind} probe")
            assert result == ["timeout"]
        wait_for(lambda: not pids_with_mark(mark), message="the exec probe's sleep to be killed")
    finally:
        for pid in pids_with_mark(mark):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_unix_probe_against_a_listener_that_never_accepts_ends_promptly(
        tmp_path: Path) -> None:
    """Once the backlog of a listener that never accepts is full, a blocking connect() waits
    for good; with the probe's deadline it fails at once (Linux: EAGAIN) or by the deadline."""
    path = str(tmp_path / "full.sock")
    clients: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(0)
        try:
            with contextlib.suppress(BlockingIOError):
                while True:  # fill the backlog
                    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    clients.append(client)
                    client.setblocking(False)
                    client.connect(path)
            probe = UnixHealth(unix=path, interval="1s", timeout="60s")
            result = in_thread(lambda: probes.probe_reason(
                probe, deadline=time.monotonic() + 0.3))
            wait_for(lambda: result, timeout=10.0, message="the unix probe to give up")
            assert result[0] in ("timeout", "resource temporarily unavailable")
        finally:
            for client in clients:
                client.close()


def test_http_probe_reads_a_bounded_head_and_never_the_body() -> None:
    """A server that sends endless headers fast is read up to MAX_HEAD_BYTES, not forever."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.setblocking(False)
        theirs.send(b"HTTP/1.1 200 OK\r\nX-Flood: ")
        with contextlib.suppress(BlockingIOError):
            while True:  # as much as the kernel buffers: far more than the cap
                theirs.send(b"a" * 65536)
        head = probes.read_head(ours, time.monotonic() + 5.0)
        assert len(head) == probes.MAX_HEAD_BYTES
        assert probes.parse_head(head) == (200, None)


def test_http_probe_follows_a_redirect_within_the_deadline(
        http_server: Callable[[int], str], free_port: Callable[[], int]) -> None:
    """urllib followed redirects; the raw-socket probe keeps doing so (http:// only)."""
    port = free_port()
    ready = http_server(204)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen(8)
        redirect = in_thread(lambda: serve_once(server, f"HTTP/1.1 302 Found\r\n"
                                                        f"Location: {ready}\r\n\r\n"))
        assert probes.probe_reason(HttpHealth(http=f"http://127.0.0.1:{port}/", **FAST)) is None
        wait_for(lambda: redirect, message="the redirecting server to be asked")
        assert redirect[0].startswith(b"GET / HTTP/1.1\r\n")


def serve_once(server: socket.socket, answer: str) -> bytes:
    """Accept one connection, read its request head, answer, close; returns the request."""
    server.settimeout(10)
    conn, _ = server.accept()
    with conn:
        conn.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        conn.sendall(answer.encode())
        return request


def test_exec_probe_leaves_nothing_behind_after_it_exits() -> None:
    """A probe that backgrounds something and exits 0 would leave one orphan per interval."""
    mark = f"probe-{uuid.uuid4()}"
    probe = ExecHealth(exec="sleep 30 & exit 0", interval="1s", timeout="5s")
    try:
        assert probes.probe_reason(probe, env={"PROBE_MARK": mark}) is None
        wait_for(lambda: not pids_with_mark(mark), timeout=3.0,
                 message="the backgrounded sleep to be killed")
    finally:
        for pid in pids_with_mark(mark):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
