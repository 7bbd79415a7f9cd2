"""Why the reconciler refuses a state dir. Each is an operator's problem with a known fix, so
the CLI prints it as one line (`reconcile: error: ...`, exit 2), never as a traceback."""

from __future__ import annotations


class StateError(Exception):
    """A state dir the reconciler will not act on as it is; the message says the fix."""


class StateDirNotPrivate(StateError):
    """The state dir existed with group/other permissions, or is owned by someone else."""


class DatabaseDamaged(StateError):
    """`state.db` is corrupt, truncated, or empty beside enrollments of running jobs."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message  # what SQLite said, for `repair`'s report


class SpecsDirMismatch(StateError):
    """The state dir serves another specs dir (`--rebind` moves it)."""


class DaemonRunning(StateError):
    """Another daemon holds the state dir."""
