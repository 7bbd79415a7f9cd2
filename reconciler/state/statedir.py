"""The state dir as a whole: who may use it, whether its database is whole, which specs dir
it serves.

- Privacy. We create missing directories 0700 and chmod nothing else: an existing dir is
  its owner's (a sticky 1777 dir chmodded to 0700 breaks everyone else who uses it). An
  existing state dir with any group/other permission, or owned by another user, is refused
  with the fix instead: its files prove which processes are ours and its logs may hold
  secrets.
- Emptiness is not freshness. `state.db` absent or 0 bytes while `run/` holds enrollments
  means the database was lost, not that this is a first start: starting over would reset
  restart counts and bring back services stopped with `down`. It is refused as damage
  (`reconcile repair` rebuilds). With no enrollments it is a genuine fresh start.
- Binding. `<state-dir>/specs-dir` holds the absolute specs path the state dir serves, as
  given (not resolved, so a git-sync or ConfigMap symlink keeps working). A file rather than
  a database row, so it survives damage and `repair` of the database. A pass with another
  specs dir would prune every service and start others: refused unless `--rebind`.
"""

from __future__ import annotations

import os
import stat
import time

from reconciler import dirs
from reconciler.state.errors import DatabaseDamaged, SpecsDirMismatch, StateDirNotPrivate
from reconciler.text import printable
from reconciler.tuples import NamedTuple  # typing's, without importing typing (status)

# `reconcile status` checks the database through here (`check_not_emptied_at`): what only
# the acting commands use (the writer's store, files, enrollments) is imported where they
# use it, so status loads no dataclasses, pathlib or sqlite-utils for it (issue 13)
TYPE_CHECKING = False  # not typing's
if TYPE_CHECKING:
    from pathlib import Path

    from reconciler.settings import Settings

BINDING_FILE = "specs-dir"


def prepare(settings: Settings) -> None:
    """Create what is missing (0700), refuse an existing state dir that is not private."""
    from reconciler.files import make_private_dirs

    state_dir = settings.state_dir
    if os.path.lexists(state_dir):
        check_private(state_dir)
    else:
        make_private_dirs(state_dir)
    for sub in (settings.run_dir, settings.logs_dir):
        make_private_dirs(sub)


def check_private(state_dir: Path) -> None:
    """Follows a symlinked state dir: what counts is the directory the files land in."""
    shown = printable(str(state_dir))
    try:
        st = os.stat(state_dir)
    except OSError as err:
        raise StateDirNotPrivate(f"cannot use the state dir {shown}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirNotPrivate(f"the state dir {shown} is not a directory; "
                                 "choose another --state-dir")
    if st.st_uid != os.geteuid():
        raise StateDirNotPrivate(
            f"the state dir {shown} is owned by uid {st.st_uid}, not by us (uid "
            f"{os.geteuid()}); choose another --state-dir")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        raise StateDirNotPrivate(
            f"the state dir {shown} is not private (mode {stat.S_IMODE(st.st_mode):04o}): it "
            f"holds the proof of which processes are ours and their logs. Run `chmod 700 "
            f"{shown}`, or choose another --state-dir")


def check_not_emptied(settings: Settings) -> None:
    """An absent or 0-byte database beside enrollments is damage (see the module doc)."""
    check_not_emptied_at(str(settings.state_dir))


def check_not_emptied_at(state_dir: str) -> None:
    """`check_not_emptied` of the state dir at this (absolute, normalized) path: the same
    paths in the message as `Settings` gives (`dirs.absolute` is pathlib's form)."""
    db = os.path.join(state_dir, dirs.DB_FILE)
    run_dir = os.path.join(state_dir, dirs.RUN_DIR)
    try:
        size = os.stat(db).st_size
    except FileNotFoundError:
        size = 0
    if size:
        return
    enrolled = count_enrollments(run_dir)
    # With every service stopped by `down` there is no enrollment, but the binding file
    # (written only after the database got its first event) still proves earlier use.
    if enrolled or read_binding(state_dir) is not None:
        state = "empty" if os.path.lexists(db) else "missing"
        evidence = (f"{printable(run_dir)} holds {enrolled} enrollment(s) of "
                    "started jobs" if enrolled else "this state dir has served a specs dir")
        raise DatabaseDamaged(
            f"the state database {printable(str(db))} is {state} but {evidence}"
            ": the database was lost, this is not a fresh start (restart counts and "
            "services stopped with `down` would be forgotten). Managed processes keep "
            f"running. Run `reconcile repair --state-dir {printable(state_dir)}`"
            " to rebuild the jobs from them")


def count_enrollments(run_dir: str | Path) -> int:
    from reconciler.state.enrollment import SUFFIX

    try:
        return sum(1 for e in os.scandir(run_dir)
                   if e.name.endswith(SUFFIX) and not e.name.startswith("."))
    except OSError:
        return 0


# --- binding to a specs dir ---------------------------------------------------------------


class Binding(NamedTuple):
    """Which specs dir a state dir serves: a state dir pointed at another specs dir would
    prune every service it runs."""

    bound: str | None  # what the state dir serves now (None: nothing yet)
    wanted: str  # the specs dir of this run

    @property
    def matches(self) -> bool:
        return self.bound == self.wanted


def binding_path(state_dir: Path) -> Path:
    return state_dir / BINDING_FILE


def specs_key(specs_dir: str | Path) -> str:
    """Absolute and lexically normalized (`a/./b/../c`), symlinks deliberately not resolved."""
    return os.path.normpath(os.path.abspath(specs_dir))


def read_binding(state_dir: str | Path) -> str | None:
    try:
        fd = os.open(os.path.join(state_dir, BINDING_FILE),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        text = handle.read().decode("utf-8", "surrogateescape").rstrip("\n")
    return text or None


def binding(settings: Settings) -> Binding:
    return Binding(read_binding(settings.state_dir), specs_key(settings.specs_dir))


def check_binding(settings: Settings) -> Binding:
    """Refuse a state dir bound to another specs dir; an unbound one passes."""
    found = binding(settings)
    if found.bound is not None and not found.matches:
        raise SpecsDirMismatch(
            f"the state dir {printable(str(settings.state_dir))} serves the specs dir "
            f"{printable(found.bound)}, not {printable(found.wanted)}: run with --specs "
            f"{printable(found.bound)}, or add --rebind to make it serve "
            f"{printable(found.wanted)} from now on (services not in the new dir are then "
            "stopped)")
    return found


def write_binding(settings: Settings) -> None:
    from reconciler.files import write_atomic

    data = (specs_key(settings.specs_dir) + "\n").encode("utf-8", "surrogateescape")
    write_atomic(binding_path(settings.state_dir), data)


def bind(settings: Settings) -> Binding:
    """Make the state dir serve `settings.specs_dir` (first use, or `--rebind`), recording
    it as an event. The caller has checked the state dir (controller.prepare_state_dir)."""
    from reconciler.state.records import Event
    from reconciler.state.store import Store

    found = binding(settings)
    if found.matches:
        return found
    kind = "bound" if found.bound is None else "rebound"
    reason = (f"state dir now serves {found.wanted}" if found.bound is None
              else f"state dir rebound from {found.bound} to {found.wanted}")
    with Store.open(settings.db_path) as store:
        store.append_events([Event(at=time.time(), kind=kind, reason=reason,
                                   detail={"from": found.bound, "to": found.wanted})])
    write_binding(settings)
    return found
