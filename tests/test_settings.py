"""Settings precedence, and the guard that keeps tests away from the real state dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.settings import (
    REFUSE_DEFAULT_STATE_DIR,
    Settings,
    SettingsError,
    default_state_dir,
    resolve,
)


def test_flags_win_over_environment_which_wins_over_defaults(tmp_path: Path) -> None:
    env = {"RECONCILER_SPECS": str(tmp_path / "env-specs"),
           "RECONCILER_STATE_DIR": str(tmp_path / "env-state")}
    flagged = resolve(tmp_path / "flag-specs", tmp_path / "flag-state", env=env)
    assert flagged.specs_dir == tmp_path / "flag-specs"
    assert flagged.state_dir == tmp_path / "flag-state"
    from_env = resolve(env=env)
    assert from_env.specs_dir == tmp_path / "env-specs"
    assert from_env.state_dir == tmp_path / "env-state"
    assert from_env.db_path == tmp_path / "env-state" / "state.db"
    assert resolve(state_dir=tmp_path, env={}).specs_dir == Path.cwd() / "specs"


def test_the_suite_runs_with_the_guard_on() -> None:
    """tests/conftest.py sets it for the session: every test and every subprocess has it."""
    assert os.environ.get(REFUSE_DEFAULT_STATE_DIR) == "1"


def test_default_state_dir_is_refused_while_the_guard_is_on(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="real state dir"):
        resolve(tmp_path / "specs", env={})
    with pytest.raises(SettingsError):
        resolve(tmp_path / "specs", default_state_dir({}), env={})
    with pytest.raises(SettingsError):  # built directly, not through resolve()
        Settings(specs_dir=tmp_path, state_dir=default_state_dir())
    Settings(specs_dir=tmp_path, state_dir=tmp_path / "state")  # any other dir is fine


def test_the_guard_is_the_variable_so_it_can_fail(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the variable (production) the default state dir is what it is for."""
    monkeypatch.delenv(REFUSE_DEFAULT_STATE_DIR)
    settings = Settings(specs_dir=tmp_path, state_dir=default_state_dir())
    assert settings.state_dir == default_state_dir()
    monkeypatch.setenv(REFUSE_DEFAULT_STATE_DIR, "0")
    Settings(specs_dir=tmp_path, state_dir=default_state_dir())


def test_a_cli_subprocess_inherits_the_guard(tmp_path: Path) -> None:
    """`reconcile status` without --state-dir, started by a test, refuses the real dir
    instead of reading (or, for other commands, writing) the developer's state."""
    env = {k: v for k, v in os.environ.items() if k != "RECONCILER_STATE_DIR"}
    done = subprocess.run([sys.executable, "-m", "reconciler.cli", "status", "--specs",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("reconcile: error: refusing the real state dir"), done.stderr


def test_default_state_dir_follows_xdg_for_users_and_var_lib_for_root() -> None:
    path = default_state_dir({"XDG_STATE_HOME": "/xdg"})
    expected = Path("/var/lib/reconciler") if os.geteuid() == 0 else Path("/xdg/reconciler")
    assert path == expected
