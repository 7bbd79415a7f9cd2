"""Adversarial operator: closed descriptors, a database emptied while every service was
stopped. Real CLI processes, real SQLite, real state dirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.settings import Settings
from tests.test_reconcile import job, run_cli, write_sleeper

ROOT = Path(__file__).resolve().parents[2]


def cli_with_stdout_closed(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`reconcile ARGS >&-`: stdout is not a closed pipe but no descriptor at all (a daemon
    started from an init script, `cmd >&-`): Python then has sys.stdout = None."""
    argv = [sys.executable, "-m", "reconciler.cli", *args, "--specs", str(settings.specs_dir),
            "--state-dir", str(settings.state_dir)]
    script = 'exec "$@" >&-'
    return subprocess.run(["/bin/sh", "-c", script, "sh", *argv], cwd=ROOT, text=True,
                          stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
                          check=False)


@pytest.mark.parametrize("args", [("status",), ("status", "-o", "json"), ("validate",)])
def test_a_closed_stdout_never_shows_a_traceback(settings: Settings, reconciler: Reconciler,
                                                 args: tuple[str, ...]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert reconciler.converge(wait=20).converged
    done = cli_with_stdout_closed(settings, *args)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr


def test_a_database_emptied_while_every_service_is_down_is_damage_not_a_fresh_start(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """`down` leaves no enrollment behind, so enrollments alone cannot tell a lost database
    from a first start; the specs-dir binding can. Without that, the stopped service came
    back on the next pass (the issue's "a service stopped with `down` comes back")."""
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert run_cli(settings, "down", "a") == 0
    assert job(settings, capsys, "a.main")["phase"] == "stopped"
    os.truncate(settings.db_path, 0)
    capsys.readouterr()
    assert run_cli(settings, "--once", "--wait", "5s") == 2
    assert "reconcile repair" in capsys.readouterr().err
    assert run_cli(settings, "status") == 2  # reported, not read as "no jobs"
    assert os.path.getsize(settings.db_path) == 0  # nothing was started or written


def test_bidi_overrides_in_a_name_are_escaped(settings: Settings,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """U+202E (right-to-left override) makes a terminal show the rest of the line reversed:
    a name could make an error read as something else (Trojan Source)."""
    path = settings.specs_dir / "x.yaml"
    path.write_text('name: "ok\u202e"\nactions: []\n')
    os.chmod(path, 0o644)
    assert run_cli(settings, "validate") == 2
    out = capsys.readouterr()
    assert "\u202e" not in out.out + out.err
    assert "\\u202e" in out.out + out.err


@pytest.mark.parametrize("value", ["1ms", "0s"])
def test_a_resync_shorter_than_a_second_is_refused(settings: Settings, value: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`--resync 1ms` ran a pass every millisecond (a core busy, the log flooded with
    scheduler warnings); `--resync 10ms` cost 27 % of a core with nothing to do."""
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--resync", value) == 2  # --once: fails, never hangs
    assert "--resync" in capsys.readouterr().err
    assert not (settings.state_dir / "state.db").exists()  # refused before anything ran
