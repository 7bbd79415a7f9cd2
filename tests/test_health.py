"""Health probes against real listeners, and the HealthMonitor's ready/unhealthy transitions."""

from __future__ import annotations

import contextlib
import json
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

from reconciler import health
from reconciler.controller import PassResult, Reconciler
from reconciler.health import HealthMonitor, HealthState, ProbeTarget
from reconciler.settings import Settings
from reconciler.spec.model import ExecHealth, HttpHealth, TcpHealth, UnixHealth
from reconciler.state.lock import LockTimeout, StateLock
from tests.conftest import Foreign
from tests.helpers import wait_for

FAST = {"interval": "50ms", "timeout": "1s"}
SLEEPER = [sys.executable, "-c", "import time; time.sleep(3600)"]


class Counter:
    """An on_change callback that counts its calls, safely across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls = 0

    def __call__(self) -> None:
        with self._lock:
            self._calls += 1

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls


@pytest.fixture
def listener() -> Iterator[Callable[[int], socket.socket]]:
    """In-process TCP listeners on 127.0.0.1, closed at teardown."""
    opened: list[socket.socket] = []

    def listen(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        opened.append(sock)
        return sock

    yield listen
    for sock in opened:
        sock.close()


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


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    server = Trickler()
    yield server
    server.close()


def in_thread(call: Callable[[], object]) -> list[object]:
    """Run `call` on a daemon thread; the returned list receives its result."""
    box: list[object] = []
    threading.Thread(target=lambda: box.append(call()), daemon=True).start()
    return box


@pytest.fixture
def monitors() -> Iterator[Callable[[Callable[[], None]], HealthMonitor]]:
    """Started monitors, all stopped at teardown even when a test fails."""
    started: list[HealthMonitor] = []

    def make(on_change: Callable[[], None]) -> HealthMonitor:
        monitor = HealthMonitor(on_change)
        monitor.start()
        started.append(monitor)
        return monitor

    yield make
    for monitor in started:
        monitor.stop()


def target(job_id: str, probe: object, started_at: float | None = None) -> ProbeTarget:
    return ProbeTarget(job_id=job_id, health=probe, cwd=None, env=None,  # type: ignore[arg-type]
                       started_at=time.time() if started_at is None else started_at)


def state_of(monitor: HealthMonitor, job_id: str) -> HealthState:
    return monitor.states()[job_id]


# --- single probes ---------------------------------------------------------------------------

def test_tcp_probe_ready_against_a_real_listener(free_port: Callable[[], int],
                                                 listener: Callable[[int], socket.socket]) -> None:
    port = free_port()
    probe = TcpHealth(tcp=port, **FAST)
    assert health.probe_reason(probe) == "connection refused"
    listener(port)
    assert health.probe(probe)
    assert health.probe_reason(probe) is None


def test_http_probe_2xx_is_ready_500_is_not(http_server: Callable[[int], str]) -> None:
    assert health.probe(HttpHealth(http=http_server(200), **FAST))
    assert health.probe(HttpHealth(http=http_server(204), **FAST))
    assert health.probe_reason(HttpHealth(http=http_server(500), **FAST)) == "HTTP 500"
    assert not health.probe(HttpHealth(http=http_server(404), **FAST))


def test_http_probe_ignores_proxy_settings(http_server: Callable[[int], str],
                                           free_port: Callable[[], int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    assert health.probe(HttpHealth(http=http_server(200), **FAST))


def test_http_probe_connection_refused(free_port: Callable[[], int]) -> None:
    probe = HttpHealth(http=f"http://127.0.0.1:{free_port()}/", **FAST)
    assert health.probe_reason(probe) == "connection refused"


def test_unix_probe(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    probe = UnixHealth(unix=str(path), **FAST)
    assert health.probe_reason(probe) == "no such file or directory"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(8)
        assert health.probe(probe)
    assert health.probe_reason(probe) == "connection refused"  # stale socket file


def test_exec_probe_exit_codes(tmp_path: Path) -> None:
    assert health.probe(ExecHealth(exec=[sys.executable, "-c", "pass"], **FAST))
    assert health.probe_reason(ExecHealth(exec="exit 1", **FAST)) == "exit 1"
    assert health.probe(ExecHealth(exec="test -d sub", **FAST), cwd=str(tmp_path)) is False
    (tmp_path / "sub").mkdir()
    assert health.probe(ExecHealth(exec="test -d sub", **FAST), cwd=str(tmp_path))
    assert health.probe(ExecHealth(exec='test "$X" = 1', **FAST), env={"X": "1"})


def test_exec_probe_timeout_kills_its_whole_group() -> None:
    mark = f"probe-{uuid.uuid4()}"
    probe = ExecHealth(exec="sleep 30; true", interval="50ms", timeout="100ms")
    try:
        assert health.probe_reason(probe, env={"PROBE_MARK": mark}) == "timeout"
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
    reason = health.probe_reason(ExecHealth(exec=["/nonexistent/probe"], **FAST))
    assert reason is not None and reason.startswith("cannot run /nonexistent/probe")


# --- HealthMonitor ---------------------------------------------------------------------------

def test_monitor_becomes_ready_and_calls_on_change(free_port: Callable[[], int],
                                                   listener: Callable[[int], socket.socket],
                                                   monitors: Callable[..., HealthMonitor]) -> None:
    port = free_port()
    changes = Counter()
    monitor = monitors(changes)
    monitor.sync([target("job", TcpHealth(tcp=port, **FAST))])
    wait_for(lambda: state_of(monitor, "job").last_error == "connection refused",
             message="a failed probe")
    starting = state_of(monitor, "job")
    assert not starting.ready
    assert starting.consecutive_failures == 0  # not ready yet: "starting", not unhealthy
    assert changes.calls == 0
    listener(port)
    wait_for(lambda: state_of(monitor, "job").ready, message="ready")
    wait_for(lambda: changes.calls == 1, message="on_change")
    assert state_of(monitor, "job") == HealthState(True, 0, None)


def test_monitor_counts_failures_after_ready(free_port: Callable[[], int], foreign: Foreign,
                                             monitors: Callable[..., HealthMonitor]) -> None:
    port = free_port()
    server = foreign.listen_tcp(port)
    changes = Counter()
    monitor = monitors(changes)
    monitor.sync([target("job", TcpHealth(tcp=port, failures=3, **FAST))])
    wait_for(lambda: changes.calls == 1, message="ready")
    server.kill()
    server.wait()
    wait_for(lambda: state_of(monitor, "job").consecutive_failures >= 3, message="unhealthy")
    wait_for(lambda: changes.calls == 2, message="on_change at the threshold")
    wait_for(lambda: state_of(monitor, "job").consecutive_failures >= 6, message="more failures")
    assert changes.calls == 2  # once per reaching the threshold, not on every failure
    state = state_of(monitor, "job")
    assert state.ready and state.last_error == "connection refused"


def test_monitor_start_period_defers_counting(free_port: Callable[[], int], foreign: Foreign,
                                             monitors: Callable[..., HealthMonitor]) -> None:
    port = free_port()
    server = foreign.listen_tcp(port)
    changes = Counter()
    monitor = monitors(changes)
    monitor.sync([target("job", TcpHealth(tcp=port, failures=1, start_period="1h", **FAST))])
    wait_for(lambda: state_of(monitor, "job").ready, message="ready")
    server.kill()
    server.wait()
    wait_for(lambda: state_of(monitor, "job").last_error is not None, message="a failed probe")
    assert state_of(monitor, "job").consecutive_failures == 0  # with failures=1 it would be 1
    assert changes.calls == 1  # only "ready"


def test_resync_with_new_started_at_resets_state(free_port: Callable[[], int],
                                                 listener: Callable[[int], socket.socket],
                                                 monitors: Callable[..., HealthMonitor]) -> None:
    port = free_port()
    listener(port)
    changes = Counter()
    monitor = monitors(changes)
    probe = TcpHealth(tcp=port, **FAST)
    monitor.sync([target("job", probe, started_at=100.0)])
    wait_for(lambda: state_of(monitor, "job").ready, message="ready")
    monitor.sync([target("job", probe, started_at=100.0)])  # same process: state kept
    assert state_of(monitor, "job").ready
    monitor.sync([target("job", probe, started_at=200.0)])  # respawned: fresh
    assert state_of(monitor, "job") == HealthState(False, 0, None)
    wait_for(lambda: state_of(monitor, "job").ready, message="ready again")
    wait_for(lambda: changes.calls == 2, message="second on_change")
    monitor.sync([])
    assert monitor.states() == {}


def test_on_change_exceptions_do_not_kill_the_monitor(free_port: Callable[[], int],
                                                      listener: Callable[[int], socket.socket],
                                                      monitors: Callable[..., HealthMonitor]
                                                      ) -> None:
    port = free_port()
    listener(port)
    calls = Counter()

    def explode() -> None:
        calls()
        raise RuntimeError("boom")

    monitor = monitors(explode)
    probe = TcpHealth(tcp=port, **FAST)
    monitor.sync([target("a", probe, started_at=1.0)])
    wait_for(lambda: calls.calls == 1, message="first on_change")
    monitor.sync([target("a", probe, started_at=1.0), target("b", probe, started_at=1.0)])
    wait_for(lambda: calls.calls == 2, message="second on_change")


def test_stop_is_prompt_while_a_probe_hangs(free_port: Callable[[], int],
                                           listener: Callable[[int], socket.socket],
                                           monitors: Callable[..., HealthMonitor]) -> None:
    """An HTTP server that accepts but never answers holds the probe for its whole timeout."""
    port = free_port()
    server = listener(port)
    server.settimeout(10)
    changes = Counter()
    monitor = monitors(changes)
    monitor.sync([target("job", HttpHealth(http=f"http://127.0.0.1:{port}/", interval="50ms",
                                           timeout="60s"))])
    conn, _ = server.accept()  # the probe is connected and now waits for an answer
    with conn:  # closing it at the end releases the abandoned probe
        stopped = threading.Event()
        stopper = threading.Thread(target=lambda: (monitor.stop(), stopped.set()), daemon=True)
        stopper.start()
        wait_for(stopped.is_set, timeout=5.0, message="stop() to return")
        stopper.join()
        assert changes.calls == 0


def test_one_job_is_never_probed_twice_at_once(tmp_path: Path,
                                               monitors: Callable[..., HealthMonitor]) -> None:
    """Even across a re-sync (job respawned) while its old probe is still running."""
    trace = tmp_path / "trace"
    probe = ExecHealth(exec=f"echo start >> {trace}; sleep 0.03; echo end >> {trace}",
                       interval="10ms", timeout="5s")
    monitor = monitors(Counter())
    monitor.sync([target("job", probe, started_at=1.0)])
    wait_for(lambda: trace.exists() and trace.read_text().count("start") >= 2, message="probes")
    for started_at in (2.0, 3.0, 4.0):
        monitor.sync([target("job", probe, started_at=started_at)])
    wait_for(lambda: trace.read_text().count("start") >= 8, message="more probes")
    monitor.stop()
    wait_for(lambda: trace.read_text().endswith("end\n"), message="the last probe to finish")
    lines = trace.read_text().split()
    assert lines == ["start", "end"] * (len(lines) // 2)


# --- bounds: a probe ends by its timeout, whatever the other side does ----------------------

def test_http_timeout_bounds_the_whole_probe_not_each_read(trickler: Trickler) -> None:
    """urllib's timeout applied per recv: a byte every 0.3 s kept a 0.5 s probe going for as
    long as the server trickled (60 s here)."""
    probe = HttpHealth(http=trickler.url, interval="50ms", timeout="500ms")
    result = in_thread(lambda: health.probe_reason(probe))
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
            result = in_thread(lambda probe=probe: health.probe_reason(
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
            result = in_thread(lambda: health.probe_reason(
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
        head = health._read_head(ours, time.monotonic() + 5.0)
        assert len(head) == health.MAX_HEAD_BYTES
        assert health._parse_head(head) == (200, None)


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
        assert health.probe_reason(HttpHealth(http=f"http://127.0.0.1:{port}/", **FAST)) is None
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
        assert health.probe_reason(probe, env={"PROBE_MARK": mark}) is None
        wait_for(lambda: not pids_with_mark(mark), timeout=3.0,
                 message="the backgrounded sleep to be killed")
    finally:
        for pid in pids_with_mark(mark):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# --- scheduling: a slow probe never delays another job's ------------------------------------

def test_slow_probes_never_starve_a_healthy_job(trickler: Trickler, free_port: Callable[[], int],
                                                listener: Callable[[int], socket.socket],
                                                monitors: Callable[..., HealthMonitor]) -> None:
    """With a fixed pool of four workers, four trickling endpoints (30 s timeouts) held every
    worker and the healthy job waited for them."""
    port = free_port()
    listener(port)
    slow = HttpHealth(http=trickler.url, interval="50ms", timeout="30s")
    monitor = monitors(Counter())
    monitor.sync([*(target(f"slow{i}", slow) for i in range(6)),
                  target("healthy", TcpHealth(tcp=port, **FAST))])
    wait_for(lambda: state_of(monitor, "healthy").ready, timeout=5.0,
             message="the healthy job to be ready while the slow probes hang")
    wait_for(lambda: trickler.trickling == 6, timeout=5.0, message="all slow probes in flight")
    assert not any(state_of(monitor, f"slow{i}").ready for i in range(6))


def test_a_monitor_probe_gives_up_at_its_timeout_and_is_retried(
        trickler: Trickler, monitors: Callable[..., HealthMonitor]) -> None:
    """Its job's next probe is not held back by a trickling server (one probe in flight)."""
    monitor = monitors(Counter())
    monitor.sync([target("slow", HttpHealth(http=trickler.url, interval="50ms",
                                            timeout="500ms"))])
    wait_for(lambda: state_of(monitor, "slow").last_error == "timeout", timeout=5.0,
             message="a timed-out probe")
    wait_for(lambda: trickler.connections >= 2, timeout=5.0, message="the next probe")


