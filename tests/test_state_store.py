"""The SQLite store against real database files: round-trips, migrations, modes, transactions."""

from __future__ import annotations

import json
import sqlite3
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlite_utils import Database

from reconciler.state.records import BlockedBy, Event, JobRecord, JobSpec, Sample, SpecRecord
from reconciler.state.store import MIGRATIONS, Store, job_to_row


@pytest.fixture
def db_path(state_dir: Path) -> Path:
    return state_dir / "state.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    opened = Store.open(db_path)
    yield opened
    opened.close()


def full_job(job_id: str = "j-1", **changes: object) -> JobRecord:
    """A job with every field set to a non-default value."""
    job = JobRecord(
        id=job_id, service="web", action="api", generation="g1", phase="blocked",
        process=False, pid=4242, boot_id="b00t", starttime_ticks=987654, restart_count=3,
        last_exit_code=-9, last_exit_at=1000.5, started_at=990.25, next_start_at=1010.0,
        consecutive_failures=2, failure_class="bind-conflict", ready=True, health="unhealthy",
        reason="blocked: :8080 held by pid 4070",
        blocked_by=(BlockedBy(":8080", 4070, "python3 -m http.server"),
                    BlockedBy("/run/web/api.sock", None, "")),
        spec=JobSpec(argv=("python3", "-m", "http.server"), pidfile="/run/web/api.pid",
                     sockets=("/run/web/api.sock",), tcp_ports=(8080,), stop_signal="SIGINT",
                     stop_timeout=2.5, log_path="/var/log/api.log", health=True, keep_logs=3),
        created_at=900.0, updated_at=1001.0,
    )
    return replace(job, **changes)  # type: ignore[arg-type]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- records ------------------------------------------------------------------------------


def test_job_round_trips_every_field(store: Store) -> None:
    job = full_job()
    store.upsert_jobs([job])
    assert store.job("j-1") == job
    assert store.jobs() == [job]


def test_default_job_round_trips(store: Store) -> None:
    job = JobRecord(id="j-0", service="s", action="a", generation="g")
    store.upsert_jobs([job])
    assert store.job("j-0") == job


def test_upsert_updates_in_place(store: Store) -> None:
    store.upsert_jobs([full_job()])
    changed = full_job(phase="running", restart_count=4, blocked_by=(), ready=False,
                       spec=JobSpec(argv=("x",)), pid=None)
    store.upsert_jobs([changed])
    assert store.jobs(include_removed=True) == [changed]
    assert store.db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1


def test_missing_job_is_none(store: Store) -> None:
    assert store.job("nope") is None


def test_removed_jobs_hidden_unless_asked(store: Store) -> None:
    live, gone = full_job("a", phase="running"), full_job("b", phase="removed")
    store.upsert_jobs([live, gone])
    assert store.jobs() == [live]
    assert {j.id for j in store.jobs(include_removed=True)} == {"a", "b"}


def test_events_in_order_with_filter_and_limit(store: Store) -> None:
    events = [Event(at=float(i), kind="spawn", reason=f"r{i}", job_id=f"j{i}",
                    service="web" if i % 2 else "db", action="api", detail={"i": i})
              for i in range(10)]
    store.append_events(events[:4])
    store.append_events(events[4:])
    listed = store.events()
    assert [e for _, e in listed] == events
    ids = [i for i, _ in listed]
    assert ids == sorted(ids) and len(set(ids)) == 10
    assert [e.reason for _, e in store.events(service="web")] == ["r1", "r3", "r5", "r7", "r9"]
    assert [e.reason for _, e in store.events(service="web", limit=2)] == ["r7", "r9"]
    assert [e.reason for _, e in store.events(limit=3)] == ["r7", "r8", "r9"]
    assert store.events(limit=0) == []
    assert len(store.events(limit=None)) == 10


def test_event_without_job_round_trips(store: Store) -> None:
    event = Event(at=1.0, kind="spec-error", reason="specs/a.yaml:1:1: bad")
    store.append_events([event])
    assert store.events() == [(1, event)]


def test_prune_events_keeps_newest_and_never_reuses_ids(store: Store) -> None:
    store.append_events([Event(at=float(i), kind="exit", reason=str(i)) for i in range(5)])
    assert store.prune_events(2) == 3
    assert [e.reason for _, e in store.events()] == ["3", "4"]
    store.prune_events(0)
    store.append_events([Event(at=9.0, kind="exit", reason="new")])
    assert [i for i, _ in store.events()] == [6]


