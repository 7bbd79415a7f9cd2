"""`reconcile repair`: recover from a damaged `state.db` without duplicating any service.

The database is the controller's memory, but not its proof of ownership: every process we
started has an enrollment in `run/` (written before its command ran). So a lost database is
rebuilt from the enrollments exactly as a crash between spawn and commit is (one function,
`with_unrecorded_enrollments`), and the next pass adopts the still-running processes instead
of starting second instances. What only the database knew is lost and said so: restart
counts, events, last-good spec versions, and which services were stopped with `down`. The
damaged file is kept beside it (`state.db.damaged-<timestamp>`) for forensics.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.controller import with_unrecorded_enrollments
from reconciler.files import fsync_dir
from reconciler.settings import Settings
from reconciler.state import statedir
from reconciler.state.enrollment import read_enrollments
from reconciler.state.errors import DatabaseDamaged
from reconciler.state.lock import DaemonLock, StateLock
from reconciler.state.records import Event
from reconciler.state.store import Store


@dataclass
class RepairReport:
    """What `reconcile repair` did, and what was lost with the damaged database, for the
    operator to read."""

    damage: str | None = None  # None: the database was whole, nothing was done
    moved: list[tuple[Path, Path]] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)  # "service.action pid N (job id)"
    unproven: list[str] = field(default_factory=list)  # pidfiles no enrollment vouches for

    def lines(self) -> list[str]:
        if self.damage is None:
            return ["the state database is intact: nothing to repair"]
        out = [f"damage: {self.damage}"]
        out += [f"moved {src} to {dest}" for src, dest in self.moved]
        out.append(f"created a fresh {self.moved[0][0]}" if self.moved
                   else "created a fresh state database")
        out += [f"rebuilt job {line}" for line in self.rebuilt]
        if not self.rebuilt:
            out.append("no enrollments in run/: no jobs to rebuild")
        out += [f"not adopted: {line}" for line in self.unproven]
        out.append("lost with the old database: restart counts, events, last-good spec "
                   "versions and which services were stopped with `down`; the next pass "
                   "adopts the rebuilt jobs' processes")
        return out


def repair(settings: Settings, now: float | None = None) -> RepairReport:
    """Refuses while a daemon runs (it holds the old file open and would keep writing into
    it); holds the pass lock so no `--once` runs a pass meanwhile."""
    now = time.time() if now is None else now
    statedir.prepare(settings)
    report = RepairReport()
    with DaemonLock(settings.daemon_lock_path, ": stop it before `reconcile repair`"), \
            StateLock(settings.lock_path):
        report.damage = diagnose(settings)
        if report.damage is None:
            return report
        report.moved = move_aside(settings.db_path, now)
        enrollments = read_enrollments(settings.run_dir)
        records = with_unrecorded_enrollments([], enrollments, now)
        with Store.open(settings.db_path) as store, store.atomic():
            store.upsert_jobs(records)
            store.append_events([Event(
                at=now, kind="repaired", reason=f"state database rebuilt: {report.damage}",
                detail={"moved_to": [str(dest) for _, dest in report.moved],
                        "jobs": [r.id for r in records]})])
        report.rebuilt = [f"{r.service}.{r.action} pid {r.pid} ({r.id})" for r in records]
        proven = {e.identity.pid for e in enrollments.values()}
        report.unproven = unproven_pidfiles(settings.run_dir, proven)
    return report


def diagnose(settings: Settings) -> str | None:
    """What is wrong with the database, or None when it is whole (or absent and unneeded)."""
    try:
        statedir.check_not_emptied(settings)
    except DatabaseDamaged:
        return ("empty or missing state database in a state dir that was in use (enrollments "
                "of started jobs, or its specs-dir binding)")
    if not settings.db_path.exists() or settings.db_path.stat().st_size == 0:
        return None  # a fresh state dir: nothing to rebuild
    try:
        Store.open(settings.db_path).close()
    except DatabaseDamaged as err:
        return err.detail
    return None


def move_aside(db_path: Path, now: float) -> list[tuple[Path, Path]]:
    """Rename the database and its -wal/-shm together: a fresh database next to the old
    write-ahead log would have that log replayed into it."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    base = Path(f"{db_path}.damaged-{stamp}")
    n = 1
    while any(os.path.lexists(f"{base}{s}") for s in ("", "-wal", "-shm")):
        base = Path(f"{db_path}.damaged-{stamp}.{n}")
        n += 1
    moved = []
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db_path}{suffix}")
        if os.path.lexists(src):
            dest = Path(f"{base}{suffix}")
            os.rename(src, dest)
            moved.append((src, dest))
    fsync_dir(db_path.parent)
    return moved


def unproven_pidfiles(run_dir: Path, proven: set[int]) -> list[str]:
    """Pidfiles in run/ naming a pid no enrollment proves ours: never adopted on a pidfile's
    word (anyone who can write a file could name any process); the next pass handles them as
    the spec says (blocked, or replaced with `singleton`)."""
    found = []
    try:
        names = sorted(e.name for e in os.scandir(run_dir) if e.name.endswith(".pid"))
    except OSError:
        return []
    for name in names:
        try:
            fd = os.open(run_dir / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                text = handle.read(32).decode("ascii", "replace").strip()
        except OSError:
            continue
        if text.isdigit() and int(text) not in proven:
            found.append(f"{run_dir / name} names pid {text}, which no enrollment proves ours")
    return found
