"""Where the reconciler reads specs and keeps its state.

Precedence is flags, then environment (`RECONCILER_SPECS`, `RECONCILER_STATE_DIR`), then
defaults, as operators expect from most Unix tools.

With `RECONCILER_REFUSE_DEFAULT_STATE_DIR=1` in the environment, constructing `Settings` that
point at the real default state dir raises. The test suite sets it for the whole session
(tests/conftest.py), so a test that forgot its fixture, or a CLI subprocess it started without
`--state-dir`, fails loudly instead of adopting, stopping or pruning the developer's real
services. A guard at construction cannot be bypassed by a code path that builds `Settings`
itself, and production code never has to guess whether it runs under a test runner.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from reconciler import dirs
from reconciler.dirs import (
    DEFAULT_SPECS_DIR,
    MAX_REVISION_LABEL,
    REFUSE_DEFAULT_STATE_DIR,
    SettingsError,
    revision_label_of,
)
from reconciler.environment import inheritable

__all__ = ["DEFAULT_SPECS_DIR", "MAX_REVISION_LABEL", "REFUSE_DEFAULT_STATE_DIR", "Settings",
           "SettingsError", "default_state_dir", "resolve", "revision_label_of", "specs_dir_of",
           "state_dir_of"]


@dataclass(frozen=True, slots=True)
class Settings:
    """The two directories a reconciler works with, and how it reads spec files."""

    specs_dir: Path
    state_dir: Path
    # A changed spec file is read once it has been quiet this long (seconds), so a file
    # caught half-written (truncate, then write) is never taken for the whole of it.
    settle: float = 0.2
    # What services inherit of the environment the controller was started with (locale,
    # identity, search path), captured once here so resolving specs reads no globals.
    inherited_env: tuple[tuple[str, str], ...] = field(
        default_factory=lambda: tuple(sorted(inheritable(os.environ).items())))
    # `--revision` / `RECONCILER_REVISION`: names the specs dir's revision instead of git
    # (reconciler/host/gitrev.py); None asks git.
    revision: str | None = None
    # This host's labels for `placement` (host/labels.py: the labels file plus automatic
    # `hostname`, `os`, `arch`), read once so desired.py filters purely.
    labels: tuple[tuple[str, str], ...] = field(default_factory=lambda: _automatic_labels())
    # Where the labels came from (read again by a running controller when it changes); None:
    # the automatic labels only, with no file to watch.
    labels_file: Path | None = None

    def __post_init__(self) -> None:
        dirs.check_not_default(str(self.state_dir), os.environ)

    @property
    def db_path(self) -> Path:
        return self.state_dir / dirs.DB_FILE

    @property
    def run_dir(self) -> Path:
        """Default pidfiles, enrollments and relative socket paths live here."""
        return self.state_dir / dirs.RUN_DIR

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / dirs.LOGS_DIR

    @property
    def lock_path(self) -> Path:
        """Held for each pass (daemon and `--once` alike)."""
        return self.state_dir / "lock"

    @property
    def daemon_lock_path(self) -> Path:
        """Held by a daemon for its lifetime: one daemon per state dir."""
        return self.state_dir / dirs.DAEMON_LOCK_FILE


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    return Path(dirs.default_state_dir(env))


def specs_dir_of(specs: str | Path | None = None, env: Mapping[str, str] = os.environ) -> Path:
    """The specs dir: the flag, else `RECONCILER_SPECS`, else `./specs`."""
    return Path(dirs.specs_dir_text(specs, env))


def state_dir_of(state_dir: str | Path | None = None,
                 env: Mapping[str, str] = os.environ) -> Path:
    """The state dir: the flag, else `RECONCILER_STATE_DIR`, else the per-user default."""
    return Path(dirs.state_dir_text(state_dir, env))


def resolve(specs: str | Path | None = None, state_dir: str | Path | None = None,
            env: Mapping[str, str] = os.environ, revision: str | None = None) -> Settings:
    return Settings(specs_dir=specs_dir_of(specs, env).absolute(),
                    state_dir=state_dir_of(state_dir, env).absolute(),
                    revision=revision_label_of(revision, env))


def _automatic_labels() -> tuple[tuple[str, str], ...]:
    # imported here: host/ is no part of what settings are, only of their defaults
    from reconciler.host.labels import automatic_labels

    return tuple(sorted(automatic_labels().items()))
