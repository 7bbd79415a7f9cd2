"""Where a job's logs live: `<logs-dir>/<service>/<action>.log`, and `.log.N` for the N-th
previous run. Built here and nowhere else, with no I/O, so the pure core (`desired`) and the
CLI name the same files that `logs.py` rotates and caps.
"""

from __future__ import annotations

from pathlib import Path


def log_path(logs_dir: Path, service: str, action: str) -> Path:
    for name in (service, action):
        _check_name(name)
    return logs_dir / service / f"{action}.log"


def previous_path(path: Path, n: int = 1) -> Path:
    """The log of the n-th previous run (1 = the run before the current one)."""
    if n < 1:
        raise ValueError(f"previous run numbers start at 1, got {n}")
    return path.with_name(f"{path.name}.{n}")


def _check_name(name: str) -> None:
    """Service and action names become path parts: refuse anything that leaves the dir."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"invalid name for a log path: {name!r}")
