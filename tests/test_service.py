"""Running as a production service (DESIGN §8.3): systemd's notify protocol over a real
datagram socket, real signals to a real daemon, its log lines, and a SIGHUP in the middle of
a burst of edits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.daemon import Daemon
from reconciler.host import procfs
from reconciler.host.identity import identity_of
from reconciler.sdnotify import Notifier, watchdog_of
from reconciler.settings import Settings
from tests.helpers import wait_for
from tests.test_daemon import (
    SLEEPER,
    DaemonRunner,
    daemon_running,
    events,
    jobs,
    running,
    scripted,
    sleeper,
    write_spec,
)

Message = dict[str, str]


class NotifySocket:
    """What systemd listens on: a unix datagram socket named by `NOTIFY_SOCKET`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[Message] = []

    def expect(self, wanted: Callable[[Message], bool], timeout: float = 15.0) -> Message:
        """The next message `wanted` accepts (the ones before it are kept in `seen`)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and wanted(message):
                return message
        raise AssertionError(f"no such notify message within {timeout}s; saw {self.seen}")

    def receive(self, timeout: float) -> Message | None:
        self.sock.settimeout(timeout)
        try:
            raw = self.sock.recv(4096)
        except TimeoutError:
            return None
        message = dict(line.split("=", 1) for line in raw.decode().split("\n") if line)
        self.seen.append(message)
        return message

    def drain(self) -> None:
        while self.receive(0.001) is not None:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def daemon(settings: Settings, tmp_path: Path) -> Iterator[DaemonRunner]:
    runner = DaemonRunner(settings, tmp_path / "daemon.log")
    yield runner
    runner.cleanup()


def has(key: str, value: str | None = None) -> Callable[[Message], bool]:
    return lambda m: key in m and (value is None or m[key] == value)


def test_systemd_hears_ready_status_watchdog_reload_and_stopping(
        settings: Settings, daemon: DaemonRunner, notify: NotifySocket,
        capsys: pytest.CaptureFixture[str]) -> None:
    sleeper(settings, "a")
    proc = daemon.start("--log-format", "journal",
                        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    ready = notify.expect(has("READY", "1"))
    assert ready["STATUS"].startswith("1 running, 0 waiting, 0 failing")
    for _ in range(3):  # every 0.2 s, from the loop
        notify.expect(has("WATCHDOG", "1"))
    job = wait_for(running(settings, capsys, "a.main"), message="a.main running")

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    os.kill(proc.pid, signal.SIGHUP)
    reloading = notify.expect(has("RELOADING", "1"))
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    assert notify.expect(has("READY", "1"))["STATUS"].startswith("1 running")
    assert jobs(settings, capsys)["a.main"]["pid"] == job["pid"]  # a reload restarts nothing

    environ = Path(f"/proc/{job['pid']}/environ").read_bytes()
    assert b"NOTIFY_SOCKET" not in environ and b"WATCHDOG_USEC" not in environ

    assert daemon.terminate() == 0
    stopping = notify.expect(has("STOPPING", "1"))
    assert "1 running" in stopping["STATUS"]
    assert identity_of(job["pid"]) is not None  # services outlive the controller
    log = daemon.log.read_text()
    assert "<6>reconciler " in log and " starting (pid " in log
    assert "<6>first pass done" in log and "adopted 0 running jobs, started 1" in log
    assert "<6>reload (SIGHUP)" in log
    assert "<6>stopping (SIGTERM): managed processes keep running" in log
    assert all(line[:1] == "<" for line in log.splitlines()), log


def test_start_up_says_how_many_jobs_were_adopted_and_errors_are_errors(
        settings: Settings, daemon: DaemonRunner, capsys: pytest.CaptureFixture[str]) -> None:
    sleeper(settings, "a")
    daemon.start("--log-format", "journal")
    wait_for(running(settings, capsys, "a.main"), message="a.main running")
    assert daemon.terminate() == 0
    write_spec(settings, "bad.yaml", """\
    name: bad
    actions:
      - {name: main, process: true, cmd: [/nonexistent/program]}
    """)
    daemon.start("--log-format", "journal")
    wait_for(lambda: "<3>bad.main: spawn-error: command not found" in daemon.log.read_text(),
             message="the spawn error logged as an error")
    sleeper(settings, "c")  # a save, seen by watchfiles: which must not log about it
    wait_for(running(settings, capsys, "c.main"), message="c.main running")
    assert daemon.terminate() == 0
    log = daemon.log.read_text()
    assert "adopted 1 running jobs, started 0" in log  # bad.main could not start
    assert "changes detected" not in log and "apscheduler" not in log.lower()


def test_a_hung_loop_stops_the_watchdog_pings(settings: Settings,
                                               notify: NotifySocket) -> None:
    """The pings come from the loop that runs the passes: while a pass hangs, systemd hears
    nothing and (after WatchdogSec) restarts the daemon."""
    hanging, release = threading.Event(), threading.Event()

    def hang_in_the_second_pass(call: int) -> None:
        if call == 2:
            hanging.set()
            release.wait(timeout=30)

    _, open_passes = scripted(settings, hang_in_the_second_pass)
    notifier = Notifier(str(notify.path), watchdog_seconds=0.2)  # a ping every 0.1 s
    daemon = Daemon(settings, resync=3600, open_passes=open_passes, notifier=notifier)
    with daemon_running(daemon):
        try:
            notify.expect(has("READY", "1"))
            notify.expect(has("WATCHDOG", "1"))
            daemon.kick()
            wait_for(hanging.is_set, message="the second pass to hang")
            notify.drain()  # pings sent before the pass began
            assert notify.receive(1.0) is None  # ten ping intervals of silence
            release.set()
            notify.expect(has("WATCHDOG", "1"))
        finally:
            release.set()  # before the stop: a hanging pass would hold up the join


def test_the_watchdog_applies_only_to_the_process_it_names() -> None:
    assert watchdog_of({"WATCHDOG_USEC": "30000000"}, 42) == 30.0
    assert watchdog_of({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 30.0
    assert watchdog_of({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    for bad in ("", "0", "-5", "1e6", "x"):
        assert watchdog_of({"WATCHDOG_USEC": bad}, 42) is None


def test_notifying_without_a_listener_never_raises(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    gone = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert gone.enabled and not gone.send("READY=1") and not gone.send("WATCHDOG=1")
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1
    assert not Notifier(None).send("READY=1")


def test_a_service_manager_that_stops_reading_never_blocks_the_loop(tmp_path: Path) -> None:
    """A notify socket whose reader is stuck fills up; a send then fails at once (the
    message is lost) instead of blocking the reconcile loop that sent it."""
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stuck.bind(str(tmp_path / "stuck.sock"))
    notifier = Notifier(str(tmp_path / "stuck.sock"), watchdog_seconds=1.0)
    sent: list[bool] = []
    sender = threading.Thread(target=lambda: sent.extend(notifier.send("WATCHDOG=1")
                                                         for _ in range(2000)), daemon=True)
    try:
        sender.start()
        sender.join(timeout=20)
        assert not sender.is_alive(), "a send blocked"
        assert True in sent and False in sent  # the first got through, then the queue was full
    finally:
        stuck.close()
        notifier.close()


def test_an_abstract_notify_socket_is_reached(notify: NotifySocket) -> None:
    name = f"reconciler-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(b"\0" + name.encode())
    try:
        assert Notifier(f"@{name}").send("READY=1")
        listener.settimeout(5)
        assert listener.recv(100) == b"READY=1"
    finally:
        listener.close()


# --- SIGHUP under load -----------------------------------------------------------------------

VERSIONS = 5
SERVICES = 10  # 50 edits in all


def versioned(settings: Settings, name: str, version: int) -> None:
    write_spec(settings, f"{name}.yaml", f"""\
    name: {name}
    actions:
      - name: main
        process: true
        cmd: {SLEEPER}
        env: {{VERSION: "{version}"}}
    """)


def test_a_sighup_in_a_burst_of_edits_loses_no_edit_and_starts_no_duplicate(
        settings: Settings, daemon: DaemonRunner, capsys: pytest.CaptureFixture[str]) -> None:
    names = [f"s{i}" for i in range(SERVICES)]
    for name in names:
        versioned(settings, name, 0)
    proc = daemon.start()
    for name in names:
        wait_for(running(settings, capsys, f"{name}.main"), message=f"{name} running")
    for version in range(1, VERSIONS + 1):
        for name in names:
            versioned(settings, name, version)
            if version == 3 and name == names[SERVICES // 2]:
                os.kill(proc.pid, signal.SIGHUP)  # in the middle of the burst
    wait_for(lambda: all(_runs_version(row, VERSIONS) for row in
                         _rows(settings, capsys, names)), timeout=60,
             message="every service running its last edit")
    for name in names:
        marked = [pid for pid in procfs.iter_pids()
                  if procfs.read_environ_var(pid, "RECONCILER_JOB_ID") is not None
                  and _version_of(pid) is not None and _service_of(pid, settings) == name]
        assert len(marked) == 1, (name, marked)
    spawned = [e["job_id"] for e in events(settings, capsys) if e["kind"] == "spawn"]
    assert len(spawned) == len(set(spawned))  # no job was ever started twice
    assert "reload (SIGHUP)" in daemon.log.read_text()


def _rows(settings: Settings, capsys: pytest.CaptureFixture[str],
          names: list[str]) -> list[dict[str, Any] | None]:
    table = jobs(settings, capsys)
    return [table.get(f"{name}.main") for name in names]


def _runs_version(row: dict[str, Any] | None, version: int) -> bool:
    if row is None or row["phase"] != "running" or not isinstance(row["pid"], int):
        return False
    return _version_of(row["pid"]) == str(version)


def _version_of(pid: int) -> str | None:
    return procfs.read_environ_var(pid, "VERSION")


def _service_of(pid: int, settings: Settings) -> str | None:
    """The service a managed process belongs to, by its log file (stdout)."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return None
    logs = str(settings.logs_dir) + os.sep
    return target[len(logs):].split(os.sep)[0] if target.startswith(logs) else None


