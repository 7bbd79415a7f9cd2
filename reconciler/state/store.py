"""The controller's durable memory: jobs, events and last-good specs in SQLite (sqlite-utils).

Backoff counters, job ids and identities live here so that a restart of the controller is not
an outage: the next controller continues exactly where the last one stopped.

Threading: a `Store` wraps ONE `sqlite3` connection, and a connection belongs to the thread
that opened it (sqlite3's `check_same_thread` stays on, so misuse raises `ProgrammingError`
instead of silently losing writes). The pass owns one Store; anything else that wants to read
(the CLI, another thread) opens its own Store on the same file. WAL lets readers run while
the pass writes.

Schema changes are additive migrations (new tables, columns, indexes; never drop or rename),
so a database written by any older version opens without loss, and one written by a newer
version still reads (unknown columns are ignored).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, fields
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from reconciler.files import PRIVATE_FILE, make_private_dirs
from reconciler.state import reader
from reconciler.state.jobindex import JobIndex
from reconciler.state.reader import (
    BUSY_TIMEOUT_MS,
    blocked_by_from_json,
    connect_readonly,
    dict_from_json,
)
from reconciler.state.reader import damaged as damaged  # re-exported: preview.py, repair
from reconciler.state.reader import is_damage as is_damage
from reconciler.state.records import (
    Anomaly,
    ControllerFacts,
    EnvFiles,
    Event,
    JobRecord,
    JobSpec,
    Sample,
    SpecRecord,
)
from reconciler.timing import LOCK_RETRY_SECONDS

if TYPE_CHECKING:  # sqlite-utils is imported where a writer needs it (see _LazyMigrations)
    from sqlite_utils import Database, Migrations
    from sqlite_utils.db import Table


def _warn(message: str, *args: object) -> None:
    """A warning in this module's log. `logging` is imported only when there is one: the
    read-only commands (`status`) log nothing and need not load it (issue 13)."""
    import logging

    logging.getLogger(__name__).warning(message, *args)



_Migration = TypeVar("_Migration", bound="Callable[[Database], None]")


class _LazyMigrations:
    """sqlite-utils' `Migrations("reconciler")`, built on first use: importing sqlite-utils
    (click, pluggy, dateutil come with it) costs more than all of `reconcile status`, which
    only reads (see `_ReadOnlyDb`). Registering a migration needs no import."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._registered: list[Callable[[Database], None]] = []
        self._built: Migrations | None = None

    def __call__(self) -> Callable[[_Migration], _Migration]:
        def register(fn: _Migration) -> _Migration:
            self._registered.append(fn)
            return fn
        return register

    @property
    def migrations(self) -> Migrations:
        if self._built is None:
            from sqlite_utils import Migrations

            self._built = Migrations(self.name)
            for fn in self._registered:
                self._built()(fn)
        return self._built

    def pending(self, db: Database) -> list[Any]:
        return self.migrations.pending(db)

    def apply(self, db: Database, *, stop_before: str | None = None) -> None:
        self.migrations.apply(db, stop_before=stop_before)


MIGRATIONS = _LazyMigrations("reconciler")


# --- migrations ---------------------------------------------------------------------------
# Each migration is frozen as it shipped: it spells out its own columns instead of deriving
# them from today's dataclasses, so replaying history always builds the same schema. Each is
# idempotent too, because a database may predate the migrations table ("unknown old
# version"): then every migration runs against tables that may already be (partly) there.


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    """The schema of the first release."""
    _ensure_table(
        db, "jobs",
        {
            "id": str, "service": str, "action": str, "generation": str, "phase": str,
            "process": int, "pid": int, "boot_id": str, "starttime_ticks": int,
            "restart_count": int, "last_exit_code": int, "last_exit_at": float,
            "started_at": float, "next_start_at": float, "consecutive_failures": int,
            "health": str, "reason": str, "blocked_by": str, "spec": str, "updated_at": float,
        },
        pk="id",
        not_null=("service", "action", "generation", "phase", "process", "restart_count",
                  "consecutive_failures", "reason", "blocked_by", "spec"),
        defaults={"phase": "pending", "process": 1, "restart_count": 0,
                  "consecutive_failures": 0, "reason": "", "blocked_by": "[]", "spec": "{}"},
    )
    _table(db, "jobs").create_index(["service", "action"], index_name="idx_jobs_service_action",
                                    if_not_exists=True)
    _ensure_events_table(db)
    _ensure_table(
        db, "specs",
        {"file": str, "content": str, "hash": str, "error": str, "updated_at": float},
        pk="file",
    )


