"""Where the reconciler reads specs and keeps its state.

Precedence is flags, then environment (`RECONCILER_SPECS`, `RECONCILER_STATE_DIR`), then
defaults, as operators expect from most Unix tools. Under pytest, pointing at the real default
state dir is refused: a test that forgot its fixture must fail loudly instead of adopting,
stopping or pruning the developer's real services.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingsError(Exception):
    """A configuration the reconciler refuses to run with."""


@dataclass(frozen=True, slots=True)
class Settings:
    specs_dir: Path
    state_dir: Path
    # A changed spec file is read once it has been quiet this long (seconds), so a file
    # caught half-written (truncate, then write) is never taken for the whole of it.
    settle: float = 0.2

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def run_dir(self) -> Path:
        """Default pidfiles, enrollments and relative socket paths live here."""
        return self.state_dir / "run"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def lock_path(self) -> Path:
        """Held for each pass (daemon and `--once` alike)."""
        return self.state_dir / "lock"

    @property
    def daemon_lock_path(self) -> Path:
        """Held by a daemon for its lifetime: one daemon per state dir."""
        return self.state_dir / "daemon.lock"


def default_state_dir(env: Mapping[str, str] = os.environ) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/reconciler")
    xdg = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "reconciler"


def under_pytest(env: Mapping[str, str] = os.environ) -> bool:
    return "PYTEST_CURRENT_TEST" in env or "pytest" in sys.modules


def resolve(specs: str | Path | None = None, state_dir: str | Path | None = None,
            env: Mapping[str, str] = os.environ) -> Settings:
    specs_path = Path(specs or env.get("RECONCILER_SPECS") or "specs")
    state_path = Path(state_dir or env.get("RECONCILER_STATE_DIR") or default_state_dir(env))
    settings = Settings(specs_dir=specs_path.absolute(), state_dir=state_path.absolute())
    if under_pytest(env) and _same_path(settings.state_dir, default_state_dir(env)):
        raise SettingsError(
            f"refusing the real state dir {settings.state_dir} under pytest; "
            "give the test its own state dir")
    return settings


def _same_path(a: Path, b: Path) -> bool:
    return a.resolve() == b.absolute().resolve()