def test_json_log_lines_are_one_object_each(settings: Settings, daemon: DaemonRunner,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    write_spec(settings, "x.yaml", """\
    name: "x"
    actions:
      - {name: main, process: true, cmd: ["/nonexistent/\\u001b[31mred"]}
    """)
    daemon.start("--log-format", "json")
    wait_for(lambda: "spawn-error" in daemon.log.read_text(), message="a spawn error logged")
    assert daemon.terminate() == 0
    entries = [json.loads(line) for line in daemon.log.read_text().splitlines()]
    assert {e["level"] for e in entries} >= {"info", "error"}
    assert all(set(e) >= {"time", "level", "logger", "message"} for e in entries)
    assert "\x1b" not in daemon.log.read_text()
    assert any(e["level"] == "error" and "spawn-error" in e["message"] for e in entries)



def test_a_reload_before_the_first_successful_pass_does_not_say_ready(
        settings: Settings, notify: NotifySocket) -> None:
    """READY=1 means start-up is done (the first pass succeeded). A SIGHUP while the first
    passes still fail must not send it: systemd would call the unit started."""
    failing = threading.Event()
    failing.set()

    def fail_while_told(_call: int) -> None:
        if failing.is_set():
            raise OSError("the state disk is on fire")

    opened, open_passes = scripted(settings, fail_while_told)
    daemon = Daemon(settings, resync=3600, retry_initial=0.05, retry_max=0.05,
                    open_passes=open_passes, notifier=Notifier(str(notify.path)))
    with daemon_running(daemon):
        try:
            wait_for(lambda: opened and opened[0].calls >= 1, message="a first, failed pass")
            daemon.reload()
            wait_for(lambda: not daemon.reload_requested.is_set(), message="the reload taken")
            after = opened[0].calls
            wait_for(lambda: opened[0].calls >= after + 2, message="the reload's pass done")
            notify.drain()
            assert not [m for m in notify.seen if m.get("READY") == "1"], notify.seen
            failing.clear()
            notify.expect(has("READY", "1"))
        finally:
            failing.clear()


SIGNAL_WHILE_THE_LOOP_HOLDS_ITS_EVENTS = """\
import signal, sys, time
from pathlib import Path
from reconciler.daemon import Daemon
from reconciler.settings import Settings

daemon = Daemon(Settings(specs_dir=Path(sys.argv[1]), state_dir=Path(sys.argv[2])))
daemon.install_signal_handlers()
# The loop thread sits inside wake.wait()/wake.clear()/reload_requested.clear(): each holds
# its Event's lock for a few bytecodes, and a signal handler runs between any two of them.
with daemon.wake._cond, daemon.reload_requested._cond:
    signal.raise_signal(signal.SIGHUP)
deadline = time.monotonic() + 10
while not daemon.reload_requested.is_set() and time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(0 if daemon.reload_requested.is_set() else 3)
"""


def test_a_signal_while_the_loop_holds_its_events_does_not_deadlock(
        settings: Settings) -> None:
    """A Python signal handler runs on the loop's own thread, between two bytecodes; one
    that sets a threading.Event blocks forever on that Event's lock when the loop was
    holding it (Event locks are not reentrant): a daemon frozen by a reload or a stop."""
    proc = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_THE_LOOP_HOLDS_ITS_EVENTS,
                           str(settings.specs_dir), str(settings.state_dir)],
                          capture_output=True, text=True, timeout=15,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
