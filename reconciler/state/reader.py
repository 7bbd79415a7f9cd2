"""Reading a state dir without writing to it: what `status`, `events`, `logs` and `diff` use.

A reader creates no directory, no file and no `-wal`/`-shm`, chmods nothing and migrates
nothing (see `connect_readonly`), so these commands work on a read-only state dir, on one
they may not write, and on one that does not exist yet ("no jobs yet"). `status`, `events` and
`logs` do not refuse a state dir that is not private either: reading cannot make it worse.
`diff` does (`preview.py`), because it shows a plan that a pass would then refuse to run.
Damage is still reported, including a database emptied beside enrollments.

`reconcile status` reads through the functions here on a plain sqlite3 connection and
imports nothing else of the state (issue 13: `Store`, the records' dataclasses, pathlib and
json cost more than the command's work): it reads only the columns it shows, as `JobView`s
(no spec JSON decoded). The store's own reads of the same rows (`suspended`, `anomalies`,
`controller_facts`) are these functions too, on its connection.
"""

from __future__ import annotations

import os
from operator import itemgetter

from reconciler import dirs
from reconciler.identity import Identity
from reconciler.state.basic import Anomaly, BlockedBy, ControllerFacts
from reconciler.state.errors import DatabaseDamaged

TYPE_CHECKING = False  # not typing's (issue 13)
if TYPE_CHECKING:
    import sqlite3
    from pathlib import Path
    from typing import Any

    from reconciler.settings import Settings
    from reconciler.state.records import JobRecord
    from reconciler.state.store import Store
else:
    try:  # `sqlite3`'s own C module, whose names `sqlite3` re-exports as they are (the same
        # objects: tests/test_status_read.py). `sqlite3` itself also imports `datetime` to
        # register date adapters no reader uses: 2-3 ms, a fifth of `python -c pass` and
        # most of what issue 13's `status` goal lacks. Nothing of the module is lost: a
        # later `import sqlite3` (the writer's store) registers those adapters as usual.
        import _sqlite3 as sqlite3
    except ImportError:  # an interpreter without it: the public module, at its price
        import sqlite3

BUSY_TIMEOUT_MS = 5000
_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB (primary codes)
CONTROLLER_ROW = 1  # the controller table holds one row


def open_reader(settings: Settings) -> Store:
    from reconciler.state import statedir
    from reconciler.state.store import Store

    statedir.check_not_emptied(settings)
    return Store.open_readonly(settings.db_path)


def read_jobs(settings: Settings, *, include_removed: bool = False) -> list[JobRecord]:
    with open_reader(settings) as store:
        return store.jobs(include_removed=include_removed)


# --- the read-only connection ----------------------------------------------------------------


