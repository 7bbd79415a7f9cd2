"""What `reconcile info` and the `status` header report: the controller, its source revision
and its spec files, read without writing anything.

Everything comes from what passes recorded (the read-only store, `state/reader.py`) and from
the daemon lock (`state/lock.py`: a daemon is up while it holds `daemon.lock`), so `info`
works on a read-only state dir, creates nothing, and reports the state the last pass saw
rather than loading the specs again.

A file's state (from its spec record):
- `ok`: its current content loaded cleanly;
- `empty`: it has no services (an error: "delete the file to remove them"); its last good
  version, if any, stays in force;
- `last-good`: it is broken now, and its last good version is in force;
- `refused`: it is broken (or unsafe, or unreadable) and nothing of it is in force.
"""

from __future__ import annotations

import os

from reconciler import __version__, dirs
from reconciler.state import statedir
from reconciler.state.basic import ControllerFacts
from reconciler.state.lock import daemon_pid
from reconciler.tuples import NamedTuple  # typing's, without importing typing

# `reconcile status` builds its header through here (`status_info`): the store, the settings
# and the records are imported only for annotations, or where `info` itself reads (issue 13)
TYPE_CHECKING = False  # not typing's
if TYPE_CHECKING:
    import sqlite3
    from typing import Literal

    from reconciler.settings import Settings
    from reconciler.state.records import SpecRecord
    from reconciler.state.store import Store

    FileStateName = Literal["ok", "last-good", "refused", "empty"]


class FileState(NamedTuple):
    """One spec file as the last pass left it."""

    file: str
    state: FileStateName
    error: str | None


class Info(NamedTuple):
    """The facts `info` prints (render.info_json gives the documented JSON shape)."""

    version: str
    specs_dir: str
    state_dir: str
    daemon_pid: int | None  # up now (holds daemon.lock), else None
    facts: ControllerFacts
    files: tuple[FileState, ...]
    labels: dict[str, str] = {}  # never changed in place (nothing does: a named tuple's)
    unplaced: dict[str, str] = {}  # service -> why not on this host

    @property
    def daemon_started_at(self) -> float | None:
        """Known when the recorded daemon is the one holding the lock now."""
        if self.daemon_pid is None or self.facts.daemon_pid != self.daemon_pid:
            return None
        return self.facts.daemon_started_at

    @property
    def files_not_ok(self) -> tuple[FileState, ...]:
        return tuple(f for f in self.files if f.state != "ok")


def read_info(settings: Settings) -> Info:
    from reconciler.state.reader import open_reader

    with open_reader(settings) as store:
        return info_from(store, settings)


def info_from(store: Store, settings: Settings) -> Info:
    """`read_info` on a store the caller has open (`status` reads its jobs from it too)."""
    facts = store.controller_facts()
    records = store.spec_records()
    return Info(version=__version__, specs_dir=served_specs_dir(settings),
                state_dir=str(settings.state_dir),
                daemon_pid=daemon_pid(settings.daemon_lock_path), facts=facts,
                files=tuple(file_state(r) for r in records.values()),
                # the daemon's labels, as its last pass placed by them; this command's own
                # until a pass has recorded them
                labels=dict(facts.labels or settings.labels), unplaced=dict(facts.unplaced))


def served_specs_dir(settings: Settings) -> str:
    """The specs dir this state dir serves (its binding), which is what the daemon reads;
    the one given (flag, environment, `./specs`) when it is not bound yet."""
    return served_specs_dir_of(str(settings.state_dir), str(settings.specs_dir))


def served_specs_dir_of(state_dir: str, specs_dir: str) -> str:
    try:
        bound = statedir.read_binding(state_dir)
    except OSError:
        bound = None
    return bound or statedir.specs_key(specs_dir)


def file_state(record: SpecRecord) -> FileState:
    return file_state_of(record.file, record.error, record.content is not None)


def file_state_of(file: str, error: str | None, has_last_good: bool) -> FileState:
    """A file's state from its current error and whether a last good version exists."""
    if error is None:
        return FileState(file, "ok", None)
    from reconciler.spec.load import NO_SERVICES  # only for a broken file: yaml, pydantic

    if NO_SERVICES in error:
        return FileState(file, "empty", error)
    state: FileStateName = "last-good" if has_last_good else "refused"
    return FileState(file, state, error)


def status_info(conn: sqlite3.Connection, tables: frozenset[str], state_dir: str,
                specs_dir: str) -> Info:
    """What the `status` header shows, read on `status`' own connection (state/reader.py)
    with nothing else of the state loaded: no labels (the header does not show them, and
    they are JSON), and no file contents (a file's state needs only whether one exists)."""
    from reconciler.state import reader

    facts = reader.controller_facts(conn, tables, placement=False)
    files = tuple(file_state_of(*found) for found in reader.spec_file_errors(conn, tables))
    return Info(version=__version__, specs_dir=served_specs_dir_of(state_dir, specs_dir),
                state_dir=state_dir,
                daemon_pid=daemon_pid(os.path.join(state_dir, dirs.DAEMON_LOCK_FILE)),
                facts=facts, files=files)
