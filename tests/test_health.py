"""Health probes against real listeners, and the HealthMonitor's ready/unhealthy transitions."""

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

from reconciler import health
from reconciler.health import HealthMonitor, HealthState, ProbeTarget
from reconciler.spec.model import ExecHealth, HttpHealth, TcpHealth, UnixHealth
from tests.conftest import Foreign
from tests.helpers import wait_for

FAST = {"interval": "50ms", "timeout": "1s"}


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
