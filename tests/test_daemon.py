"""The daemon as operators run it: a real `reconcile` process, real children, real kills."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.controller import HealthResults, Keys, OverLimit, PassResult, Reconciler
from reconciler.daemon import (
    RETRY_INITIAL_SECONDS,
    RETRY_MAX_SECONDS,
    Daemon,
    OpenPasses,
    retry_delay,
    status_line,
)
from reconciler.desired import Desired
from reconciler.host.gitrev import Revision
from reconciler.host.identity import identity_of
from reconciler.identity import Identity
from reconciler.plan import MIN_START_INTERVAL, Plan
from reconciler.settings import Settings
from reconciler.spec.load import LoadResult
from reconciler.state.records import Event, JobRecord, Sample
from tests.helpers import wait_for

PY = sys.executable
SLEEPER = json.dumps([PY, "-c", "import time; print('started', flush=True); time.sleep(3600)"])


class DaemonRunner:
    """Starts and stops `reconcile` (the daemon) for one test; kills it at teardown."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, env: Mapping[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        """`extra`: more flags; `env`: more environment (e.g. systemd's NOTIFY_SOCKET)."""
        env = {**os.environ, "RECONCILER_STATE_DIR": str(self.settings.state_dir), **(env or {})}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [PY, "-m", "reconciler.cli", "--specs", str(self.settings.specs_dir),
                 "--state-dir", str(self.settings.state_dir), "--resync", "1s", *extra],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        return self.proc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=30)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemon(settings: Settings, tmp_path: Path) -> Iterator[DaemonRunner]:
    runner = DaemonRunner(settings, tmp_path / "daemon.log")
    yield runner
    runner.cleanup()


def write_spec(settings: Settings, name: str, text: str) -> Path:
    path = settings.specs_dir / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(textwrap.dedent(text))
    os.chmod(tmp, 0o644)
    tmp.rename(path)  # an atomic save, as editors and git do
    return path


def sleeper(settings: Settings, name: str) -> Path:
    return write_spec(settings, f"{name}.yaml", f"""\
    name: {name}
    actions:
      - {{name: main, process: true, cmd: {SLEEPER}}}
    """)


def jobs(settings: Settings, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, Any]]:
    capsys.readouterr()
    code = cli.main(["status", "-o", "json", "--state-dir", str(settings.state_dir),
                     "--specs", str(settings.specs_dir)])
    assert code == 0
    return {f"{r['service']}.{r['action']}": r for r in json.loads(capsys.readouterr().out)}