@MIGRATIONS()
def m002_job_failure_class_ready(db: Database) -> None:
    """Failure classes and readiness for `status`; old rows read as "no failure, not ready"."""
    jobs = _table(db, "jobs")
    columns = jobs.columns_dict
    if "failure_class" not in columns:
        jobs.add_column("failure_class", str)
    if "ready" not in columns:
        jobs.add_column("ready", int, not_null_default=0)
    if "created_at" not in columns:
        jobs.add_column("created_at", float)


@MIGRATIONS()
def m003_job_stop_in_progress(db: Database) -> None:
    """Asynchronous stops: the deadline of a stop in progress and what follows it."""
    _add_missing_columns(_table(db, "jobs"), {"stop_deadline": float, "stop_then": str}, {})


@MIGRATIONS()
def m004_revision(db: Database) -> None:
    """The specs dir's revision on events and jobs, and the controller's own facts (last
    pass, revision, applied revision, daemon) in a one-row table; old rows read as "no
    revision known"."""
    _add_missing_columns(_table(db, "events"), {"revision": str}, {})
    _add_missing_columns(_table(db, "jobs"), {"revision": str}, {})
    _ensure_table(
        db, "controller",
        {"id": int, "last_pass_at": float, "last_pass_ok": int, "last_pass_duration_ms": int,
         "revision": str, "applied_revision": str, "dirty": int, "revision_error": str,
         "daemon_pid": int, "daemon_started_at": float},
        pk="id",
    )


@MIGRATIONS()
def m005_suspended(db: Database) -> None:
    """Services an operator suspended (`reconcile suspend`): sticky across restarts of the
    controller, like a job `down` left stopped."""
    _ensure_table(db, "suspended", {"service": str, "at": float}, pk="service")


@MIGRATIONS()
def m006_spec_env_files(db: Database) -> None:
    """The env files' values of each file's last good version (`SpecRecord.env_files`)."""
    _add_missing_columns(_table(db, "specs"), {"env_files": str}, {})


@MIGRATIONS()
def m007_pass_placement(db: Database) -> None:
    """The labels the last pass placed by and the services it left off this host."""
    _add_missing_columns(_table(db, "controller"), {"labels": str, "unplaced": str}, {})


