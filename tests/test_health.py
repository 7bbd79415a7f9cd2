"""HealthMonitor's scheduling against real listeners: ready/unhealthy transitions, one probe
in flight per job, slow probes that never starve another job's, and `--once` probing."""

from __future__ import annotations

import ast
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler import health
from reconciler.controller import PassResult, Reconciler
from reconciler.health import HealthMonitor, HealthState, ProbeTarget
from reconciler.settings import Settings
from reconciler.spec.model import ExecHealth, Health, HttpHealth, TcpHealth
from reconciler.state.lock import LockTimeout, StateLock
from tests.conftest import Foreign
from tests.helpers import wait_for
from tests.probe_peers import Listeners, Trickler, in_thread

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


def target(job_id: str, probe: Health, started_at: float | None = None) -> ProbeTarget:
    return ProbeTarget(job_id=job_id, health=probe, cwd=None, env=None,
                       started_at=time.time() if started_at is None else started_at)


def state_of(monitor: HealthMonitor, job_id: str) -> HealthState:
    return monitor.states()[job_id]


def test_the_scheduling_module_does_no_io_of_its_own() -> None:
    """Sockets, processes and signals are host work (reconciler.host.probes); health.py only
    schedules probes and keeps their results."""
    tree = ast.parse(Path(health.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported & {"os", "socket", "select", "signal", "subprocess"} == set()
    assert "reconciler.host.probes" in imported


# --- HealthMonitor ---------------------------------------------------------------------------


def test_monitor_becomes_ready_and_calls_on_change(free_port: Callable[[], int],
                                                   listener: Listeners,
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
                                                 listener: Listeners,
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
                                                      listener: Listeners,
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
                                           listener: Listeners,
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


# --- scheduling: a slow probe never delays another job's ------------------------------------


def test_slow_probes_never_starve_a_healthy_job(trickler: Trickler, free_port: Callable[[], int],
                                                listener: Listeners,
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
