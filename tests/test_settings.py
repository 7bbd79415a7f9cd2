"""Settings precedence, and the guard that keeps tests away from the real state dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.settings import SettingsError, default_state_dir, resolve


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


def test_default_state_dir_is_refused_under_pytest(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="real state dir"):
        resolve(tmp_path / "specs", env={})
    with pytest.raises(SettingsError):
        resolve(tmp_path / "specs", default_state_dir({}), env={})


def test_default_state_dir_follows_xdg_for_users_and_var_lib_for_root() -> None:
    import os

    path = default_state_dir({"XDG_STATE_HOME": "/xdg"})
    expected = Path("/var/lib/reconciler") if os.geteuid() == 0 else Path("/xdg/reconciler")
    assert path == expected