@MIGRATIONS()
def m008_samples(db: Database) -> None:
    """Resource samples of running jobs for a bounded window, and the anomalies in force
    (DESIGN §8.4)."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS samples (at REAL NOT NULL, job_id TEXT NOT NULL,"
        " service TEXT NOT NULL, action TEXT NOT NULL, members INTEGER, rss_bytes INTEGER,"
        " cpu_seconds REAL, threads INTEGER, open_fds INTEGER, fd_limit INTEGER,"
        " oom_score INTEGER, state TEXT, wchan TEXT, dstate INTEGER, zombies INTEGER,"
        " max_fds INTEGER)")
    samples = _table(db, "samples")
    samples.create_index(["job_id", "at"], index_name="idx_samples_job_at", if_not_exists=True)
    samples.create_index(["service", "action", "at"], index_name="idx_samples_key_at",
                         if_not_exists=True)
    samples.create_index(["at"], index_name="idx_samples_at", if_not_exists=True)
    _ensure_table(db, "anomalies", {"id": str, "job_id": str, "rule": str, "service": str,
                                    "action": str, "since": float, "detail": str},
                  pk="id")  # id: "<job id>/<rule>"


@MIGRATIONS()
def m009_samples_by_time(db: Database) -> None:
    """Samples are found by time only. An index by job or by service puts each of a round's
    thousand rows on a different page of a tree that holds an hour of rows: at N=1000 with
    the window full, a round's insert cost 56 ms of CPU (1.1 % of a core at 5 s); by time
    alone every row lands at the end, 2.5 ms (docs/benchmarks.md, Findings). The readers
    scan a time range instead (`stats` of one service over an hour: ~0.1 s)."""
    db.execute("DROP INDEX IF EXISTS idx_samples_job_at")
    db.execute("DROP INDEX IF EXISTS idx_samples_key_at")


_SAMPLE_COLUMNS = Sample._fields
_INSERT_SAMPLE = (f"INSERT INTO samples ({', '.join(_SAMPLE_COLUMNS)}) "
                  f"VALUES ({', '.join('?' for _ in _SAMPLE_COLUMNS)})")


def sample_from_row(row: dict[str, Any]) -> Sample:
    """Tolerant like the other readers: a NULL count reads as 0, a NULL text as ""."""
    def number(name: str) -> int:
        value = row.get(name)
        return int(value) if isinstance(value, int | float) else 0

    def optional(name: str) -> int | None:
        value = row.get(name)
        return int(value) if isinstance(value, int | float) else None

    return Sample(at=float(row["at"]), job_id=str(row["job_id"]), service=str(row["service"]),
                  action=str(row["action"]), members=number("members"),
                  rss_bytes=number("rss_bytes"), cpu_seconds=float(row.get("cpu_seconds") or 0),
                  threads=number("threads"), open_fds=optional("open_fds"),
                  fd_limit=optional("fd_limit"), oom_score=optional("oom_score"),
                  state=str(row.get("state") or ""), wchan=str(row.get("wchan") or ""),
                  dstate=number("dstate"), zombies=number("zombies"),
                  max_fds=optional("max_fds"))


def _ensure_events_table(db: Database) -> None:
    """Raw SQL because sqlite-utils cannot say AUTOINCREMENT, and event ids are shown to users:
    they must never be reused, even after old events are pruned."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS events ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, job_id TEXT,"
        " service TEXT, action TEXT, kind TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '',"
        " detail TEXT NOT NULL DEFAULT '{}')"
    )
    _add_missing_columns(
        _table(db, "events"),
        {"at": float, "job_id": str, "service": str, "action": str, "kind": str, "reason": str,
         "detail": str},
        {"reason": "", "detail": "{}"},
    )
    events = _table(db, "events")
    events.create_index(["service"], index_name="idx_events_service", if_not_exists=True)
    events.create_index(["job_id"], index_name="idx_events_job_id", if_not_exists=True)


def _ensure_table(db: Database, name: str, columns: dict[str, type], *, pk: str,
                  not_null: Iterable[str] = (), defaults: dict[str, Any] | None = None) -> None:
    """Create the table, or bring an existing one of unknown age up to these columns."""
    table = _table(db, name)
    if not table.exists():
        table.create(columns, pk=pk, not_null=set(not_null), defaults=defaults or {},
                     if_not_exists=True)
        return
    _add_missing_columns(table, columns, defaults or {})


def _add_missing_columns(table: Table, columns: dict[str, type],
                         defaults: dict[str, Any]) -> None:
    existing = table.columns_dict
    for name, col_type in columns.items():
        if name not in existing:
            table.add_column(name, col_type, not_null_default=defaults.get(name))


def _table(db: Database, name: str) -> Table:
    return db.table(name)


def migrate(db: Database) -> None:
    """Apply pending migrations, all in one IMMEDIATE transaction.

    Taking the write lock before looking at what is pending serializes two processes that
    open a fresh database at once (daemon and CLI): the second waits, then sees nothing to do.
    """
    if not MIGRATIONS.pending(db):
        return  # the common case takes no write lock at all
    with _immediate(db):
        MIGRATIONS.apply(db)