def test_spec_records_save_read_delete(store: Store) -> None:
    good = SpecRecord("a.yaml", "name: a\n", "h1", None, 5.0)
    bad = SpecRecord("b.yaml", None, None, "b.yaml:1:1: oops", 6.0)
    store.save_spec_records([good, bad])
    assert store.spec_records() == {"a.yaml": good, "b.yaml": bad}
    fixed = SpecRecord("b.yaml", "name: b\n", "h2", None, 7.0)
    store.save_spec_records([fixed])
    assert store.spec_records()["b.yaml"] == fixed
    store.delete_spec_records(["a.yaml", "never-there.yaml"])
    assert store.spec_records() == {"b.yaml": fixed}


def test_empty_batches_are_no_ops(store: Store) -> None:
    store.upsert_jobs([])
    store.append_events([])
    store.save_spec_records([])
    store.delete_spec_records([])
    assert store.jobs() == [] and store.events() == [] and store.spec_records() == {}


def test_data_survives_reopen(db_path: Path) -> None:
    with Store.open(db_path) as first:
        first.upsert_jobs([full_job()])
    with Store.open(db_path) as second:
        assert second.jobs() == [full_job()]


# --- transactions ---------------------------------------------------------------------------


def test_atomic_rolls_back_on_exception(store: Store) -> None:
    store.upsert_jobs([full_job("kept")])
    assert store.jobs() == [full_job("kept")]  # read once, so later reads may come from memory
    with pytest.raises(RuntimeError), store.atomic():
        store.upsert_jobs([full_job("lost"), full_job("kept", phase="running")])
        store.append_events([Event(at=1.0, kind="spawn", reason="x")])
        store.save_spec_records([SpecRecord("a.yaml", "x", "h", None)])
        raise RuntimeError("boom")
    assert store.jobs() == [full_job("kept")]
    assert store.events() == [] and store.spec_records() == {}


def test_a_rolled_back_savepoint_leaves_no_trace_in_jobs(store: Store) -> None:
    store.upsert_jobs([full_job("kept")])
    assert store.jobs() == [full_job("kept")]  # read once, so later reads may come from memory
    with store.atomic():
        with pytest.raises(RuntimeError), store.atomic():  # a savepoint inside the transaction
            store.upsert_jobs([full_job("lost")])
            raise RuntimeError("boom")
        store.upsert_jobs([full_job("kept", phase="running")])
    assert store.jobs() == [full_job("kept", phase="running")]


def test_atomic_commits_and_is_visible_to_other_connections(store: Store, db_path: Path) -> None:
    with store.atomic():
        store.upsert_jobs([full_job()])
        with store.atomic():  # nested: a savepoint inside the same transaction
            store.append_events([Event(at=1.0, kind="spawn", reason="x")])
    with Store.open(db_path) as reader:
        assert reader.jobs() == [full_job()]
        assert len(reader.events()) == 1


def test_jobs_read_after_another_connection_wrote_see_its_writes(store: Store,
                                                                   db_path: Path) -> None:
    """jobs() serves repeated reads from memory; a commit by any other connection (the CLI's
    `down`, a `reconcile --once`) must still be seen by the very next read."""
    store.upsert_jobs([full_job("mine")])
    assert store.jobs() == [full_job("mine")]
    with Store.open(db_path) as other:
        other.upsert_jobs([full_job("theirs"), full_job("mine", phase="stopped")])
    assert store.jobs() == [full_job("mine", phase="stopped"), full_job("theirs")]
    with Store.open(db_path) as other:
        other.upsert_jobs([full_job("theirs", phase="removed")])
    assert store.jobs() == [full_job("mine", phase="stopped")]


def test_jobs_after_own_writes_match_a_fresh_read(store: Store, db_path: Path) -> None:
    store.jobs()  # fill the in-memory copy first
    store.upsert_jobs([full_job("b"), full_job("a"), replace(full_job("c"), action="aaa")])
    store.upsert_jobs([full_job("a", phase="removed"), full_job("b", restart_count=9)])
    with Store.open(db_path) as fresh:
        assert store.jobs() == fresh.jobs()
        assert store.jobs(include_removed=True) == fresh.jobs(include_removed=True)
    assert [j.id for j in store.jobs()] == ["c", "b"]


