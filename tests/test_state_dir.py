"""The state dir as a whole, against real dirs, real SQLite files and real processes:
privacy, damage and `repair`, read-only commands, the specs-dir binding, one daemon."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from reconciler.controller import Reconciler
from reconciler.settings import Settings
from reconciler.state.lock import DaemonLock
from reconciler.state.store import MIGRATIONS, Store
from tests.helpers import wait_for
from tests.test_reconcile import alive, run_cli, status, write_sleeper

PY = sys.executable


def cli_err(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = run_cli(settings, *args)
    return code, capsys.readouterr().err


def converge_sleeper(settings: Settings, name: str = "a") -> int:
    """Run `<name>.main` through real passes; returns its pid. The Reconciler is closed after,
    so its database is checkpointed and nothing holds it open."""
    write_sleeper(settings.specs_dir, name)
    with Reconciler(settings) as rec:
        assert rec.converge(wait=20).converged
        return next(j.pid for j in rec.store.jobs() if j.service == name and j.pid)


def damage(db: Path) -> None:
    db.write_bytes(b"this is not an SQLite database\x00" * 200)


def assert_one_clear_line(err: str, *needles: str) -> None:
    assert err.startswith("reconcile: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err
    for needle in needles:
        assert needle in err, err


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every path under root with its mode and (for files) a hash of its bytes."""
    found = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path.relative_to(root))] = (st.st_mode, digest)
    return found


# --- item 1: privacy --------------------------------------------------------------------------