@contextmanager
def _immediate(db: Database) -> Iterator[None]:
    """A transaction that takes the write lock up front (waiting up to busy_timeout).

    A deferred BEGIN that reads first and writes later fails at once with SQLITE_BUSY under
    WAL when another connection committed in between; IMMEDIATE waits instead.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.rollback()
        raise
    try:
        db.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise


# --- conversions: the only place that knows how records look as rows -----------------------

_JOB_FIELDS = tuple(f for f in fields(JobRecord) if f.init)  # the columns; not derived ones


def job_to_row(job: JobRecord) -> dict[str, Any]:
    row = {f.name: getattr(job, f.name) for f in _JOB_FIELDS}
    row["process"] = int(job.process)
    row["ready"] = int(job.ready)
    row["blocked_by"] = json.dumps([b.to_dict() for b in job.blocked_by])
    row["spec"] = json.dumps(job.spec.to_dict(), sort_keys=True)
    return row


# A pass that starts or marks ready a thousand jobs saves a thousand rows: one executemany of
# the rows' tuples costs a fifth of sqlite-utils' upsert_all, which inspects and converts every
# value of every row (docs/benchmarks.md, "--once, fourth round"). The migrations made every
# column; `job_to_row` stays the one place that knows how a record looks as a row.
_JOB_COLUMNS = tuple(f.name for f in _JOB_FIELDS)
_UPSERT_JOB = (f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) "
               f"VALUES ({', '.join('?' for _ in _JOB_COLUMNS)}) ON CONFLICT(id) DO UPDATE SET "
               + ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLUMNS if c != "id"))
_EVENT_COLUMNS = ("at", "job_id", "service", "action", "kind", "reason", "detail", "revision")
_INSERT_EVENT = (f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "
                 f"VALUES ({', '.join('?' for _ in _EVENT_COLUMNS)})")
_JOB_VALUES = itemgetter(*_JOB_COLUMNS)  # a row dict → its values, in the statement's order
_EVENT_VALUES = itemgetter(*_EVENT_COLUMNS)


def job_from_row(row: dict[str, Any]) -> JobRecord:
    """Tolerant on purpose: columns from a newer version are ignored, NULLs (from a database of
    unknown age) fall back to the field's default, bad JSON degrades to empty with a warning."""
    values: dict[str, Any] = {}
    for f in _JOB_FIELDS:
        if f.name not in row:
            continue
        value = row[f.name]
        if value is None:
            value = _null_default(f)
        values[f.name] = value
    values["process"] = bool(values.get("process", True))
    values["ready"] = bool(values.get("ready", False))
    values["blocked_by"] = blocked_by_from_json(values.get("blocked_by"), row.get("id"))
    values["spec"] = _job_spec_from_json(values.get("spec"), row.get("id"))
    return JobRecord(**values)


def _null_default(f: Any) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return ""  # required text fields (id, service, action, generation)


def _job_spec_from_json(raw: Any, job_id: Any) -> JobSpec:
    if isinstance(raw, JobSpec):
        return raw  # column absent: already the dataclass default
    return JobSpec.from_dict(dict_from_json(raw, "spec", job_id))


def event_to_row(event: Event) -> dict[str, Any]:
    return {"at": event.at, "job_id": event.job_id, "service": event.service,
            "action": event.action, "kind": event.kind, "reason": event.reason,
            "detail": json.dumps(event.detail, sort_keys=True), "revision": event.revision}


def event_from_row(row: dict[str, Any]) -> Event:
    return Event(at=row["at"], kind=row["kind"], reason=row.get("reason") or "",
                 job_id=row.get("job_id"), service=row.get("service"),
                 action=row.get("action"),
                 detail=dict_from_json(row.get("detail") or "{}", "detail", row.get("id")),
                 revision=row.get("revision"))


def spec_to_row(record: SpecRecord) -> dict[str, Any]:
    return {"file": record.file, "content": record.content, "hash": record.hash,
            "error": record.error, "updated_at": record.updated_at,
            "env_files": json.dumps([[path, [list(kv) for kv in values]]
                                     for path, values in record.env_files])}


