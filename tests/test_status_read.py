"""`reconcile status` reads its rows through state/reader.py (`JobView`: only the columns it
shows), not through the store's `JobRecord`s (issue 13). These hold the two to the same
output, on a current database and on one from an older version."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from reconciler.cli import render
from reconciler.state import reader
from reconciler.state.basic import Anomaly
from reconciler.state.records import JobRecord
from reconciler.state.store import Store
from tests.test_state_store import full_job, write_old_database

NOW = 5000.0


def views_of(db_path: Path) -> list[reader.JobView]:
    conn, tables = reader.connect_readonly(db_path)
    try:
        return reader.job_views(conn, tables)
    finally:
        conn.close()


def test_job_view_defaults_are_the_records_defaults() -> None:
    """A column a database of another age lacks reads as `JobRecord`'s default."""
    for f in fields(JobRecord):
        if f.name in reader.JobView.COLUMNS and f.name != "blocked_by":
            default = "" if f.default is MISSING else f.default  # required text: ""
            assert reader.JobView.COLUMNS[f.name] == default, f.name


def test_status_shows_the_same_jobs_from_views_as_from_records(state_dir: Path) -> None:
    db_path = state_dir / "state.db"
    jobs = [full_job("j-1"), full_job("j-2", service="api", phase="running", blocked_by=()),
            full_job("j-3", phase="removed"), JobRecord(id="j-4", service="db", action="m",
                                                        generation="g")]
    with Store.open(db_path) as store:
        store.upsert_jobs(jobs)
        store.set_anomalies([Anomaly("j-1", "web", "api", "fds", 1.0, "90%")])
        store.set_suspended("web", True, 2.0)
    with Store.open_readonly(db_path) as store:
        records, anomalies = store.jobs(), store.anomalies()
    views = views_of(db_path)
    assert [v.id for v in views] == [r.id for r in records] == ["j-2", "j-4", "j-1"]
    suspended = frozenset({"web"})
    for view, record in zip(views, records, strict=True):
        assert view.identity == record.identity and view.key == record.key
        assert render.job_json(view, NOW, suspended=True, anomalies=anomalies) == \
            render.job_json(record, NOW, suspended=True, anomalies=anomalies)
    assert views[2].blocked_by == records[2].blocked_by != ()  # decoded when asked for
    assert render.status_table(views, {}, suspended, anomalies) == render.status_table(
        records, {}, suspended, anomalies)  # no pid has a start time, so no age ticks
    with pytest.raises(AttributeError):
        views[0].phase = "stopped"  # type: ignore[misc]


def test_views_of_an_old_database_read_its_missing_columns_as_defaults(state_dir: Path) -> None:
    db_path = state_dir / "state.db"
    before = write_old_database(db_path)
    with Store.open_readonly(db_path) as store:
        (record,) = store.jobs()
    (view,) = views_of(db_path)
    assert render.job_json(view, NOW) == render.job_json(record, NOW)
    assert (view.ready, view.failure_class, view.revision) == (False, None, None)
    assert db_path.read_bytes() == before  # nothing migrated, nothing written


def test_status_info_reads_what_info_reads_but_the_labels(state_dir: Path) -> None:
    from reconciler.info import file_state, status_info
    from reconciler.state.records import SpecRecord

    db_path = state_dir / "state.db"
    with Store.open(db_path) as store:
        store.save_pass_facts(at=1.0, ok=False, duration_ms=3, revision="r", dirty=True,
                              applied_revision="a", revision_error=None,
                              placement=({"os": "linux"}, {"x": "why"}))
        store.save_spec_records([SpecRecord("a.yaml", None, None, "a.yaml:1:1: bad"),
                                 SpecRecord("b.yaml", "x: 1\n", "h", "b.yaml:2:1: bad"),
                                 SpecRecord("c.yaml", "x: 1\n", "h", None)])
    with Store.open_readonly(db_path) as store:
        facts, records = store.controller_facts(), store.spec_records()
    conn, tables = reader.connect_readonly(db_path)
    try:
        info = status_info(conn, tables, str(state_dir), "/specs")
    finally:
        conn.close()
    assert facts.labels and info.facts == facts._replace(labels=(), unplaced=())
    assert info.files == tuple(file_state(r) for r in records.values())
    assert [f.state for f in info.files] == ["refused", "last-good", "ok"]
    assert info.daemon_pid is None and info.specs_dir == "/specs"


def test_an_absent_database_reads_as_no_jobs(tmp_path: Path) -> None:
    assert views_of(tmp_path / "absent" / "state.db") == []
    assert not (tmp_path / "absent").exists()


def test_a_path_with_uri_characters_opens(tmp_path: Path) -> None:
    """The read-only URI escapes `%`, `?` and `#` itself (no urllib)."""
    state_dir = tmp_path / "a %41?b#c d"
    with Store.open(state_dir / "state.db") as store:
        store.upsert_jobs([full_job()])
    assert [v.id for v in views_of(state_dir / "state.db")] == ["j-1"]


def test_the_readers_sqlite_module_is_sqlite3s_own() -> None:
    """`status` reads through `_sqlite3` (no `datetime` import): what it uses of it must be
    what `sqlite3` exports, object for object, so the CLI's `except sqlite3.DatabaseError`
    and the store's connections are the same either way."""
    import sqlite3

    for name in ("connect", "Connection", "Cursor", "Error", "DatabaseError",
                 "OperationalError", "IntegrityError", "Row", "sqlite_version"):
        assert getattr(reader.sqlite3, name) is getattr(sqlite3, name), name


def test_the_status_table_layout() -> None:
    """Columns as wide as their widest cell, two spaces apart, the reason unpadded (the
    table is built with one `%` format per line: this pins the layout it must keep)."""
    from reconciler.host.usage import Usage

    jobs = [JobRecord(id="j-1", service="web", action="api", generation="g", phase="running",
                      pid=4242, restart_count=12, last_exit_code=-9, ready=True,
                      reason="ready"),
            JobRecord(id="j-2", service="database", action="m", generation="g",
                      phase="stopped", process=False, reason="stopped by `down`")]
    table = render.status_table(jobs, {"j-1": Usage(2.25, 3 * 2**20)}, frozenset({"database"}),
                                [Anomaly("j-1", "web", "api", "fds", 1.0, ""),
                                 Anomaly("j-1", "web", "api", "zombies", 1.0, "")])
    assert table.split("\n") == [
        "SERVICE   ACTION  PHASE    READY  PID   RESTARTS  UPTIME  CPU%  RSS     LAST EXIT  "
        "SUSPENDED  ANOMALIES    REASON",
        "web       api     running  yes    4242  12        -       2.2   3.0MiB  -9         "
        "-          fds,zombies  ready",
        "database  m       stopped  -      -     0         -       -     -       -          "
        "yes        -            stopped by `down`"]