def events(settings: Settings, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    assert cli.main(["events", "-o", "json", "-n", "1000", "--state-dir",
                     str(settings.state_dir), "--specs", str(settings.specs_dir)]) == 0
    return json.loads(capsys.readouterr().out)


def running(settings: Settings, capsys: pytest.CaptureFixture[str], name: str,
            **expected: Any) -> Callable[[], dict[str, Any] | None]:
    """A condition: job `name` runs (alive pid) and has the expected fields."""
    def check() -> dict[str, Any] | None:
        row = jobs(settings, capsys).get(name)
        if row is None or row["phase"] != "running" or not _alive(row["pid"]):
            return None
        return row if all(row.get(k) == v for k, v in expected.items()) else None
    return check


def run_kill_and_heal(settings: Settings, daemon: DaemonRunner,
                      capsys: pytest.CaptureFixture[str]
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Service `a` runs and logs, is killed -9, and the daemon heals it: both runs' rows."""
    log = settings.logs_dir / "a" / "main.log"
    sleeper(settings, "a")
    daemon.start()
    first = wait_for(running(settings, capsys, "a.main"), message="a.main running")
    wait_for(lambda: "started" in log.read_text(), message="first run logged")
    os.kill(first["pid"], signal.SIGKILL)
    second = wait_for(running(settings, capsys, "a.main", restart_count=1),
                      message="a.main healed")
    wait_for(lambda: "started" in log.read_text(), message="second run logged")
    return first, second


def _alive(pid: object) -> bool:
    return isinstance(pid, int) and identity_of(pid) is not None


def test_killed_process_is_healed_with_same_job_and_rotated_log(
        settings: Settings, daemon: DaemonRunner, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = run_kill_and_heal(settings, daemon, capsys)
    assert second["job_id"] == first["job_id"] and second["pid"] != first["pid"]
    assert second["last_exit_code"] == -9
    assert "started" in (settings.logs_dir / "a" / "main.log.1").read_text()


def test_controller_restart_adopts_everything_and_still_heals(
        settings: Settings, daemon: DaemonRunner, capsys: pytest.CaptureFixture[str]) -> None:
    sleeper(settings, "a")
    sleeper(settings, "b")
    daemon.start()
    a = wait_for(running(settings, capsys, "a.main"), message="a running")
    b = wait_for(running(settings, capsys, "b.main"), message="b running")
    daemon.kill9()
    os.kill(b["pid"], signal.SIGKILL)  # dies while the controller is away
    daemon.start()
    b2 = wait_for(running(settings, capsys, "b.main", restart_count=1),
                  message="b respawned after the controller came back")
    assert b2["job_id"] == b["job_id"] and b2["pid"] != b["pid"]
    adopted = jobs(settings, capsys)["a.main"]
    assert (adopted["pid"], adopted["job_id"], adopted["restart_count"]) == (
        a["pid"], a["job_id"], 0)
    os.kill(a["pid"], signal.SIGKILL)  # an adopted process (not our child) dies
    a2 = wait_for(running(settings, capsys, "a.main", restart_count=1),
                  message="adopted process healed")
    assert a2["job_id"] == a["job_id"]


def test_sigterm_stops_the_controller_but_not_the_services(
        settings: Settings, daemon: DaemonRunner, capsys: pytest.CaptureFixture[str]) -> None:
    sleeper(settings, "a")
    daemon.start()
    row = wait_for(running(settings, capsys, "a.main"), message="a running")
    assert daemon.terminate() == 0
    assert _alive(row["pid"])


def test_crash_loop_backs_off_and_the_controller_stays_responsive(
        settings: Settings, daemon: DaemonRunner, capsys: pytest.CaptureFixture[str]) -> None:
    write_spec(settings, "c.yaml", """\
    name: c
    actions:
      - name: crash
        process: true
        cmd: "exit 1"
        backoff: {initial: 100ms, max: 2s, factor: 2, reset_after: 30s}
    """)
    daemon.start()
    wait_for(lambda: jobs(settings, capsys).get("c.crash", {}).get("restart_count", 0) >= 3,
             timeout=30, message="several restarts")
    row = jobs(settings, capsys)["c.crash"]  # status answers while it loops
    assert row["failure_class"] == "crash-before-ready"
    spawns = [e["at"] for e in events(settings, capsys)
              if e["kind"] == "spawn" and e["service"] == "c"]
    gaps = [b - a for a, b in itertools.pairwise(spawns)]
    # each restart waits its backoff (the unit tests of plan pin the sequence), and never
    # comes sooner than MIN_START_INTERVAL after the previous start: no hot loop
    assert len(gaps) >= 3 and min(gaps) >= 0.9 * MIN_START_INTERVAL, gaps


def test_new_spec_file_and_noop_edit(settings: Settings, daemon: DaemonRunner,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = sleeper(settings, "a")
    daemon.start()
    first = wait_for(running(settings, capsys, "a.main"), message="a running")
    write_spec(settings, "a.yaml", path.read_text())  # a no-op save
    sleeper(settings, "b")  # applied after the no-op save was seen
    wait_for(running(settings, capsys, "b.main"), message="new spec applied")
    again = jobs(settings, capsys)["a.main"]
    assert (again["pid"], again["restart_count"]) == (first["pid"], 0)


def test_unhealthy_process_is_restarted(settings: Settings, daemon: DaemonRunner,
                                        free_port: Callable[[], int],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    flag = settings.specs_dir.parent / "go-deaf"
    server = (f"import os,socket,time\ns=socket.socket()\n"
              f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
              f"s.bind(('127.0.0.1',{port})); s.listen()\n"
              f"while not os.path.exists({str(flag)!r}): time.sleep(0.02)\n"
              f"s.close(); time.sleep(3600)\n")
    write_spec(settings, "h.yaml", f"""\
    name: h
    actions:
      - name: web
        process: true
        cmd: {json.dumps([PY, "-c", server])}
        health: {{tcp: {port}, interval: 100ms, timeout: 200ms, failures: 2}}
    """)
    daemon.start()
    first = wait_for(running(settings, capsys, "h.web", ready=True), message="h ready")
    flag.write_text("")
    wait_for(lambda: jobs(settings, capsys)["h.web"]["restart_count"] >= 1, timeout=20,
             message="unhealthy restart")
    row = jobs(settings, capsys)["h.web"]
    assert row["job_id"] == first["job_id"] and row["pid"] != first["pid"]
    assert any(e["kind"] == "kill" and "unhealthy" in e["reason"]
               for e in events(settings, capsys))


def test_after_waits_for_readiness(settings: Settings, daemon: DaemonRunner,
                                   free_port: Callable[[], int],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    flag = settings.specs_dir.parent / "listen-now"
    slow = (f"import os,socket,time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.02)\n"
            f"s=socket.socket()\ns.bind(('127.0.0.1',{port})); s.listen(); time.sleep(3600)\n")
    write_spec(settings, "d.yaml", f"""\
    name: d
    actions:
      - name: api
        process: true
        cmd: {json.dumps([PY, "-c", slow])}
        health: {{tcp: {port}, interval: 100ms}}
      - name: client
        process: true
        after: [api]
        cmd: {SLEEPER}
    """)
    daemon.start()
    wait_for(lambda: jobs(settings, capsys).get("d.api", {}).get("phase") == "starting",
             message="api started, not ready")
    held = jobs(settings, capsys)["d.client"]
    assert held["phase"] == "pending" and held["reason"] == "waiting for api" and not held["pid"]
    flag.write_text("")
    wait_for(running(settings, capsys, "d.client"), message="client started")
    order = [(e["kind"], e["action"]) for e in events(settings, capsys)
             if e["service"] == "d" and e["kind"] in ("ready", "spawn")]
    assert order.index(("ready", "api")) < order.index(("spawn", "client")), order


def test_logs_and_events_commands(settings: Settings, daemon: DaemonRunner,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    run_kill_and_heal(settings, daemon, capsys)
    common = ["--state-dir", str(settings.state_dir), "--specs", str(settings.specs_dir)]
    capsys.readouterr()
    assert cli.main(["logs", "a.main", *common]) == 0
    assert "started" in capsys.readouterr().out
    assert cli.main(["logs", "a.main", "--previous", *common]) == 0
    assert "started" in capsys.readouterr().out
    assert cli.main(["events", "a", *common]) == 0
    text = capsys.readouterr().out
    assert "spawn" in text and "a.main" in text


class ScriptedPasses:
    """Real passes on a real Reconciler, with a script run before each (it may raise): the
    daemon's seam (`open_passes`) instead of patching Reconciler or the daemon's internals."""

    def __init__(self, real: Reconciler, before: Callable[[int], None]) -> None:
        self.real = real
        self.before = before
        self.calls = 0

    def reconcile(self, health: HealthResults | None = None,
                  over_limit: OverLimit | None = None, keys: Keys | None = None) -> PassResult:
        self.calls += 1
        self.before(self.calls)
        return self.real.reconcile(health, over_limit, keys)

    def forget_caches(self) -> None:
        self.real.forget_caches()

    def record_resources(self, samples: Sequence[Sample],
                         anomalies: Mapping[str, Mapping[str, str]], *,
                         window: float) -> list[Event]:
        return self.real.record_resources(samples, anomalies, window=window)

    def newest_sample_at(self) -> float | None:
        return self.real.newest_sample_at()


def scripted(settings: Settings, before: Callable[[int], None]
             ) -> tuple[list[ScriptedPasses], OpenPasses]:
    """An `open_passes` for Daemon, and the list that receives what it opened (the daemon
    opens it on its own thread)."""
    opened: list[ScriptedPasses] = []

    @contextlib.contextmanager
    def open_passes() -> Iterator[ScriptedPasses]:
        with Reconciler(settings, allow_empty=True) as real:  # no specs: a pass changes nothing
            opened.append(ScriptedPasses(real, before))
            yield opened[-1]

    return opened, open_passes


@contextlib.contextmanager
def daemon_running(daemon: Daemon) -> Iterator[None]:
    """`daemon.run()` on a thread of its own for the `with` block; stopped and joined after
    it, also on failure."""
    runner = threading.Thread(target=daemon.run, daemon=True)
    runner.start()
    try:
        yield
    finally:
        daemon.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()


def run_until_stopped(daemon: Daemon, until: Callable[[], object], message: str) -> None:
    with daemon_running(daemon):
        wait_for(until, timeout=20, message=message)


def test_a_kick_during_a_pass_is_never_lost(settings: Settings) -> None:
    """The first pass receives a kick while it runs, as a spec save or a process exit would
    deliver it; with nothing else to wake it (resync an hour away, no changes planned) only
    that kick can cause the second pass."""
    daemon: Daemon | None = None

    def kick_during_the_first(call: int) -> None:
        assert daemon is not None
        if call == 1:
            daemon.kick()  # arrives mid-pass

    opened, open_passes = scripted(settings, kick_during_the_first)
    daemon = Daemon(settings, resync=3600, open_passes=open_passes)
    run_until_stopped(daemon, lambda: opened and opened[0].calls >= 2, "the kicked pass")
    assert daemon.passes >= 2


def test_a_respawned_process_is_watched_for_its_next_exit(settings: Settings) -> None:
    """After a keyed pass respawns one job among several, the watchers are pointed at the
    few jobs it changed (daemon._watch_changed): the new process's exit must wake the
    daemon again (the resync is an hour away), and the others stay watched."""
    (settings.specs_dir / "s.yaml").write_text("---\n".join(
        f"name: {n}\nactions:\n  - name: main\n    process: true\n    cmd: exec sleep 3600\n"
        for n in ("a", "b", "c")))
    later = [0.0]  # crashes come after MIN_START_INTERVAL: restarted at once, no backoff

    @contextlib.contextmanager
    def open_passes() -> Iterator[Reconciler]:
        with Reconciler(settings, clock=lambda: time.time() + later[0]) as rec:
            yield rec

    daemon = Daemon(settings, resync=3600, open_passes=open_passes)

    def pid_of(service: str) -> int | None:
        result = daemon.last_result
        jobs = {j.service: j for j in result.jobs} if result is not None else {}
        return jobs[service].pid if service in jobs else None

    def identities() -> set[Identity | None]:
        return {j.identity for j in daemon.last_result.jobs}  # type: ignore[union-attr]

    with daemon_running(daemon):
        wait_for(lambda: all(pid_of(s) for s in "abc"), timeout=20, message="all running")
        later[0] += 10 * MIN_START_INTERVAL
        victim = pid_of("b")
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: pid_of("b") not in (None, victim), timeout=20, message="b respawned")
        wait_for(lambda: daemon.exits.watching() == identities(), message="the new b watched")
        respawned = pid_of("b")
        assert respawned is not None
        os.kill(respawned, signal.SIGKILL)  # a crash loop now: backoff, but seen at once
        wait_for(lambda: pid_of("b") != respawned, timeout=20, message="the exit seen")


def test_a_failed_pass_is_retried_with_backoff_and_logged_once(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """A pass that fails as a whole (here: the first three, with the same error) is retried
    with backoff, not at the next resync (an hour away here), and its traceback is logged
    once, not once per try. The backoff starts at 10 ms here, 200 ms in production."""
    def fail_three_times(call: int) -> None:
        if call <= 3:
            raise OSError(5, "Input/output error")

    opened, open_passes = scripted(settings, fail_three_times)
    daemon = Daemon(settings, resync=3600, retry_initial=0.01, open_passes=open_passes)
    run_until_stopped(daemon, lambda: daemon.passes >= 1, "a pass after three failures")
    assert opened[0].calls >= 4 and daemon.failed_passes == 0
    failed = [r for r in caplog.records if r.getMessage().startswith("pass failed")]
    assert len(failed) == 1 and "Input/output error" in failed[0].getMessage()


def test_the_resync_runs_passes_with_nothing_else_to_wake_the_daemon(settings: Settings) -> None:
    """The scheduler starts only after the first pass (Daemon._timers): the resync must
    still come. No specs and no kicks after the first pass: only the resync (50 ms here)
    can cause the passes after it."""
    opened, open_passes = scripted(settings, lambda call: None)
    daemon = Daemon(settings, resync=0.05, open_passes=open_passes)
    run_until_stopped(daemon, lambda: opened and opened[0].calls >= 3, "resync passes")


# A fresh interpreter: a daemon on argv's dirs, stopped after two passes (the second from the
# resync); prints whether APScheduler was loaded when each pass began.
SCHEDULER_PROBE = """
import contextlib, json, sys
from pathlib import Path
from reconciler.controller import Reconciler
from reconciler.daemon import Daemon
from reconciler.settings import Settings

settings = Settings(specs_dir=Path(sys.argv[1]), state_dir=Path(sys.argv[2]), settle=0.0)
loaded_at_pass = []

class Recording:
    def __init__(self, real):
        self.real = real
    def reconcile(self, health=None, over_limit=None, keys=None):
        loaded_at_pass.append("apscheduler" in sys.modules)
        if len(loaded_at_pass) >= 2:
            daemon.stop()
        return self.real.reconcile(health, over_limit, keys)
    def __getattr__(self, name):
        return getattr(self.real, name)

@contextlib.contextmanager
def open_passes():
    with Reconciler(settings, allow_empty=True) as real:
        yield Recording(real)

daemon = Daemon(settings, resync=0.05, open_passes=open_passes)
print(json.dumps({"at_start": "apscheduler" in sys.modules, "run": daemon.run(),
                  "at_pass": loaded_at_pass}))
"""


def test_the_scheduler_is_loaded_after_the_first_pass_not_before(settings: Settings) -> None:
    """APScheduler's import (~50 ms) is not on the way to the first pass's starts at a cold
    start (docs/benchmarks.md, "cold start, third round"); the second pass, which only the
    resync can cause here, shows the scheduler then runs."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(
        [PY, "-c", SCHEDULER_PROBE, str(settings.specs_dir), str(settings.state_dir)],
        env=env, capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"at_start": False, "run": 0, "at_pass": [False, True]}


def test_retry_delay_doubles_up_to_its_maximum() -> None:
    delays = [retry_delay(n, RETRY_INITIAL_SECONDS, RETRY_MAX_SECONDS) for n in range(1, 11)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0]


def test_status_line_counts_each_phase_once_and_leaves_removed_jobs_out() -> None:
    phases = ["running", "running", "backoff", "blocked", "succeeded", "stopped", "starting",
              "stopping", "removed"]
    jobs = tuple(JobRecord(id=f"j{i}", service=f"s{i}", action="a", generation="g", phase=p)
                 for i, p in enumerate(phases))
    loaded = LoadResult(services={}, sources={}, files={}, errors=(), dir_error=None)
    result = PassResult(loaded, Desired(actions=()), Plan(steps=()), jobs, Revision("abc123"))
    assert status_line(result) == ("2 running, 2 waiting, 2 failing, 2 done; "
                                   "revision abc123")
