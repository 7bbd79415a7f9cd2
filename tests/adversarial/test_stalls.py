"""Adversarial: one job's trouble must never stall healing of the others, nor fail a pass.

Each test builds the trouble for real (a process that ignores SIGTERM, a pidfile that
cannot be written) and proves that an unrelated job still heals meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.host.identity import identity_of
from reconciler.settings import Settings
from tests.helpers import wait_for
from tests.test_reconcile import PY, job, write_sleeper, write_spec

# Ignores SIGTERM; writes `<flag>.armed` once its handler is in place (a job without a
# health check is ready when a pass sees it alive, which may be before Python got that
# far) and the flag once it got a SIGTERM (so the test knows the stop has begun).
TERM_IGNORER = (
    "import signal,sys,time,pathlib\n"
    "flag = pathlib.Path(sys.argv[1])\n"
    "signal.signal(signal.SIGTERM, lambda *_: flag.write_text('term'))\n"
    "pathlib.Path(sys.argv[1] + '.armed').touch()\n"
    "while True: time.sleep(3600)\n"
)


def wait_armed(flag: Path) -> None:
    """Until the term ignorer's handler is in place: a SIGTERM before it would kill it."""
    wait_for(Path(f"{flag}.armed").exists, message="the SIGTERM handler installed")


def write_term_ignorer(specs_dir: Path, flag: Path, timeout: str = "1h") -> Path:
    return write_spec(specs_dir, "slow.yaml", f"""\
    name: slow
    actions:
      - name: main
        process: true
        cmd: {json.dumps([PY, "-c", TERM_IGNORER, str(flag)])}
        stop: {{timeout: {timeout}}}
    """)


def test_a_slow_stop_does_not_delay_healing_of_another_job(
        settings: Settings, reconciler: Reconciler, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    flag = tmp_path / "got-term"
    slow_spec = write_term_ignorer(settings.specs_dir, flag)
    write_sleeper(settings.specs_dir, "other")
    assert reconciler.converge(wait=20).converged
    wait_armed(flag)
    slow = identity_of(int(job(settings, capsys, "slow.main")["pid"]))  # type: ignore[arg-type]
    other = job(settings, capsys, "other.main")
    slow_spec.unlink()
    reconciler.reconcile()  # sends SIGTERM and returns: the job is `stopping` for up to 1h
    wait_for(flag.exists, message="the slow job got SIGTERM")
    os.kill(int(other["pid"]), signal.SIGKILL)  # type: ignore[arg-type]

    def respawned() -> bool:
        reconciler.reconcile()
        row = job(settings, capsys, "other.main")
        return row["pid"] != other["pid"] and row["phase"] == "running"

    wait_for(respawned, message="the other job respawned")
    assert slow is not None and identity_of(slow.pid) == slow  # still stopping meanwhile
    assert reconciler.store.job(str(other["job_id"])).restart_count == 1  # type: ignore[union-attr]


def test_a_stop_in_progress_survives_a_restart_of_the_controller(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The deadline is in the job's record: a new controller escalates and finishes it."""
    flag = tmp_path / "got-term"
    slow_spec = write_term_ignorer(settings.specs_dir, flag, timeout="200ms")
    write_sleeper(settings.specs_dir, "other")  # an emptied specs dir would prune nothing
    with Reconciler(settings) as first:
        assert first.converge(wait=20).converged
        wait_armed(flag)
        slow = identity_of(int(job(settings, capsys, "slow.main")["pid"]))  # type: ignore[arg-type]
        slow_spec.unlink()
        first.reconcile()
        wait_for(flag.exists, message="the slow job got SIGTERM")
    with Reconciler(settings) as second:
        result = second.converge(wait=20)
        assert result.converged
        assert slow is not None and identity_of(slow.pid) != slow
        kinds = [e.kind for _, e in second.store.events(service="slow")]
        assert kinds.count("kill") == 2 and kinds[-1] == "removed"  # SIGTERM, SIGKILL, retired


def test_a_pidfile_that_cannot_be_written_fails_that_job_only(
        settings: Settings, reconciler: Reconciler, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Its parent is a regular file (as for a read-only fs or /run as non-root: an OSError
    while enrolling). The job backs off with the error; the pass and other jobs go on."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    write_spec(settings.specs_dir, "bad.yaml", f"""\
    name: bad
    actions:
      - name: main
        process: true
        cmd: {json.dumps([PY, "-c", "import time; time.sleep(3600)"])}
        pidfile: {not_a_dir / "main.pid"}
    """)
    write_sleeper(settings.specs_dir, "good")
    result = reconciler.reconcile()  # must not raise
    assert result.jobs
    bad, good = job(settings, capsys, "bad.main"), job(settings, capsys, "good.main")
    assert bad["phase"] == "backoff" and bad["pid"] is None
    assert "main.pid" in str(bad["reason"])
    assert good["phase"] in ("running", "starting") and good["pid"]


# Exits on SIGTERM, but takes a second to shut down, as real services do.
SLOW_TO_EXIT = ("import signal,sys,time\n"
                "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), sys.exit(0)))\n"
                "while True: time.sleep(3600)\n")


def test_down_from_another_controller_returns_once_the_process_is_gone(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """`reconcile down` runs in a process that did not start the job (no exit notification
    reaches it): it still notices the exit promptly, not at the job's 1 h stop deadline."""
    write_spec(settings.specs_dir, "calm.yaml", f"""\
    name: calm
    actions:
      - name: main
        process: true
        cmd: {json.dumps([PY, "-c", SLOW_TO_EXIT])}
        stop: {{timeout: 1h}}
    """)
    with Reconciler(settings) as starter:
        assert starter.converge(wait=20).converged
    done = threading.Event()

    def down() -> None:
        with Reconciler(settings) as other:
            other.down()
        done.set()

    threading.Thread(target=down, daemon=True).start()
    assert done.wait(timeout=20), "down waited for the stop deadline"
    assert job(settings, capsys, "calm.main")["phase"] == "stopped"


def test_a_restart_issued_while_a_down_is_still_stopping_starts_the_job_again(
        settings: Settings, reconciler: Reconciler, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An operator who interrupts a slow `down` and asks for `restart` wants the service
    back (systemd: a restart job replaces a running stop job). It used to end `stopped`,
    silently: the earlier `down` won over the later restart."""
    flag = tmp_path / "got-term"
    write_term_ignorer(settings.specs_dir, flag, timeout="300ms")
    assert reconciler.converge(wait=20).converged
    wait_armed(flag)
    old = job(settings, capsys, "slow.main")
    reconciler.down(wait=0.0)  # signalled, still stopping (the CLI interrupted)
    assert job(settings, capsys, "slow.main")["phase"] == "stopping"
    reconciler.restart(frozenset({("slow", None)}))
    assert reconciler.converge(wait=10).converged
    new = job(settings, capsys, "slow.main")
    assert new["phase"] == "running" and new["pid"] != old["pid"]
    assert new["job_id"] == old["job_id"]