def connect_readonly(path: str | Path) -> tuple[sqlite3.Connection, frozenset[str]]:
    """A connection that writes nothing, and the tables the database has (a reader of a
    database no writer has set up finds nothing in a missing table, instead of failing).
    An absent database reads as empty.

    With a live write-ahead log (`-wal` and `-shm` present: a writer is at work, or
    crashed) it opens `mode=ro` and reads through the log. Without one every committed
    page is in the main file, and `immutable=1` reads it without creating `-shm`/`-wal`
    (a plain `mode=ro` reader would create both, owned by us, in someone else's dir).
    """
    path = os.fspath(path)
    live_log = os.path.exists(f"{path}-wal") and os.path.exists(f"{path}-shm")
    if not os.path.exists(path):
        uri = "file::memory:?mode=ro&cache=private"  # no file: empty, nothing created
    else:
        uri = f"file:{_uri_path(path)}?mode=ro" + ("" if live_log else "&immutable=1")
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        tables = frozenset(row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.DatabaseError as err:
        conn.close()
        if is_damage(err):
            raise damaged(path, str(err)) from None
        raise
    return conn, tables


def _uri_path(path: str) -> str:
    """The path as the path of an SQLite URI: SQLite decodes `%HH` there and ends the path
    at `?` or `#`, so those three are escaped (urllib's `quote` escapes more, to the same
    effect, and costs an import)."""
    return path.replace("%", "%25").replace("?", "%3f").replace("#", "%23")


def is_damage(err: sqlite3.DatabaseError) -> bool:
    """Corrupt or not a database at all, as opposed to busy, locked or read-only."""
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_CODES
    return type(err) is sqlite3.DatabaseError  # no code: only the base class means damage


def damaged(path: str | Path, detail: str) -> DatabaseDamaged:
    state_dir = os.path.dirname(os.fspath(path))
    return DatabaseDamaged(
        f"the state database {os.fspath(path)} is damaged ({detail}). Managed processes "
        f"keep running. Run `reconcile repair --state-dir {state_dir}` to move it aside and "
        f"rebuild the jobs from {os.path.join(state_dir, dirs.RUN_DIR)}", detail)


def _has(tables: frozenset[str] | None, table: str) -> bool:
    return tables is None or table in tables  # None: a writer's, every table exists


# --- what `status` shows, and the store reads the same way -----------------------------------


# the columns `status` reads, and the value of one a database of another age lacks (or NULL):
# `JobRecord`'s defaults (tests/test_status_read.py holds them to its fields)
_JOB_COLUMNS: dict[str, object] = {
    "id": "", "service": "", "action": "", "generation": "", "phase": "pending",
    "process": True, "pid": None, "boot_id": None, "starttime_ticks": None,
    "restart_count": 0, "last_exit_code": None, "last_exit_at": None,
    "started_at": None, "next_start_at": None, "failure_class": None, "ready": False,
    "reason": "", "revision": None, "blocked_by": None}
_AT = {name: index for index, name in enumerate(_JOB_COLUMNS)}


def _column(name: str) -> Any:
    """A read-only attribute of a `JobView`: the row's item at the column's index."""
    return property(itemgetter(_AT[name]))


class JobView(tuple[object, ...]):
    """A job as `status` shows it: the columns of its row that the table and `-o json`
    print, read without its spec (a JSON column per job that status never shows). Read
    only; `render` takes it where it takes a `JobRecord` (the same attribute names).

    It is the row itself, as the cursor gives it (a tuple: no Python code runs per row,
    issue 13): `job_views` has SQLite give each column in `COLUMNS`' order, its default in
    place of a NULL or of a column the database lacks, and each attribute is an item."""

    __slots__ = ()
    COLUMNS = _JOB_COLUMNS

    id: str = _column("id")
    service: str = _column("service")
    action: str = _column("action")
    generation: str = _column("generation")
    phase: str = _column("phase")
    pid: int | None = _column("pid")
    boot_id: str | None = _column("boot_id")
    starttime_ticks: int | None = _column("starttime_ticks")
    restart_count: int = _column("restart_count")
    last_exit_code: int | None = _column("last_exit_code")
    last_exit_at: float | None = _column("last_exit_at")
    started_at: float | None = _column("started_at")
    next_start_at: float | None = _column("next_start_at")
    failure_class: str | None = _column("failure_class")
    reason: str = _column("reason")
    revision: str | None = _column("revision")

    @property
    def process(self) -> bool:
        return bool(self[_AT["process"]])  # SQLite stores 0 or 1

    @property
    def ready(self) -> bool:
        return bool(self[_AT["ready"]])

    @property
    def blocked_by(self) -> tuple[BlockedBy, ...]:
        """Decoded when asked for (`-o json`): the table does not show it."""
        return blocked_by_from_json(self[_AT["blocked_by"]], self.id)

    @property
    def identity(self) -> Identity | None:
        if self.pid is None or self.boot_id is None or self.starttime_ticks is None:
            return None
        return Identity(self.boot_id, self.pid, self.starttime_ticks)

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.action)


def job_views(conn: sqlite3.Connection, tables: frozenset[str] | None) -> list[JobView]:
    """The non-removed jobs by service and action, oldest first within an action (the
    order of `Store.jobs`)."""
    if not _has(tables, "jobs"):
        return []
    present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    columns, defaults = [], []
    for name, default in JobView.COLUMNS.items():
        if name not in present:  # a database of another age
            columns.append("?")
            defaults.append(default)
        elif default is None:
            columns.append(name)
        else:
            columns.append(f"COALESCE({name}, ?)")
            defaults.append(default)
    cursor = conn.execute(f"SELECT {', '.join(columns)} FROM jobs WHERE phase != 'removed'"
                          " ORDER BY service, action, rowid", defaults)
    return list(map(JobView, cursor))


