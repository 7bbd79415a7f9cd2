"""No spec path reaches into the state dir outside run/: `pidfile: ../state.db` passed
validate and overwrote the database (all jobs, events and last good specs lost)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.controller import Reconciler
from reconciler.settings import Settings
from reconciler.spec.load import SpecErrors, load_specs, parse_text
from tests.security.common import write_spec

SLEEPER = f"[{sys.executable}, -c, 'import time; time.sleep(3600)']"


def spec(field: str) -> str:
    return f"name: web\nactions:\n  - name: main\n    process: true\n    cmd: {SLEEPER}\n{field}"


@pytest.mark.parametrize("field", ["    pidfile: ../state.db\n", "    pidfile: x/../../lock\n",
                                   "    sockets: [../logs/web/main.log]\n",
                                   "    health: {unix: ../state.db}\n"])
def test_relative_paths_may_not_leave_run(field: str) -> None:
    with pytest.raises(SpecErrors) as caught:
        parse_text(spec(field), "f.yaml")
    [error] = caught.value.errors
    assert error.line == 6 and "may not contain '..'" in error.message


@pytest.mark.parametrize("path", ["state.db", "lock", "logs/web/main.log", "run/../state.db",
                                  "run", "run/1234.enroll.json", "."])
def test_absolute_paths_into_the_state_dir_outside_run_are_errors(tmp_path: Path,
                                                                  path: str) -> None:
    state = tmp_path / "state"
    with pytest.raises(SpecErrors) as caught:
        parse_text(spec(f"    pidfile: {state}/{path}\n"), "f.yaml", state_dir=state)
    [error] = caught.value.errors
    assert (error.line, error.column) == (6, 14)
    assert "state dir" in error.message or "enrollments" in error.message


def test_paths_under_run_or_elsewhere_are_fine(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for field in (f"    pidfile: {state}/run/web.pid\n", "    pidfile: web/main.pid\n",
                  f"    sockets: [{tmp_path}/web.sock]\n", f"    pidfile: {state}x/a.pid\n"):
        assert parse_text(spec(field), "f.yaml", state_dir=state)


def test_a_symlink_into_the_state_dir_is_seen_through(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "alias").symlink_to(state)
    with pytest.raises(SpecErrors):
        parse_text(spec(f"    pidfile: {tmp_path}/alias/state.db\n"), "f.yaml", state_dir=state)


def test_pidfile_to_the_database_is_rejected_and_the_database_survives(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_spec(settings.specs_dir, "keep.yaml",
               f"name: keep\nactions:\n  - {{name: main, process: true, cmd: {SLEEPER}}}\n")
    with Reconciler(settings) as rec:
        assert rec.converge(wait=20).converged
    db = settings.state_dir / "state.db"
    write_spec(settings.specs_dir, "web.yaml", spec(f"    pidfile: {db}\n"))
    with Reconciler(settings) as rec:
        result = rec.reconcile()
    [error] = result.loaded.errors
    assert "state dir" in error.message and error.line == 6
    assert "web" not in result.loaded.services
    with sqlite3.connect(db) as conn:  # still a database, still knows its job
        assert conn.execute("select count(*) from jobs where service = 'keep'").fetchone()[0]
    capsys.readouterr()
    assert cli.main(["validate", str(settings.specs_dir),
                     "--state-dir", str(settings.state_dir)]) == 2
    assert "web.yaml:6:14: actions[0].pidfile: points into the state dir" in \
        capsys.readouterr().err
    assert load_specs(settings.specs_dir).services.keys() == {"keep", "web"}  # no state dir