def test_an_existing_shared_state_dir_is_refused_and_never_chmodded(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    settings.state_dir.mkdir()
    os.chmod(settings.state_dir, 0o1777)  # a sticky /tmp-like dir
    write_sleeper(settings.specs_dir, "a")
    code, err = cli_err(settings, capsys, "--once", "--wait", "5s")
    assert code == 2
    assert_one_clear_line(err, f"chmod 700 {settings.state_dir}", "--state-dir")
    assert settings.state_dir.stat().st_mode & 0o7777 == 0o1777
    assert list(settings.state_dir.iterdir()) == []  # nothing was created in it either
    with pytest.raises(Exception, match="not private"):
        Reconciler(settings)


def test_a_symlinked_state_dir_is_judged_by_its_target_and_the_target_is_left_alone(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    settings.state_dir.symlink_to(shared)
    code, err = cli_err(settings, capsys, "down")
    assert code == 2 and "not private (mode 0755)" in err
    assert shared.stat().st_mode & 0o777 == 0o755
    os.chmod(shared, 0o700)  # the fix the message gives
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0


def test_a_state_dir_owned_by_another_user_is_refused(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    settings.state_dir.mkdir(mode=0o700)
    os.chown(settings.state_dir, 4321, 4321)
    code, err = cli_err(settings, capsys, "--once", "--wait", "5s")
    assert code == 2 and "owned by uid 4321" in err


def test_missing_dirs_are_created_private_and_an_existing_private_one_keeps_its_mode(
        settings: Settings) -> None:
    parent = settings.state_dir.parent / "new" / "deeper"
    created = Settings(settings.specs_dir, parent / "state")
    with Reconciler(created):
        pass
    for path in (parent, parent / "state", parent / "state" / "run"):
        assert path.stat().st_mode & 0o777 == 0o700, path
    settings.state_dir.mkdir(mode=0o500)
    os.chmod(settings.state_dir, 0o700)
    with Reconciler(settings):
        pass
    assert settings.state_dir.stat().st_mode & 0o7777 == 0o700


def test_read_only_commands_read_a_state_dir_that_is_not_private(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """Reading cannot make a loose state dir worse, and an operator debugging it needs
    `status`: only commands that write refuse it."""
    pid = converge_sleeper(settings)
    os.chmod(settings.state_dir, 0o755)
    assert [r["pid"] for r in status(settings, capsys)] == [pid]
    assert settings.state_dir.stat().st_mode & 0o777 == 0o755


# --- item 2: damage is loud ------------------------------------------------------------------

WRITERS = [("--once", "--wait", "5s"), ("diff",), ("down",), ("down", "a"), ("restart", "a")]
READERS = [("status",), ("status", "-o", "json"), ("events",), ("logs", "a.main")]


@pytest.mark.parametrize("command", [*WRITERS, *READERS], ids=" ".join)
def test_a_corrupt_database_makes_every_command_say_so_with_the_fix(
        settings: Settings, capsys: pytest.CaptureFixture[str],
        command: tuple[str, ...]) -> None:
    pid = converge_sleeper(settings)
    damage(settings.db_path)
    code, err = cli_err(settings, capsys, *command)
    assert code == 2
    assert_one_clear_line(err, "damaged", "reconcile repair", str(settings.state_dir))
    assert alive(pid)  # nothing was stopped


def test_a_truncated_database_is_found_before_a_pass_writes_into_it(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    with Reconciler(settings) as rec:
        assert rec.converge(wait=20).converged
        with rec.store.atomic():  # enough rows that the table spans many pages
            rec.store.db.conn.executemany("INSERT INTO events (at, kind, reason) VALUES (?, ?, ?)",
                                     [(1.0, "filler", "x" * 400)] * 500)
    size = settings.db_path.stat().st_size
    os.truncate(settings.db_path, size // 2)
    code, err = cli_err(settings, capsys, "--once", "--wait", "5s")
    assert code == 2
    assert_one_clear_line(err, "damaged", "reconcile repair")
    assert settings.db_path.stat().st_size == size // 2  # nothing written into it


def test_an_empty_database_beside_enrollments_is_damage_not_a_fresh_start(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    write_sleeper(settings.specs_dir, "b")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert run_cli(settings, "down", "b") == 0
    before = {r["service"]: r for r in status(settings, capsys)}
    assert before["b"]["phase"] == "stopped" and alive(before["a"]["pid"])
    os.truncate(settings.db_path, 0)
    for command in (("--once", "--wait", "5s"), ("status",), ("diff",)):
        code, err = cli_err(settings, capsys, *command)
        assert code == 2, command
        assert_one_clear_line(err, "is empty", "enrollment", "reconcile repair")
    assert settings.db_path.stat().st_size == 0
    assert not (settings.logs_dir / "b" / "main.log.1").exists()  # b never came back
    assert alive(before["a"]["pid"])


def test_an_empty_or_missing_database_without_enrollments_is_a_fresh_start(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    settings.state_dir.mkdir(mode=0o700)
    settings.db_path.touch()
    assert run_cli(settings, "status") == 0
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert [r["phase"] for r in status(settings, capsys)] == ["running"]


# --- item 3: repair ---------------------------------------------------------------------------


def test_repair_rebuilds_the_jobs_and_the_next_pass_adopts_the_same_process(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    with Reconciler(settings) as rec:
        assert rec.converge(wait=20).converged
        [before] = rec.store.jobs()
    damage(settings.db_path)
    capsys.readouterr()
    assert run_cli(settings, "repair") == 0
    out = capsys.readouterr().out
    assert f"rebuilt job a.main pid {before.pid} ({before.id})" in out
    [aside] = settings.state_dir.glob("state.db.damaged-*")
    assert aside.read_bytes().startswith(b"this is not an SQLite database")
    with Reconciler(settings) as rec:
        result = rec.converge(wait=20)
    assert result.converged
    assert not [s for s in result.plan.steps if s.verb in ("spawn", "kill", "stop")]
    [after] = [j for j in result.jobs]
    assert (after.id, after.pid, after.phase) == (before.id, before.pid, "running")
    assert alive(before.pid)
    with Store.open(settings.db_path) as store:
        assert [e.kind for _, e in store.events()][:1] == ["repaired"]


def test_repair_of_an_emptied_database_moves_it_aside_too(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    pid = converge_sleeper(settings)
    os.truncate(settings.db_path, 0)
    assert run_cli(settings, "repair") == 0
    assert len(list(settings.state_dir.glob("state.db.damaged-*"))) == 1
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert [r["pid"] for r in status(settings, capsys)] == [pid]


def test_repair_of_an_intact_database_changes_nothing(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    converge_sleeper(settings)
    before = settings.db_path.read_bytes()
    capsys.readouterr()
    assert run_cli(settings, "repair") == 0
    assert "intact" in capsys.readouterr().out
    assert settings.db_path.read_bytes() == before
    assert not list(settings.state_dir.glob("state.db.damaged-*"))


def test_repair_refuses_while_a_daemon_holds_the_state_dir(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    converge_sleeper(settings)
    damage(settings.db_path)
    with DaemonLock(settings.daemon_lock_path):
        code, err = cli_err(settings, capsys, "repair")
    assert code == 2
    assert_one_clear_line(err, f"another reconciler (pid {os.getpid()})", "stop it")
    assert not list(settings.state_dir.glob("state.db.damaged-*"))


# --- item 4: read-only commands ---------------------------------------------------------------


@contextlib.contextmanager
def immutable(paths: list[Path]) -> Iterator[None]:
    """`chattr +i`: refused writes even for root (a chmod 0500 would not stop root)."""
    done: list[Path] = []
    try:
        for path in paths:
            if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
                pytest.skip("chattr +i is not available here")
            done.append(path)
        yield
    finally:
        for path in reversed(done):
            subprocess.run(["chattr", "-i", str(path)], check=True)


def test_status_events_and_logs_work_on_a_read_only_state_dir(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    pid = converge_sleeper(settings)
    log = settings.logs_dir / "a" / "main.log"
    log.write_text("hello\n")
    root = settings.state_dir
    everything = [root, *sorted(root.rglob("*"))]
    before = snapshot(root)
    with immutable([p for p in everything if not p.is_symlink()]):
        with pytest.raises(PermissionError):
            (root / "probe").touch()  # the condition holds, even for root
        assert [r["pid"] for r in status(settings, capsys)] == [pid]
        assert run_cli(settings, "events", "-o", "json") == 0
        assert any(e["kind"] == "spawn" for e in json.loads(capsys.readouterr().out))
        assert run_cli(settings, "logs", "a.main") == 0
        assert "hello" in capsys.readouterr().out
    assert snapshot(root) == before


def test_read_only_commands_write_nothing_and_see_a_live_writer(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    with Reconciler(settings) as rec:
        assert rec.converge(wait=20).converged  # its connection keeps -wal and -shm live
        assert Path(f"{settings.db_path}-wal").exists()
        main_bytes = settings.db_path.read_bytes()
        names = sorted(p.name for p in settings.state_dir.iterdir())
        rows = status(settings, capsys)
        assert [r["phase"] for r in rows] == ["running"]
        assert sorted(p.name for p in settings.state_dir.iterdir()) == names
        assert settings.db_path.read_bytes() == main_bytes
    closed = snapshot(settings.state_dir)
    for command in (("status",), ("events",), ("logs", "a.main")):
        assert run_cli(settings, *command) == 0
    assert snapshot(settings.state_dir) == closed  # no -shm/-wal created, no migration


def test_an_old_schema_database_reads_without_migration_and_then_migrates_without_loss(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    settings.state_dir.mkdir(mode=0o700)
    old = Database(settings.db_path)
    MIGRATIONS.apply(old, stop_before="m002_job_failure_class_ready")
    old.table("jobs").insert({"id": "old-1", "service": "web", "action": "api",
                              "generation": "g0", "phase": "stopped", "process": 1,
                              "restart_count": 4, "consecutive_failures": 0, "reason": "down",
                              "blocked_by": "[]", "spec": "{}"})
    old.close()
    before = settings.db_path.read_bytes()
    rows = status(settings, capsys)
    assert [(r["job_id"], r["restart_count"], r["ready"]) for r in rows] == [("old-1", 4, False)]
    assert settings.db_path.read_bytes() == before  # a reader never migrates
    with Store.open(settings.db_path) as store:
        assert not MIGRATIONS.pending(store.db)
        assert [(j.id, j.restart_count) for j in store.jobs()] == [("old-1", 4)]


# --- item 5b: one specs dir per state dir -------------------------------------------------------


def test_a_state_dir_refuses_another_specs_dir_until_rebind(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    [a] = status(settings, capsys)
    other_specs = tmp_path / "elsewhere"
    other_specs.mkdir()
    write_sleeper(other_specs, "b")
    other = Settings(other_specs, settings.state_dir)
    for command in (("--once", "--wait", "5s"), ("diff",), ("down",), ("restart", "a")):
        code, err = cli_err(other, capsys, *command)
        assert code == 2, command
        assert_one_clear_line(err, str(settings.specs_dir), str(other_specs), "--rebind")
    rows = status(settings, capsys)
    assert [(r["service"], r["pid"], r["phase"]) for r in rows] == [("a", a["pid"], "running")]
    capsys.readouterr()
    assert run_cli(other, "diff", "--rebind") == 1  # a preview: binds nothing
    assert "b.main" in capsys.readouterr().out
    assert run_cli(other, "diff") == 2
    assert run_cli(other, "--once", "--wait", "20s", "--rebind") == 0
    rows = status(settings, capsys)
    assert [(r["service"], r["phase"]) for r in rows] == [("b", "running")]
    assert not alive(a["pid"])
    assert run_cli(settings, "diff") == 2  # now the first dir is the other one
    with Store.open(settings.db_path) as store:
        assert "rebound" in [e.kind for _, e in store.events(limit=None)]


def test_rebind_is_refused_while_a_daemon_serves_the_state_dir(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    (tmp_path / "other").mkdir()
    other = Settings(tmp_path / "other", settings.state_dir)
    with DaemonLock(settings.daemon_lock_path):
        code, err = cli_err(other, capsys, "--once", "--wait", "5s", "--rebind", "--allow-empty")
        assert run_cli(settings, "--once", "--wait", "5s") == 0  # serving the bound dir is fine
    assert code == 2
    assert_one_clear_line(err, f"another reconciler (pid {os.getpid()})", "before --rebind")
    assert (settings.state_dir / "specs-dir").read_text() == f"{settings.specs_dir}\n"


def test_the_binding_keeps_a_symlinked_specs_path_as_given(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """git-sync flips `specs -> rev-N`: the state dir serves the link, not one revision."""
    rev1, rev2 = tmp_path / "rev1", tmp_path / "rev2"
    for rev in (rev1, rev2):
        rev.mkdir()
        write_sleeper(rev, "a")
    link = tmp_path / "live"
    link.symlink_to(rev1)
    via_link = Settings(link, settings.state_dir)
    assert run_cli(via_link, "--once", "--wait", "20s") == 0
    assert (settings.state_dir / "specs-dir").read_text() == f"{link}\n"
    link.unlink()
    link.symlink_to(rev2)
    assert run_cli(via_link, "diff") == 0
    assert run_cli(Settings(rev2, settings.state_dir), "diff") == 2


def test_a_reconciler_refuses_a_state_dir_bound_to_another_specs_dir(
        settings: Settings, tmp_path: Path) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    (tmp_path / "other").mkdir()
    with pytest.raises(Exception, match="--rebind"):
        Reconciler(Settings(tmp_path / "other", settings.state_dir))


# --- item 5a: one daemon per state dir ----------------------------------------------------------


def start_daemon(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RECONCILER_STATE_DIR": str(settings.state_dir)}
    with log.open("ab") as out:
        return subprocess.Popen(
            [PY, "-m", "reconciler.cli", "--specs", str(settings.specs_dir),
             "--state-dir", str(settings.state_dir)],
            env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)


def test_a_second_daemon_on_the_same_state_dir_exits_2_naming_the_first(
        settings: Settings, tmp_path: Path) -> None:
    write_sleeper(settings.specs_dir, "a")
    first = start_daemon(settings, tmp_path / "first.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: settings.daemon_lock_path.exists()
                 and settings.daemon_lock_path.read_text().strip() == str(first.pid),
                 message="the first daemon's lock")
        second = start_daemon(settings, tmp_path / "second.log")
        assert second.wait(timeout=30) == 2
        err = (tmp_path / "second.log").read_text()
        assert_one_clear_line(err, f"another reconciler (pid {first.pid}) runs on "
                                   f"{settings.state_dir}")
        assert first.poll() is None
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)
    assert first.returncode == 0
    assert settings.daemon_lock_path.read_text() == ""  # released: the next one may start