def suspended(conn: sqlite3.Connection, tables: frozenset[str] | None) -> frozenset[str]:
    """The services `reconcile suspend` took out of the controller's hands."""
    if not _has(tables, "suspended"):
        return frozenset()
    return frozenset(row[0] for row in conn.execute("SELECT service FROM suspended"))


def anomalies(conn: sqlite3.Connection, tables: frozenset[str] | None) -> list[Anomaly]:
    if not _has(tables, "anomalies"):
        return []
    cursor = conn.execute("SELECT job_id, service, action, rule, since, detail FROM anomalies"
                          " ORDER BY service, action, rule")
    return [Anomaly(job_id, service, action, rule, since, detail or "")
            for job_id, service, action, rule, since, detail in cursor]


def controller_facts(conn: sqlite3.Connection, tables: frozenset[str] | None, *,
                     placement: bool = True) -> ControllerFacts:
    """As last recorded; all None on a database no pass has written yet. Without
    `placement` the labels and unplaced services are not read (the `status` header does not
    show them: no JSON to decode)."""
    if not _has(tables, "controller"):
        return ControllerFacts()
    cursor = conn.execute("SELECT * FROM controller WHERE id = ?", (CONTROLLER_ROW,))
    found = cursor.fetchone()
    if found is None:
        return ControllerFacts()
    row = dict(zip([d[0] for d in cursor.description], found, strict=True))
    if not placement:
        row.pop("labels", None)
        row.pop("unplaced", None)
    return facts_from_row(row)


def spec_file_errors(conn: sqlite3.Connection, tables: frozenset[str] | None
                     ) -> list[tuple[str, str | None, bool]]:
    """Each spec file's (name, current error, whether a last good version exists), by name:
    what a file's state is made of (`info.file_state`), without the files' content."""
    if not _has(tables, "specs"):
        return []
    return [(file, error, bool(good)) for file, error, good in conn.execute(
        "SELECT file, error, content IS NOT NULL FROM specs ORDER BY file")]


# --- JSON columns, read tolerantly (the store's rows too) ------------------------------------


def _warn(message: str, *args: object) -> None:
    """`logging` is imported only when there is a warning to give (issue 13)."""
    import logging

    logging.getLogger("reconciler.state.store").warning(message, *args)


def facts_from_row(row: dict[str, Any]) -> ControllerFacts:
    ok = row.get("last_pass_ok")
    return ControllerFacts(
        last_pass_at=row.get("last_pass_at"), last_pass_ok=None if ok is None else bool(ok),
        last_pass_duration_ms=row.get("last_pass_duration_ms"), revision=row.get("revision"),
        applied_revision=row.get("applied_revision"), dirty=bool(row.get("dirty")),
        revision_error=row.get("revision_error"), daemon_pid=row.get("daemon_pid"),
        daemon_started_at=row.get("daemon_started_at"),
        labels=_pairs_from_json(row.get("labels"), "labels"),
        unplaced=_pairs_from_json(row.get("unplaced"), "unplaced"))


def _pairs_from_json(raw: Any, what: str) -> tuple[tuple[str, str], ...]:
    """A JSON object of strings as sorted pairs; absent or unreadable is none."""
    value = dict_from_json(raw or None, what, "the controller")
    return tuple(sorted((str(k), str(v)) for k, v in value.items()))


def dict_from_json(raw: Any, what: str, owner: Any) -> dict[str, Any]:
    if raw is None or isinstance(raw, dict):
        return raw or {}  # column absent, or already the dataclass default
    import json

    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        value = None
    if not isinstance(value, dict):
        _warn("%s of %s: unreadable JSON %r, treated as empty", what, owner, raw)
        return {}
    return value


def blocked_by_from_json(raw: Any, job_id: Any) -> tuple[BlockedBy, ...]:
    if raw is None or isinstance(raw, tuple):
        return raw or ()  # column absent, or already the dataclass default
    import json

    try:
        items = json.loads(raw)
        return tuple(BlockedBy(resource=str(item["resource"]), pid=item.get("pid"),
                               cmd=str(item.get("cmd", ""))) for item in items)
    except (TypeError, ValueError, KeyError, AttributeError):
        _warn("job %s: unreadable blocked_by %r, treated as empty", job_id, raw)
        return ()
