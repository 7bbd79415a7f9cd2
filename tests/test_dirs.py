"""reconciler/dirs.py: the dirs `status` resolves without pathlib must be the ones
`Settings` resolves with it, character for character (they appear in its messages)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler import dirs
from reconciler.settings import SettingsError, default_state_dir, resolve


@pytest.mark.parametrize("path", ["/", "//", "///", "/a/b", "/a//b/", "/a/./b/.", "/a/../b",
                                  "//a/b", "///a", "rel", "./rel/", "rel/../x", ".", "a/.b/",
                                  "/a b/c\u00e9", "../up"])
def test_absolute_is_pathlibs(path: str) -> None:
    assert dirs.absolute(path) == str(Path(path).absolute())


def test_same_dirs_as_settings(tmp_path: Path) -> None:
    env = {"RECONCILER_STATE_DIR": "st//x/./", "RECONCILER_SPECS": "sp"}
    settings = resolve(env=env)
    assert dirs.absolute(dirs.state_dir_text(None, env)) == str(settings.state_dir)
    assert dirs.absolute(dirs.specs_dir_text(None, env)) == str(settings.specs_dir)
    flagged = resolve(tmp_path / "s", tmp_path / "t", env=env)
    assert dirs.absolute(dirs.state_dir_text(str(tmp_path / "t"), env)) == str(
        flagged.state_dir)
    for env in ({}, {"XDG_STATE_HOME": "/xdg"}):
        assert dirs.default_state_dir(env) == str(default_state_dir(env))


def test_the_real_state_dir_is_refused_without_settings() -> None:
    """The guard the test suite relies on holds on `status`' path too (conftest sets it)."""
    assert os.environ.get(dirs.REFUSE_DEFAULT_STATE_DIR) == "1"
    with pytest.raises(SettingsError, match="real state dir"):
        dirs.check_not_default(dirs.default_state_dir())
    dirs.check_not_default("/somewhere/else")