def spec_from_row(row: dict[str, Any]) -> SpecRecord:
    return SpecRecord(file=row["file"], content=row.get("content"), hash=row.get("hash"),
                      error=row.get("error"), updated_at=row.get("updated_at"),
                      env_files=_env_files_from_json(row.get("env_files"), row["file"]))


def _env_files_from_json(raw: Any, file: str) -> EnvFiles:
    """Tolerant like the rest: absent (an older database) or unreadable is none."""
    if not raw:
        return ()
    try:
        return tuple((str(path), tuple((str(k), str(v)) for k, v in values))
                     for path, values in json.loads(raw))
    except (TypeError, ValueError):
        _warn("spec record %s: unreadable env_files %r, treated as none", file, raw)
        return ()


# --- files ------------------------------------------------------------------------------------


def _precreate(path: Path) -> None:
    """Create the db file 0600 ourselves, so it is never readable by others, not even for the
    moment before the chmod; O_NOFOLLOW refuses a planted symlink."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    os.close(fd)


def _restrict_modes(path: Path) -> None:
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            continue
        if candidate.is_symlink() or st.st_mode & 0o777 == PRIVATE_FILE:
            continue
        try:
            os.chmod(candidate, PRIVATE_FILE)
        except PermissionError:
            _warn("cannot chmod %s to 0600 (owned by another user?)", candidate)


def _connect(path: Path) -> Database:
    from sqlite_utils import Database

    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    db = Database(conn, execute_plugins=False)
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    _enable_wal(db)
    db.execute("PRAGMA synchronous=NORMAL")  # per connection; safe under WAL
    return db


def _enable_wal(db: Database) -> None:
    """Switch a fresh database to WAL (persistent in the file, so later opens only read).

    Switching needs an exclusive lock and SQLite may answer SQLITE_BUSY at once instead of
    waiting on busy_timeout, so two processes opening a new state dir together (daemon and
    CLI) retry here within the same time budget; seen as 9 failures in 1200 racing opens.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.enable_wal()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(LOCK_RETRY_SECONDS)  # back off before retrying the lock


# --- damage -----------------------------------------------------------------------------------


def check_integrity(db: Database) -> None:
    """`PRAGMA quick_check`: reads every page once (milliseconds for our sizes), so truncation
    or garbage in the middle is found at open, not by a pass halfway through its writes."""
    rows = [row[0] for row in db.execute("PRAGMA quick_check(5)").fetchall()]
    if rows != ["ok"]:
        raise sqlite3.DatabaseError("; ".join(str(r) for r in rows))