def test_uncommitted_writes_invisible_to_readers(store: Store, db_path: Path) -> None:
    with Store.open(db_path) as reader, store.atomic():
        store.upsert_jobs([full_job()])
        assert reader.jobs() == []


def test_store_refuses_other_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def use() -> None:
        try:
            store.jobs()
        except BaseException as err:
            errors.append(err)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.ProgrammingError)


# --- files ----------------------------------------------------------------------------------


def test_modes_and_wal(store: Store, db_path: Path) -> None:
    store.upsert_jobs([full_job()])  # makes sure -wal exists
    assert mode(db_path.parent) == 0o700
    assert mode(db_path) == 0o600
    for suffix in ("-wal", "-shm"):
        side = Path(f"{db_path}{suffix}")
        assert side.exists() and mode(side) == 0o600
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000


def test_existing_loose_modes_are_tightened(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.touch(mode=0o644)
    db_path.chmod(0o644)
    with Store.open(db_path):
        assert mode(db_path) == 0o600


def test_symlinked_db_is_refused(db_path: Path, tmp_path: Path) -> None:
    db_path.parent.mkdir()
    target = tmp_path / "elsewhere.db"
    db_path.symlink_to(target)
    with pytest.raises(OSError):
        Store.open(db_path)
    assert not target.exists()


# --- migrations and compatibility -------------------------------------------------------------

OLD_JOB_ROW = {
    "id": "old-1", "service": "web", "action": "api", "generation": "g0", "phase": "running",
    "process": 1, "pid": 77, "boot_id": "b", "starttime_ticks": 123, "restart_count": 5,
    "last_exit_code": 1, "last_exit_at": 10.0, "started_at": 11.0, "next_start_at": None,
    "consecutive_failures": 1, "health": "ok", "reason": "up",
    "blocked_by": json.dumps([{"pid": 9, "cmd": "nc -l", "resource": ":81"}]),
    # written before stop_signal, log_path, health and keep_logs were kept; an unknown key
    "spec": json.dumps({"argv": ["x"], "pidfile": "/run/x.pid", "stop_timeout": 3,
                        "sockets": [], "from_the_future": 1}), "updated_at": 12.0,
}


def write_old_database(db_path: Path) -> bytes:
    """A database as the version before migration m002 left it, holding OLD_JOB_ROW; its
    bytes, so a reader can show it wrote nothing."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    old = Database(db_path)
    MIGRATIONS.apply(old, stop_before="m002_job_failure_class_ready")
    old.table("jobs").insert(OLD_JOB_ROW)
    old.close()
    return db_path.read_bytes()


def test_old_database_opens_without_loss(db_path: Path) -> None:
    db_path.parent.mkdir()
    old = Database(db_path)
    MIGRATIONS.apply(old, stop_before="m002_job_failure_class_ready")
    assert "ready" not in old.table("jobs").columns_dict
    old.table("jobs").insert(OLD_JOB_ROW)
    old.table("events").insert({"at": 1.0, "job_id": "old-1", "service": "web",
                                "action": "api", "kind": "spawn", "reason": "first",
                                "detail": '{"pid": 77}'})
    old.table("specs").insert({"file": "web.yaml", "content": "name: web\n", "hash": "h",
                               "error": None, "updated_at": 3.0})
    old.close()

    with Store.open(db_path) as store:
        assert [m.name for m in MIGRATIONS.pending(store.db)] == []
        job = store.job("old-1")
        assert job is not None
        assert job == JobRecord(
            id="old-1", service="web", action="api", generation="g0", phase="running",
            process=True, pid=77, boot_id="b", starttime_ticks=123, restart_count=5,
            last_exit_code=1, last_exit_at=10.0, started_at=11.0, next_start_at=None,
            consecutive_failures=1, health="ok", reason="up",
            blocked_by=(BlockedBy(":81", 9, "nc -l"),),
            spec=JobSpec(argv=("x",), pidfile="/run/x.pid", stop_timeout=3.0),
            updated_at=12.0,
            failure_class=None, ready=False, created_at=None,  # the new columns' defaults
        )
        assert store.events() == [(1, Event(at=1.0, kind="spawn", reason="first",
                                             job_id="old-1", service="web", action="api",
                                             detail={"pid": 77}))]
        assert store.spec_records() == {"web.yaml": SpecRecord("web.yaml", "name: web\n",
                                                               "h", None, 3.0)}
        store.upsert_jobs([replace(job, ready=True, failure_class="unhealthy")])
        assert store.job("old-1") == replace(job, ready=True, failure_class="unhealthy")


def test_database_without_migration_table_is_brought_up_to_date(db_path: Path) -> None:
    """An "unknown old version": current tables exist, but no record of any migration."""
    with Store.open(db_path) as store:
        store.upsert_jobs([full_job()])
    raw = Database(db_path)
    raw.table("_sqlite_migrations").drop()
    raw.close()
    with Store.open(db_path) as store:
        assert store.jobs() == [full_job()]
        assert not MIGRATIONS.pending(store.db)


def test_hand_made_partial_tables_gain_missing_columns(db_path: Path) -> None:
    db_path.parent.mkdir()
    raw = Database(db_path)
    raw.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, service TEXT, action TEXT,"
                " generation TEXT, phase TEXT)")
    raw.execute("INSERT INTO jobs VALUES ('p', 'web', 'api', 'g', 'stopped')")
    raw.close()
    with Store.open(db_path) as store:
        assert store.jobs() == [JobRecord(id="p", service="web", action="api",
                                          generation="g", phase="stopped")]


def test_row_from_newer_version_with_unknown_column_still_reads(store: Store,
                                                                db_path: Path) -> None:
    store.upsert_jobs([full_job()])
    newer = Database(db_path)
    newer.table("jobs").add_column("cgroup", str)
    newer.table("events").add_column("severity", str)
    newer.execute("UPDATE jobs SET cgroup = '/sys/fs/cgroup/x'")
    newer.table("events").insert({"at": 1.0, "kind": "spawn", "reason": "r",
                                  "severity": "info"})
    newer.close()
    with Store.open(db_path) as reopened:
        assert reopened.jobs() == [full_job()]
        assert [e.reason for _, e in reopened.events()] == ["r"]
        reopened.upsert_jobs([full_job(phase="running")])  # writing keeps their column
        value = reopened.db.execute("SELECT cgroup FROM jobs").fetchone()[0]
        assert value == "/sys/fs/cgroup/x"


def test_unreadable_json_degrades_to_empty(store: Store) -> None:
    store.upsert_jobs([full_job()])
    store.db.execute("UPDATE jobs SET blocked_by = 'not json', spec = '[1]'")
    job = store.job("j-1")
    assert job is not None and job.blocked_by == () and job.spec == JobSpec()


def test_job_spec_of_wrong_types_falls_back_per_field(store: Store) -> None:
    """A hand-edited or damaged spec column costs the bad fields, not the job."""
    store.upsert_jobs([full_job()])
    store.db.execute("""UPDATE jobs SET spec = '{"argv": "not a list", "stop_timeout": "9",
                     "stop_signal": 15, "tcp_ports": [80, "x", true], "pidfile": "/p"}'""")
    job = store.job("j-1")
    assert job is not None
    assert job.spec == JobSpec(pidfile="/p", tcp_ports=(80,))


