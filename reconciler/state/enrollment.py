"""Enrollment files: the proof, written before a spawned process runs its command, that it
is ours (the spawn gate waits for it: host/spawn.py).

SQLite is written at the end of a pass; if the controller dies between spawning and
recording, only this file lets the next controller adopt the process instead of treating it
as an alien (or starting a duplicate). So it is written atomically (temp file, rename):
after a crash it is either complete or absent, never torn. It is not fsynced: it is only
ever trusted within the boot it names, and only a machine crash (a new boot) can lose a
rename or an unlink that was not synced.

Reading is forgiving: a corrupt file is skipped and logged, never raised. A missing
enrollment only costs adoption (the process is then handled as alien), while a crash here
would stop every pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from reconciler.files import PRIVATE_FILE, write_atomic
from reconciler.identity import Identity
from reconciler.state.records import Enrollment


def _warn(message: str, *args: object) -> None:
    """A warning in this module's log. `logging` is imported only when there is one: the
    read-only commands (`status`) log nothing and need not load it (issue 13)."""
    import logging

    logging.getLogger(__name__).warning(message, *args)


SUFFIX = ".enroll.json"
FORMAT = 1


def enrollment_path(run_dir: Path, job_id: str) -> Path:
    return run_dir / enrollment_file_name(job_id)


def enrollment_file_name(job_id: str) -> str:
    _check_job_id(job_id)
    return f"{job_id}{SUFFIX}"


def enroll(run_dir: Path, enrollment: Enrollment) -> Path:
    """Write `<run_dir>/<job_id>.enroll.json` atomically; returns its path.

    Not fsynced (see the module docstring): the fsyncs were most of a spawn's cost. One line
    of JSON: an indented one goes through json's pure-Python encoder, 3× the C one's cost.
    """
    target = enrollment_path(run_dir, enrollment.job_id)
    # write_atomic creates the run dir if it is missing
    write_atomic(target, json.dumps(_to_json(enrollment)).encode(), PRIVATE_FILE,
                 durable=False)
    return target


def read_enrollments(run_dir: Path) -> dict[str, Enrollment]:
    """Every readable enrollment by job id; a missing dir is simply "none yet"."""
    try:
        names = sorted(e.name for e in os.scandir(run_dir)
                       if e.name.endswith(SUFFIX) and not e.name.startswith("."))
    except FileNotFoundError:
        return {}
    except OSError as err:
        _warn("cannot list enrollments in %s: %s", run_dir, err)
        return {}
    found: dict[str, Enrollment] = {}
    for name in names:
        enrollment = _read_one(run_dir / name)
        if enrollment is not None:
            found[enrollment.job_id] = enrollment
    return found


class Enrollments:
    """The run dir's enrollments, read in full once and then kept current.

    Enrollments are written only during a pass, and a pass holds the state dir's lock. So a
    process that keeps holding the lock pass after pass knows every change: its own writes.
    It reads everything again only when the lock changed hands (`invalidate`), and after its
    own steps only the files of the jobs they touched (`refresh`). At a thousand jobs that
    saves a directory listing of two thousand entries per pass.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._known: dict[str, Enrollment] | None = None

    def current(self) -> dict[str, Enrollment]:
        if self._known is None:
            self._known = read_enrollments(self.run_dir)
        return dict(self._known)

    def invalidate(self) -> None:
        self._known = None

    def refresh(self, job_ids: Iterable[str],
                written: Mapping[str, Enrollment] | None = None) -> None:
        """Read these jobs' files again (they were written or removed), except those
        `written` says were written whole, with what (what a read would give back)."""
        if self._known is None:
            return
        written = written or {}
        for job_id in job_ids:
            if job_id in written:
                self._known[job_id] = written[job_id]
                continue
            path = enrollment_path(self.run_dir, job_id)
            enrollment = _read_one(path) if os.path.lexists(path) else None
            if enrollment is None:
                self._known.pop(job_id, None)
            else:
                self._known[job_id] = enrollment


def read_enrollment(run_dir: Path, job_id: str) -> Enrollment | None:
    """The enrollment of one job, or None if it has none (or an unreadable one)."""
    path = enrollment_path(run_dir, job_id)
    return _read_one(path) if os.path.lexists(path) else None


def unenroll(run_dir: Path, job_id: str) -> None:
    """Forget a job's process (it was stopped); already gone is fine."""
    enrollment_path(run_dir, job_id).unlink(missing_ok=True)


# --- helpers ---------------------------------------------------------------------------------


def _check_job_id(job_id: str) -> None:
    """Job ids become file names: refuse anything that could escape the run dir."""
    if not job_id or job_id in (".", "..") or "/" in job_id or "\0" in job_id:
        raise ValueError(f"invalid job id for an enrollment file: {job_id!r}")


def _to_json(enrollment: Enrollment) -> dict[str, Any]:
    identity = enrollment.identity
    return {
        "format": FORMAT,
        "job_id": enrollment.job_id,
        "service": enrollment.service,
        "action": enrollment.action,
        "generation": enrollment.generation,
        "identity": {"boot_id": identity.boot_id, "pid": identity.pid,
                     "starttime_ticks": identity.starttime_ticks},
        "cmdline": list(enrollment.cmdline),
        "enrolled_at": enrollment.enrolled_at,
    }


def _from_json(data: Any) -> Enrollment:
    """Strict: a half-valid enrollment is worse than none, since it decides what we signal."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    ident = data["identity"]
    identity = Identity(boot_id=_typed(ident["boot_id"], str),
                        pid=_typed(ident["pid"], int),
                        starttime_ticks=_typed(ident["starttime_ticks"], int))
    cmdline = data["cmdline"]
    if not isinstance(cmdline, list) or not all(isinstance(arg, str) for arg in cmdline):
        raise ValueError("cmdline is not a list of strings")
    return Enrollment(
        job_id=_typed(data["job_id"], str), service=_typed(data["service"], str),
        action=_typed(data["action"], str), generation=_typed(data["generation"], str),
        identity=identity, cmdline=tuple(cmdline),
        enrolled_at=float(_typed(data["enrolled_at"], (int, float))),
    )


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"unexpected value {value!r}")
    return value


def _read_one(path: Path) -> Enrollment | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            enrollment = _from_json(json.loads(handle.read()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        _warn("skipping unreadable enrollment %s: %s", path, err)
        return None
    if path.name != enrollment_file_name(enrollment.job_id):
        # unenroll() could never remove it, and it may describe another job: distrust it
        _warn("skipping enrollment %s: it names job %s", path, enrollment.job_id)
        return None
    return enrollment


def sweep_stale_temps(run_dir: Path) -> None:
    """A controller killed mid-write leaves temp files behind; the next controller sweeps
    them once at start-up (doing it per spawn cost a directory scan per spawn: O(N²))."""
    if run_dir.is_dir():
        for stale in run_dir.glob(f".*{SUFFIX}.*.tmp"):
            stale.unlink(missing_ok=True)