class _ReadOnlyDb:
    """A reader's `Database`: `query`, `execute` and `close` on the plain connection, so
    `status`, `events` and `info` never import sqlite-utils (tens of milliseconds, more than
    the command's own work). Anything else a caller asks of it (`table`, what `Migrations`
    reads) is the real sqlite-utils `Database` on the same connection, built then."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._full: Database | None = None

    def query(self, sql: str, params: Iterable[Any] | None = None
              ) -> Iterator[dict[str, Any]]:
        cursor = self.execute(sql, params)
        keys = [d[0] for d in cursor.description or ()]
        return (dict(zip(keys, row, strict=True)) for row in cursor)

    def execute(self, sql: str, params: Iterable[Any] | None = None) -> sqlite3.Cursor:
        return self.conn.execute(sql, tuple(params or ()))

    def close(self) -> None:
        self.conn.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database(), name)

    def __getitem__(self, name: str) -> Any:  # `db[table]`, as sqlite-utils itself asks
        return self._database()[name]

    def _database(self) -> Database:
        if self._full is None:
            from sqlite_utils import Database

            self._full = Database(self.conn, execute_plugins=False)
        return self._full


# --- the store ----------------------------------------------------------------------------------


class Store:
    """Jobs, events and spec records of one state dir. One thread per Store (see module doc)."""

    def __init__(self, db: Database, path: Path) -> None:
        self.db = db
        self.path = path
        self._closed = False
        # Non-removed jobs as last read or written by this connection, valid while no other
        # connection has committed (PRAGMA data_version): a daemon's passes then read no rows.
        self._jobs: JobIndex | None = None
        self._jobs_version: int | None = None
        self.read_only = False
        self.tables: frozenset[str] | None = None  # known only to a reader (None: all exist)

    @classmethod
    def open(cls, path: Path) -> Store:
        """The writer's connection: creates the file if needed, checks it is intact (a damaged
        database is refused before anything is written into it) and migrates it."""
        path = Path(path)
        make_private_dirs(path.parent)
        _precreate(path)
        db: Database | None = None
        try:
            db = _connect(path)
            check_integrity(db)
            migrate(db)
        except BaseException as err:
            if db is not None:
                db.close()
            if isinstance(err, sqlite3.DatabaseError) and is_damage(err):
                raise damaged(path, str(err)) from None
            raise
        _restrict_modes(path)
        return cls(db, path)

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """A reader that writes nothing: no directory, no file, no migration, no WAL switch,
        so `status`, `events` and `logs` work on a read-only state dir (or one they may not
        write). An absent database reads as empty.

        With a live write-ahead log (`-wal` and `-shm` present: a writer is at work, or
        crashed) it opens `mode=ro` and reads through the log. Without one every committed
        page is in the main file, and `immutable=1` reads it without creating `-shm`/`-wal`
        (a plain `mode=ro` reader would create both, owned by us, in someone else's dir).
        """
        path = Path(path)
        conn, tables = connect_readonly(path)  # (state/reader.py, which `status` uses alone)
        db = cast("Database", _ReadOnlyDb(conn))  # it is one, loaded on demand (see there)
        store = cls(db, path)
        store.read_only = True
        store.tables = tables
        return store
    def close(self) -> None:
        """Close (twice is fine); an unfinished `atomic()` block is rolled back, never
        half-committed."""
        if self._closed:
            return
        self._closed = True
        if not self.read_only:
            self.db.rollback()
        self.db.close()

    def _missing(self, table: str) -> bool:
        """A reader of a database no writer has set up yet (new, or from before the table
        existed) finds nothing, instead of failing on "no such table"."""
        return self.tables is not None and table not in self.tables

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction (a savepoint when nested): a pass's writes land all or none.

        The outermost level is BEGIN IMMEDIATE so it waits for another writer instead of
        failing halfway with SQLITE_BUSY.
        """
        try:
            if self.db.conn.in_transaction:
                with self.db.atomic():
                    yield
            else:
                with _immediate(self.db):
                    yield
        except BaseException:
            self._jobs = None  # rolled back: the cache may hold writes that never landed
            raise

    # jobs

    def jobs(self, *, include_removed: bool = False) -> list[JobRecord]:
        """By service and action, oldest first within an action."""
        if self._missing("jobs"):
            return []
        if include_removed:
            rows = self.db.query("SELECT * FROM jobs ORDER BY service, action, rowid")
            return [job_from_row(row) for row in rows]
        return self.job_index().in_order()

    def job_index(self) -> JobIndex:
        """The non-removed jobs, indexed (state/jobindex.py): a keyed pass takes what it
        plans from it. Current as of now; not to be kept across a write by another
        connection (read it again each pass)."""
        if self._missing("jobs"):
            return JobIndex()
        version = self._data_version()
        if self._jobs is None or version != self._jobs_version:
            rows = self.db.query("SELECT * FROM jobs WHERE phase != 'removed'"
                                 " ORDER BY service, action, rowid")
            self._jobs = JobIndex(job_from_row(row) for row in rows)
            self._jobs_version = version
        return self._jobs

    def _data_version(self) -> int:
        """Changes whenever another connection commits to the database (not on our own)."""
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def job(self, job_id: str) -> JobRecord | None:
        if self._missing("jobs"):
            return None
        rows = list(self.db.query("SELECT * FROM jobs WHERE id = ?", [job_id]))
        return job_from_row(rows[0]) if rows else None

    def upsert_jobs(self, jobs: Iterable[JobRecord]) -> None:
        """Persist as given: the caller owns every field, timestamps included."""
        jobs = list(jobs)
        if jobs:
            with self.atomic():
                self.db.conn.executemany(_UPSERT_JOB, map(_JOB_VALUES, map(job_to_row, jobs)))
                if self._jobs is not None:
                    for job in jobs:
                        self._jobs.put(job)

    # events

    def append_events(self, events: Iterable[Event]) -> None:
        rows = [_EVENT_VALUES(event_to_row(event)) for event in events]
        if rows:
            with self.atomic():
                self.db.conn.executemany(_INSERT_EVENT, rows)

    def events(self, *, service: str | None = None, action: str | None = None,
               kinds: Iterable[str] = (), since: float | None = None,
               limit: int | None = 100) -> list[tuple[int, Event]]:
        """The newest `limit` events (None: all) of a service (and action), of some kinds,
        since a time, or of all; returned oldest first like a log."""
        if self._missing("events"):
            return []
        where: list[str] = []
        params: list[str | float] = []
        for column, value in (("service", service), ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        kinds = list(kinds)
        if kinds:
            where.append(f"kind IN ({', '.join('?' for _ in kinds)})")
            params += kinds
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = (f"SELECT * FROM (SELECT * FROM events {clause} ORDER BY id DESC LIMIT ?)"
               " ORDER BY id")
        rows = self.db.query(sql, [*params, -1 if limit is None else max(limit, 0)])
        return [(row["id"], event_from_row(row)) for row in rows]

    def prune_events(self, keep: int) -> int:
        """Drop all but the newest `keep` events, so a crash loop cannot grow the db forever.
        Returns how many were deleted."""
        with self.atomic():
            cursor = self.db.execute(
                "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC"
                " LIMIT 1 OFFSET ?)", [max(keep, 0)])
        return cursor.rowcount

    # resource samples and anomalies (DESIGN §8.4)

    def append_samples(self, samples: Iterable[Sample]) -> None:
        """A round of a thousand jobs every 5 s: a Sample is the row's tuple, and one
        executemany takes them all (the dict-per-row path cost ten times as much)."""
        rows = samples if isinstance(samples, list | tuple) else list(samples)
        if rows:
            with self.atomic():
                self.db.conn.executemany(_INSERT_SAMPLE, rows)

    def samples(self, *, service: str | None = None, action: str | None = None,
                since: float | None = None) -> list[Sample]:
        """Samples oldest first, of one service (and action) or of all."""
        if self._missing("samples"):
            return []
        where: list[str] = ["1"]
        params: list[str | float] = []
        for column, value in (("service", service), ("action", action)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("at >= ?")
            params.append(since)
        rows = self.db.query(f"SELECT * FROM samples WHERE {' AND '.join(where)} ORDER BY at",
                             params)
        return [sample_from_row(row) for row in rows]

    def has_samples(self, service: str, action: str | None = None) -> bool:
        """Whether any sample of this service (and action) is stored."""
        if self._missing("samples"):
            return False
        where, params = "service = ?", [service]
        if action is not None:
            where, params = where + " AND action = ?", [service, action]
        return bool(list(self.db.query(f"SELECT 1 FROM samples WHERE {where} LIMIT 1",
                                       params)))

    def recent_samples(self, per_job: int = 2) -> dict[str, list[Sample]]:
        """The newest `per_job` samples (newest first) of every job sampled lately, for `top`.

        One walk back through the newest rounds by the time index (a round's samples share
        their time), `per_job + 1` rounds deep: a running job is in every round, so a job
        missing from all of them is not running, and an hour of rows is never read."""
        if self._missing("samples"):
            return {}
        found: dict[str, list[Sample]] = {}
        rounds: set[float] = set()
        for row in self.db.query("SELECT * FROM samples ORDER BY at DESC"):
            rounds.add(row["at"])
            if len(rounds) > per_job + 1:
                break
            kept = found.setdefault(row["job_id"], [])
            if len(kept) < per_job:
                kept.append(sample_from_row(row))
        return found

    def newest_sample_at(self) -> float | None:
        """The time of the newest stored sample: a new daemon's samples come after it."""
        if self._missing("samples"):
            return None
        rows = list(self.db.query("SELECT MAX(at) AS at FROM samples"))
        value = rows[0]["at"] if rows else None
        return float(value) if isinstance(value, int | float) else None

    def prune_samples(self, before: float) -> int:
        """Drop samples older than `before`: the window is bounded."""
        with self.atomic():
            cursor = self.db.execute("DELETE FROM samples WHERE at < ?", [before])
        return cursor.rowcount

    def anomalies(self) -> list[Anomaly]:
        return reader.anomalies(self.db.conn, self.tables)

    def set_anomalies(self, anomalies: Iterable[Anomaly]) -> None:
        """Replace the anomalies in force with these."""
        rows = [{"id": f"{a.job_id}/{a.rule}", **a._asdict()} for a in anomalies]
        with self.atomic():
            self.db.execute("DELETE FROM anomalies")
            if rows:
                _table(self.db, "anomalies").insert_all(rows)

    # suspended services

    def suspended(self) -> frozenset[str]:
        """The services `reconcile suspend` took out of the controller's hands."""
        return reader.suspended(self.db.conn, self.tables)

    def set_suspended(self, service: str, suspended: bool, at: float) -> bool:
        """Suspend or resume a service; False when it already was in that state."""
        with self.atomic():
            if suspended:
                cursor = self.db.execute(
                    "INSERT OR IGNORE INTO suspended (service, at) VALUES (?, ?)", [service, at])
            else:
                cursor = self.db.execute("DELETE FROM suspended WHERE service = ?", [service])
        return bool(cursor.rowcount)

    # spec records

    def spec_records(self) -> dict[str, SpecRecord]:
        if self._missing("specs"):
            return {}
        rows = self.db.query("SELECT * FROM specs ORDER BY file")
        return {row["file"]: spec_from_row(row) for row in rows}

    def save_spec_records(self, records: Iterable[SpecRecord]) -> None:
        rows = [spec_to_row(record) for record in records]
        if rows:
            with self.atomic():
                _table(self.db, "specs").upsert_all(rows, pk="file")

    def delete_spec_records(self, files: Iterable[str]) -> None:
        params = [(file,) for file in files]
        if params:
            with self.atomic():
                self.db.conn.executemany("DELETE FROM specs WHERE file = ?", params)

    # the controller's own facts (one row)

    def controller_facts(self) -> ControllerFacts:
        """As last recorded; all None on a database no pass has written yet."""
        return reader.controller_facts(self.db.conn, self.tables)

    def save_pass_facts(self, *, at: float, ok: bool, duration_ms: int,
                        revision: str | None, applied_revision: str | None, dirty: bool,
                        revision_error: str | None,
                        placement: tuple[Mapping[str, str], Mapping[str, str]] | None = None,
                        ) -> None:
        """`placement`: (labels, unplaced services) of a pass that got that far."""
        values: dict[str, Any] = {
            "last_pass_at": at, "last_pass_ok": int(ok), "last_pass_duration_ms": duration_ms,
            "revision": revision, "applied_revision": applied_revision, "dirty": int(dirty),
            "revision_error": revision_error}
        if placement is not None:
            values["labels"] = json.dumps(dict(placement[0]), sort_keys=True)
            values["unplaced"] = json.dumps(dict(placement[1]), sort_keys=True)
        self._save_facts(values)

    def save_daemon(self, pid: int, started_at: float) -> None:
        """The daemon that serves this state dir (it is up only while it holds daemon.lock)."""
        self._save_facts({"daemon_pid": pid, "daemon_started_at": started_at})

    def _save_facts(self, values: dict[str, Any]) -> None:
        with self.atomic():
            _table(self.db, "controller").upsert({"id": reader.CONTROLLER_ROW, **values}, pk="id")