def test_row_conversion_is_json_text() -> None:
    row = job_to_row(full_job())
    assert row["process"] == 0 and row["ready"] == 1
    assert json.loads(row["blocked_by"])[0] == {"pid": 4070, "cmd": "python3 -m http.server",
                                                "resource": ":8080"}
    assert json.loads(row["spec"])["argv"] == ["python3", "-m", "http.server"]
    assert JobSpec.from_dict(json.loads(row["spec"])) == full_job().spec


def test_two_stores_migrate_a_fresh_database_concurrently(db_path: Path) -> None:
    """Daemon and CLI opening a brand-new state dir at once must both succeed."""
    results: list[object] = []

    def open_and_close() -> None:
        try:
            Store.open(db_path).close()
            results.append("ok")
        except BaseException as err:
            results.append(err)

    threads = [threading.Thread(target=open_and_close) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["ok"] * 4


# --- the read-only reader (status, events, logs, diff) --------------------------------------


def test_a_reader_of_a_missing_database_finds_nothing_and_creates_nothing(db_path: Path) -> None:
    with Store.open_readonly(db_path) as reader:
        assert reader.jobs() == [] and reader.events() == [] and reader.spec_records() == {}
        assert reader.job("j-1") is None
    assert not db_path.parent.exists()  # not the database, not even its directory


def test_a_reader_reads_an_old_database_without_migrating_it(db_path: Path) -> None:
    before = write_old_database(db_path)
    with Store.open_readonly(db_path) as reader:
        job = reader.job("old-1")
        assert job is not None and (job.restart_count, job.ready, job.failure_class) == (
            5, False, None)  # the columns it lacks read as their defaults
        assert [j.id for j in reader.jobs()] == ["old-1"]
        assert MIGRATIONS.pending(reader.db)  # still the old schema: nothing was migrated
    assert db_path.read_bytes() == before
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["state.db"]  # no -wal/-shm


def test_a_reader_cannot_write_even_as_root(store: Store, db_path: Path) -> None:
    """`mode=ro` is enforced by SQLite itself, not by file permissions root would ignore."""
    store.upsert_jobs([full_job()])
    with Store.open_readonly(db_path) as reader:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.upsert_jobs([full_job("j-2")])
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("DELETE FROM jobs")
        assert reader.jobs() == [full_job()]


def _sample(at: float, job_id: str, rss: int = 1) -> Sample:
    return Sample(at=at, job_id=job_id, service=job_id, action="main", members=1,
                  rss_bytes=rss, cpu_seconds=at, threads=1, open_fds=3, fd_limit=1024,
                  oom_score=0, state="S", wchan="")


def test_samples_of_an_m008_database_keep_their_rows_and_lose_the_scattered_indexes(
        db_path: Path) -> None:
    """m009: an index by job or service makes every round's insert touch a page per job."""
    db_path.parent.mkdir()
    old = Database(db_path)
    MIGRATIONS.apply(old, stop_before="m009_samples_by_time")
    assert {"idx_samples_job_at", "idx_samples_key_at"} <= {
        i.name for i in old.table("samples").indexes}
    old.close()
    with Store.open(db_path) as store:
        store.append_samples([_sample(1.0, "a"), _sample(1.0, "b")])
    with Store.open(db_path) as store:
        assert [i.name for i in store.db.table("samples").indexes] == ["idx_samples_at"]
        assert [s.job_id for s in store.samples()] == ["a", "b"]


def test_recent_samples_are_the_newest_per_job_of_the_newest_rounds(store: Store) -> None:
    store.append_samples([_sample(1.0, "gone")])  # not in the newest three rounds
    for at in (2.0, 3.0, 4.0, 5.0):
        store.append_samples([_sample(at, "a", rss=int(at))]
                             + ([_sample(at, "b", rss=int(at))] if at >= 5.0 else []))
    recent = store.recent_samples(per_job=2)
    assert {job: [s.at for s in kept] for job, kept in recent.items()} == {
        "a": [5.0, 4.0], "b": [5.0]}


def test_records_that_became_named_tuples_keep_their_api() -> None:
    """BlockedBy, JobSpec, SpecRecord, Enrollment and ControllerFacts are named tuples (a
    tenth of a frozen dataclass's cost to build at import, issue 13): still immutable,
    hashable, built by keyword with the same defaults, with the dataclass's repr, and
    JobSpec's JSON keeps its keys in field order."""
    import pytest

    from reconciler.state.records import BlockedBy, ControllerFacts, JobSpec, SpecRecord

    blocked = BlockedBy(resource=":8080", pid=None, cmd="nginx")
    assert repr(blocked) == "BlockedBy(resource=':8080', pid=None, cmd='nginx')"
    with pytest.raises(AttributeError):
        blocked.pid = 1  # type: ignore[misc]  # the point: it is read-only
    spec = JobSpec(argv=("sleep", "1"), tcp_ports=(80,))
    assert list(spec.to_dict()) == ["argv", "pidfile", "sockets", "tcp_ports", "stop_signal",
                                    "stop_timeout", "log_path", "health", "keep_logs",
                                    "max_rss"]
    assert JobSpec.from_dict(spec.to_dict()) == spec and hash(spec) == hash(JobSpec.from_dict(
        spec.to_dict()))
    assert ControllerFacts().labels == () and SpecRecord("a.yaml", None, None, "x").env_files == ()