# --- --once: probes run outside the state lock and within --wait ---------------------------

def test_once_probes_outside_the_lock_and_returns_by_its_wait(settings: Settings,
                                                             trickler: Trickler) -> None:
    """`--once` probed inside the locked pass, one job after another: a trickling endpoint
    with a 30 s timeout kept it past `--wait` while it held the state lock."""
    (settings.specs_dir / "web.yaml").write_text(
        "name: web\n"
        "actions:\n"
        f"  - name: main\n    process: true\n    cmd: {json.dumps(SLEEPER)}\n"
        f"    health: {{http: '{trickler.url}', interval: 50ms, timeout: 30s}}\n")
    os.chmod(settings.specs_dir / "web.yaml", 0o644)
    lock_free: list[bool] = []

    def try_the_lock() -> None:  # runs while a probe is connected
        try:
            with StateLock(settings.lock_path, timeout=0.5):
                lock_free.append(True)
        except LockTimeout:
            lock_free.append(False)

    def once() -> PassResult:  # a Reconciler's SQLite connection belongs to one thread
        with Reconciler(settings) as reconciler:
            return reconciler.converge(wait=1.0)

    trickler.on_connect = try_the_lock
    result = in_thread(once)
    wait_for(lambda: result, timeout=10.0, message="converge to return by its wait")
    (passed,) = result
    assert isinstance(passed, PassResult) and not passed.converged
    assert [(j.action, j.phase) for j in passed.jobs] == [("main", "starting")]
    assert lock_free and all(lock_free)
