"""End-to-end passes with real processes, sockets and SQLite, each test in its own dirs."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import socket
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.controller import FIRST_LOOK_SECONDS, Reconciler
from reconciler.host.identity import identity_of, proc_info
from reconciler.host.spawn import Children
from reconciler.plan import Spawn, UpdateJob
from reconciler.settings import Settings
from reconciler.state.enrollment import enroll, read_enrollments
from reconciler.state.lock import StateLock
from reconciler.state.records import Enrollment
from tests.conftest import Foreign
from tests.helpers import service_env, session_members, wait_for

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(3600)"]


def listener_code(port: int) -> str:
    return ("import socket,time; s=socket.socket(); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('127.0.0.1',{port})); s.listen(); time.sleep(3600)")


UNIX_SERVER = ("import os,socket,sys,time; s=socket.socket(socket.AF_UNIX); "
               "s.bind(os.path.join(os.environ['RECONCILER_RUN_DIR'], sys.argv[1])); "
               "s.listen(); time.sleep(3600)")


def unix_server(name: str) -> str:
    """A YAML flow list running a unix-socket listener on <run-dir>/<name>."""
    return json.dumps([PY, "-c", UNIX_SERVER, name])


def write_spec(specs_dir: Path, name: str, text: str) -> Path:
    path = specs_dir / name
    path.write_text(textwrap.dedent(text))
    os.chmod(path, 0o644)
    return path


def yaml_list(argv: list[str]) -> str:
    return json.dumps(argv)


def write_sleeper(specs_dir: Path, name: str) -> Path:
    """A service `<name>` with one long-running action `main` that just sleeps."""
    return write_spec(specs_dir, f"{name}.yaml", f"""\
    name: {name}
    actions:
      - {{name: main, process: true, cmd: {yaml_list(SLEEPER)}}}
    """)


def status(settings: Settings, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert run_cli(settings, "status", "-o", "json") == 0
    return json.loads(capsys.readouterr().out)


def run_cli(settings: Settings, *args: str) -> int:
    return cli.main([*args, "--specs", str(settings.specs_dir),
                     "--state-dir", str(settings.state_dir)])


def out_of(capsys: pytest.CaptureFixture[str], settings: Settings, *args: str
           ) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of one CLI command on this test's dirs."""
    capsys.readouterr()
    code = run_cli(settings, *args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def job(settings: Settings, capsys: pytest.CaptureFixture[str], name: str) -> dict[str, object]:
    service, action = name.split(".")
    rows = [r for r in status(settings, capsys)
            if r["service"] == service and r["action"] == action]
    assert len(rows) == 1, rows
    return rows[0]


def alive(pid: object) -> bool:
    return isinstance(pid, int) and identity_of(pid) is not None


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def full_spec(port: int) -> str:
    return f"""\
    name: web
    actions:
      - name: prepare
        cmd: "echo prepared > $RECONCILER_RUN_DIR/prepared"
      - name: http
        process: true
        after: [prepare]
        cmd: {yaml_list([PY, "-c", listener_code(port)])}
        tcp_ports: [{port}]
        health: {{tcp: {port}}}
        stop: {{timeout: 2s}}
      - name: sock
        process: true
        sockets: [web.sock]
        cmd: {unix_server("web.sock")}
        health: {{unix: web.sock}}
    """


def test_converges_then_a_second_pass_changes_nothing(
        settings: Settings, reconciler: Reconciler, free_port: Callable[[], int],
        capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    write_spec(settings.specs_dir, "web.yaml", full_spec(port))
    assert run_cli(settings, "diff") == 1
    result = reconciler.converge(wait=30)
    assert result.converged, [(j.action, j.phase, j.reason) for j in result.jobs]
    assert (settings.run_dir / "prepared").read_text() == "prepared\n"
    assert port_open(port)
    assert (settings.run_dir / "web.sock").exists()
    again = reconciler.reconcile()
    assert again.plan.steps == ()
    capsys.readouterr()
    assert run_cli(settings, "diff") == 0
    assert "no changes" in capsys.readouterr().out
    rows = {r["action"]: r for r in status(settings, capsys)}
    assert rows["prepare"]["phase"] == "succeeded"
    assert rows["http"]["phase"] == "running" and rows["http"]["ready"] is True
    assert alive(rows["http"]["pid"]) and alive(rows["sock"]["pid"])


def test_status_json_has_the_documented_fields(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert reconciler.converge(wait=20).converged
    row = job(settings, capsys, "a.main")
    for field in ("service", "action", "job_id", "phase", "ready", "pid", "restart_count",
                  "last_exit_code", "reason", "blocked_by", "started_at", "generation"):
        assert field in row
    assert row["phase"] == "running" and row["restart_count"] == 0 and row["blocked_by"] == []
    assert alive(row["pid"])


def test_once_exit_codes(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "ok")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert "running" in capsys.readouterr().out
    write_spec(settings.specs_dir, "bad.yaml", "name: bad\nactions:\n  - name: x\n    cmdd: [a]\n")
    assert run_cli(settings, "--once", "--wait", "5s") == 2
    assert "bad.yaml:4:5:" in capsys.readouterr().err
    (settings.specs_dir / "bad.yaml").unlink()
    write_spec(settings.specs_dir, "never.yaml", """\
    name: never
    actions:
      - {name: fails, cmd: "exit 3"}
    """)
    assert run_cli(settings, "--once", "--wait", "1s") == 1


def test_broken_file_keeps_its_last_good_version_running(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_sleeper(settings.specs_dir, "a")
    assert reconciler.converge(wait=20).converged
    pid = job(settings, capsys, "a.main")["pid"]
    path.write_text("name: a\nactions: [\n")
    result = reconciler.reconcile()
    assert result.plan.steps == ()
    assert [str(e).split(":")[0] for e in result.loaded.errors] == [str(path)]
    assert job(settings, capsys, "a.main")["pid"] == pid and alive(pid)
    capsys.readouterr()
    assert run_cli(settings, "validate") == 2
    assert re.search(rf"^{re.escape(str(path))}:\d+:\d+: ", capsys.readouterr().err, re.M)


def test_validate_prints_file_line_column(settings: Settings,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    write_spec(settings.specs_dir, "a.yaml", "name: a\nactions:\n  - name: x\n    cmd: [a]\n"
               "    restart: sometimes\n")
    capsys.readouterr()
    assert cli.main(["validate", str(settings.specs_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{settings.specs_dir / 'a.yaml'}:5:" in err
    write_spec(settings.specs_dir, "a.yaml", "name: a\nactions:\n  - {name: x, cmd: [a]}\n")
    assert cli.main(["validate", str(settings.specs_dir)]) == 0


def test_stale_socket_is_removed_before_start(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    stale = settings.run_dir / "s.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(stale))
    leftover.close()  # the file stays, nobody listens: stale
    write_spec(settings.specs_dir, "s.yaml", f"""\
    name: s
    actions:
      - name: server
        process: true
        sockets: [s.sock]
        cmd: {unix_server("s.sock")}
        health: {{unix: s.sock}}
    """)
    assert reconciler.converge(wait=20).converged
    kinds = [e["kind"] for e in events(settings, capsys)]
    assert "cleanup" in kinds
    probe = socket.socket(socket.AF_UNIX)
    probe.connect(str(stale))  # our server listens there now
    probe.close()


def events(settings: Settings, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    assert run_cli(settings, "events", "-o", "json", "-n", "500") == 0
    return json.loads(capsys.readouterr().out)


def port_spec(port: int, extra: str = "") -> str:
    return f"""\
    name: p
    actions:
      - name: server
        process: true
        cmd: {yaml_list([PY, "-c", listener_code(port)])}
        tcp_ports: [{port}]
        backoff: {{initial: 50ms, max: 200ms}}
        {extra}
    """


def test_foreign_port_holder_blocks_without_kill_others(
        settings: Settings, reconciler: Reconciler, foreign: Foreign,
        free_port: Callable[[], int], capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    squatter = foreign.listen_tcp(port)
    write_spec(settings.specs_dir, "p.yaml", port_spec(port))
    result = reconciler.converge(wait=0.5)
    assert not result.converged
    row = job(settings, capsys, "p.server")
    assert row["phase"] == "blocked"
    [holder] = row["blocked_by"]  # type: ignore[misc]
    assert (holder["pid"], holder["resource"]) == (squatter.pid, f":{port}")
    assert holder["cmd"].startswith(f"{PY} -c import socket,time s=socket.socket();")
    assert f"held by pid {squatter.pid}" in str(row["reason"])
    assert squatter.poll() is None  # never touched


def test_foreign_port_holder_is_reclaimed_with_kill_others(
        settings: Settings, reconciler: Reconciler, foreign: Foreign,
        free_port: Callable[[], int], capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    squatter = foreign.listen_tcp(port)
    write_spec(settings.specs_dir, "p.yaml", port_spec(port, "kill_others: true"))
    assert reconciler.converge(wait=20).converged
    squatter.wait(timeout=10)
    row = job(settings, capsys, "p.server")
    assert row["phase"] == "running" and alive(row["pid"]) and row["pid"] != squatter.pid
    assert wait_for(lambda: port_open(port), message="our listener")


def test_singleton_replaces_a_foreign_instance_of_its_own_command(
        settings: Settings, reconciler: Reconciler, foreign: Foreign,
        capsys: pytest.CaptureFixture[str]) -> None:
    twin = foreign.start(SLEEPER)
    # its command line, not just its pid: Popen returns while the kernel may still be
    # setting up the exec (an empty cmdline), and a pidfile naming that is "unrelated"
    wait_for(lambda: (info := proc_info(twin.pid)) and info.cmdline == tuple(SLEEPER),
             message="twin running its command")
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "one.main.pid").write_text(f"{twin.pid}\n")
    write_spec(settings.specs_dir, "one.yaml", f"""\
    name: one
    actions:
      - {{name: main, process: true, singleton: true, cmd: {yaml_list(SLEEPER)},
          stop: {{timeout: 2s}}}}
    """)
    assert reconciler.converge(wait=20).converged
    twin.wait(timeout=10)
    row = job(settings, capsys, "one.main")
    assert alive(row["pid"]) and row["pid"] != twin.pid
    assert (settings.run_dir / "one.main.pid").read_text().strip() == str(row["pid"])


def test_pidfile_naming_an_unrelated_process_never_gets_it_killed(
        settings: Settings, reconciler: Reconciler, foreign: Foreign,
        capsys: pytest.CaptureFixture[str]) -> None:
    stranger = foreign.start([PY, "-c", "import time; time.sleep(3601)"])
    wait_for(lambda: identity_of(stranger.pid), message="stranger running")
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    (settings.run_dir / "one.main.pid").write_text(f"{stranger.pid}\n")
    write_spec(settings.specs_dir, "one.yaml", f"""\
    name: one
    actions:
      - {{name: main, process: true, singleton: true, cmd: {yaml_list(SLEEPER)}}}
    """)
    assert reconciler.converge(wait=20).converged
    assert stranger.poll() is None
    row = job(settings, capsys, "one.main")
    assert (settings.run_dir / "one.main.pid").read_text().strip() == str(row["pid"])


TREE = ("trap '' TERM; "
        f"{PY} -c 'import os,time; os.setpgid(0,0); time.sleep(3600)' & "
        "(sleep 3600 &) ; "
        "sleep 3600 & wait")


def test_prune_stops_the_whole_tree_even_a_grandchild_and_a_term_ignorer(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "keep")
    tree = write_spec(settings.specs_dir, "tree.yaml", f"""\
    name: tree
    actions:
      - name: main
        process: true
        cmd: {json.dumps(TREE)}
        stop: {{timeout: 300ms}}
    """)
    assert reconciler.converge(wait=20).converged
    leader = job(settings, capsys, "tree.main")["pid"]
    assert isinstance(leader, int)
    # ... and the python member has left the process group (it does so only once started)
    members = wait_for(lambda: len(m := session_members(leader)) >= 4
                       and len({p.pgrp for p in m}) >= 2 and m,
                       message="the whole tree started, one member in a group of its own")
    tree.unlink()
    result = reconciler.reconcile()
    assert any(s.verb == "kill" for s in result.plan.steps)  # signalled, not waited for
    assert reconciler.converge(wait=20).converged  # SIGKILL after 300 ms, then retired
    for member in members:
        assert identity_of(member.pid) is None or identity_of(member.pid) != member.identity
    removed = [r for r in status(settings, capsys) if r["service"] == "tree"]
    assert removed == []  # removed jobs are not listed
    assert alive(job(settings, capsys, "keep.main")["pid"])


def test_empty_specs_dir_prunes_nothing_without_allow_empty(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    pid = job(settings, capsys, "a.main")["pid"]
    spec.unlink()
    capsys.readouterr()
    assert run_cli(settings, "--once", "--wait", "1s") == 2
    assert "--allow-empty" in capsys.readouterr().err
    assert alive(pid)
    assert run_cli(settings, "diff") == 2
    assert run_cli(settings, "--once", "--wait", "5s", "--allow-empty") == 0
    assert not alive(pid)


def test_crashed_process_restarts_with_same_job_and_rotated_log(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    write_spec(settings.specs_dir, "a.yaml", f"""\
    name: a
    actions:
      - name: main
        process: true
        cmd: "echo run-$$; exec {PY} -c 'import time; time.sleep(3600)'"
    """)
    assert reconciler.converge(wait=20).converged
    before = job(settings, capsys, "a.main")
    pid = before["pid"]
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: identity_of(pid) is None, message="process gone")
    assert reconciler.converge(wait=20).converged
    after = job(settings, capsys, "a.main")
    assert after["job_id"] == before["job_id"]
    assert after["restart_count"] == 1 and after["pid"] != pid and alive(after["pid"])
    assert after["last_exit_code"] == -9
    log_dir = settings.logs_dir / "a"
    assert f"run-{pid}" in (log_dir / "main.log.1").read_text()
    assert f"run-{after['pid']}" in (log_dir / "main.log").read_text()


def test_down_stops_a_service_and_it_stays_stopped(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert reconciler.converge(wait=20).converged
    pid = job(settings, capsys, "a.main")["pid"]
    assert run_cli(settings, "down", "a") == 0
    assert not alive(pid)
    assert job(settings, capsys, "a.main")["phase"] == "stopped"
    assert reconciler.reconcile().plan.steps == ()


def test_edit_that_changes_what_runs_restarts_and_others_do_not(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    base = f"""\
    name: a
    description: DESC
    actions:
      - {{name: main, process: true, cmd: {yaml_list(SLEEPER)}, env: {{X: "1"}}}}
    """
    write_spec(settings.specs_dir, "a.yaml", base.replace("DESC", "first"))
    assert reconciler.converge(wait=20).converged
    first = job(settings, capsys, "a.main")
    write_spec(settings.specs_dir, "a.yaml", base.replace("DESC", "second"))
    assert reconciler.reconcile().plan.steps == ()
    write_spec(settings.specs_dir, "a.yaml", base.replace('"1"', '"2"'))
    assert reconciler.converge(wait=20).converged
    second = job(settings, capsys, "a.main")
    assert second["job_id"] != first["job_id"] and not alive(first["pid"])
    assert second["restart_count"] == 0


def test_state_dir_and_files_are_private(settings: Settings, reconciler: Reconciler) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert reconciler.converge(wait=20).converged
    assert settings.state_dir.stat().st_mode & 0o777 == 0o700
    for path in (settings.db_path, settings.logs_dir / "a" / "main.log",
                 settings.run_dir / "a.main.pid"):
        assert path.stat().st_mode & 0o077 == 0, path


def test_world_writable_spec_is_refused(settings: Settings,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(settings.specs_dir, "a.yaml", "name: a\nactions:\n  - {name: x, cmd: [a]}\n")
    os.chmod(path, 0o666)
    capsys.readouterr()
    assert cli.main(["validate", str(settings.specs_dir)]) == 2
    assert "chmod" in capsys.readouterr().err


def test_a_new_controller_adopts_running_processes_without_restarting_them(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    with Reconciler(settings) as first:
        assert first.converge(wait=20).converged
    before = job(settings, capsys, "a.main")
    with Reconciler(settings) as second:
        result = second.reconcile()
    assert result.plan.steps == () and result.converged
    after = job(settings, capsys, "a.main")
    assert (after["pid"], after["job_id"], after["restart_count"]) == (
        before["pid"], before["job_id"], 0)


def test_enrollment_proves_ownership_when_the_record_was_never_committed(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A controller that died between spawning and committing its pass left only the
    enrollment: the next one adopts that process instead of starting a second instance."""
    write_sleeper(settings.specs_dir, "a")
    with Reconciler(settings) as first:
        assert first.converge(wait=20).converged
        pid = first.store.jobs()[0].pid
        first.store.db.execute("DELETE FROM jobs")
    with Reconciler(settings) as second:
        result = second.reconcile()
    assert [s.verb for s in result.plan.steps] == ["update"]  # recovered, nothing spawned
    assert job(settings, capsys, "a.main")["pid"] == pid and alive(pid)


def test_a_running_controller_sees_what_a_crashed_concurrent_pass_enrolled(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    """Another process (a `reconcile --once`) respawned our job and died before committing:
    the long-lived controller must adopt that process, not start a second instance, even
    though it keeps the enrollments it read in memory between passes."""
    write_sleeper(settings.specs_dir, "a")
    assert reconciler.converge(wait=20).converged
    [record] = reconciler.store.jobs()
    with StateLock(settings.lock_path):  # the other process's pass
        os.kill(record.pid, signal.SIGKILL)
        wait_for(lambda: identity_of(record.pid) is None, message="the old process gone")
        children = Children()
        identity = children.spawn(
            SLEEPER, cwd=settings.specs_dir, log_path=settings.logs_dir / "other.log",
            env=service_env({"RECONCILER_STATE_DIR": str(settings.state_dir)}),
            enroll=lambda ident: enroll(settings.run_dir, Enrollment(
                job_id=record.id, service="a", action="main", generation=record.generation,
                identity=ident, cmdline=tuple(SLEEPER), enrolled_at=time.time())))
        children.close()
    result = reconciler.reconcile()
    assert [s.verb for s in result.plan.changes] == ["adopt"]
    row = job(settings, capsys, "a.main")
    assert (row["job_id"], row["pid"], row["restart_count"]) == (record.id, identity.pid, 1)


def test_schema_is_json_schema_for_editors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert "actions" in schema["properties"]


def test_bad_wait_duration_is_a_clear_error(settings: Settings,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(settings, "--once", "--wait", "soon") == 2
    err = capsys.readouterr().err
    assert err.startswith("reconcile: error: --wait:") and "Traceback" not in err


def test_restart_command_restarts_a_running_job_and_counts_it(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert reconciler.converge(wait=20).converged
    before = job(settings, capsys, "a.main")
    assert run_cli(settings, "restart", "a.main") == 0
    after = job(settings, capsys, "a.main")
    assert after["job_id"] == before["job_id"] and after["restart_count"] == 1
    assert alive(after["pid"]) and not alive(before["pid"])
    assert run_cli(settings, "down", "a") == 0
    assert run_cli(settings, "restart", "a") == 0  # brings a stopped service back
    assert job(settings, capsys, "a.main")["phase"] == "running"
    capsys.readouterr()
    assert run_cli(settings, "restart", "nope") == 2
    assert "no job named nope" in capsys.readouterr().err


def test_status_shows_usage_and_a_running_log_is_capped(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    flag = settings.specs_dir.parent / "speak"
    chatty = (f"import os,sys,time\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.02)\n"
              "for i in range(4000): print('x' * 99)\nsys.stdout.flush()\ntime.sleep(3600)")
    write_spec(settings.specs_dir, "a.yaml", f"""\
    name: a
    actions:
      - name: main
        process: true
        cmd: {json.dumps([PY, "-c", chatty])}
        logs: {{keep: 2, max_size: 100KiB}}
    """)
    assert reconciler.converge(wait=20).converged
    log = settings.logs_dir / "a" / "main.log"
    flag.write_text("")
    wait_for(lambda: log.stat().st_size >= 400_000, message="the process wrote its output")
    reconciler.housekeeping_interval = 0.0  # due now (passes check logs every few seconds)
    reconciler.caps_logs = False  # as under the daemon, whose LogCapper does it
    reconciler.reconcile()
    assert log.stat().st_size >= 400_000
    reconciler.caps_logs = True
    reconciler.reconcile()
    assert log.stat().st_size == 0
    # history holds only the last max_size bytes (DESIGN §8.1 "Logs are bounded")
    assert 0 < (settings.logs_dir / "a" / "main.log.1").stat().st_size <= 100 * 1024
    row = job(settings, capsys, "a.main")
    assert row["rss_bytes"] > 0 and row["cpu_percent"] >= 0 and row["uptime_seconds"] >= 0
    assert alive(row["pid"])


def test_old_events_are_pruned_so_the_database_stays_bounded(
        settings: Settings, reconciler: Reconciler) -> None:
    write_sleeper(settings.specs_dir, "a")
    write_sleeper(settings.specs_dir, "b")
    assert reconciler.converge(wait=20).converged
    assert len(reconciler.store.events(limit=None)) > 3
    newest = reconciler.store.events(limit=3)
    reconciler.events_kept = 3
    reconciler.housekeeping_interval = 0.0
    reconciler.reconcile()
    assert reconciler.store.events(limit=None) == newest


def test_many_starts_in_one_pass_are_each_recorded_in_plan_order(
        settings: Settings, reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    """A pass starts consecutive spawns concurrently; each still gets its own log, pidfile
    and enrollment, a failed one fails alone, and events keep the plan's order."""
    names = [f"s{i}" for i in range(8)]
    for name in names:
        write_sleeper(settings.specs_dir, name)
    write_spec(settings.specs_dir, "s4.yaml", """\
    name: s4
    actions:
      - {name: main, process: true, cmd: [no-such-command-xyz]}
    """)
    result = reconciler.reconcile()
    spawned = [s.job.service for s in result.plan.changes]
    assert spawned == names
    events = [e for _, e in reconciler.store.events(limit=None) if e.kind in ("spawn", "backoff")]
    assert [e.service for e in events] == names
    for name in names:
        row = job(settings, capsys, f"{name}.main")
        if name == "s4":
            assert row["phase"] == "backoff" and "command not found" in str(row["reason"])
            continue
        assert alive(row["pid"]) and row["phase"] == "running"
        assert (settings.run_dir / f"{name}.main.pid").read_text() == f"{row['pid']}\n"
        assert (settings.logs_dir / name / "main.log").is_file()
    assert len(reconciler.enrollments.current()) == len(names) - 1
    # taken from what the starts wrote, not read back: the same as reading the files
    assert reconciler.enrollments.current() == read_enrollments(settings.run_dir)


def test_no_collection_stops_a_batch_of_starts(settings: Settings,
                                               reconciler: Reconciler) -> None:
    """A cyclic collection stops every thread: while a pass's starts run on their threads
    the collector is held off (it ran mid-batch for ~70 ms at a thousand specs), and it is
    back on afterwards."""
    for name in ("a", "b", "c"):
        write_sleeper(settings.specs_dir, name)
    in_batch: list[str] = []

    def seen(phase: str, _info: dict[str, int]) -> None:
        if phase == "start" and threading.current_thread().name.startswith("spawn"):
            in_batch.append(threading.current_thread().name)

    thresholds = gc.get_threshold()
    gc.set_threshold(10)  # a collection every few allocations: surely some inside a start
    gc.callbacks.append(seen)
    try:
        result = reconciler.reconcile()
    finally:
        gc.callbacks.remove(seen)
        gc.set_threshold(*thresholds)
    assert sum(isinstance(s, Spawn) for s in result.plan.changes) == 3
    assert in_batch == []
    assert gc.isenabled()


def test_a_batch_of_starts_leaves_a_disabled_collector_disabled(
        settings: Settings, reconciler: Reconciler) -> None:
    for name in ("a", "b"):
        write_sleeper(settings.specs_dir, name)
    gc.disable()
    try:
        reconciler.reconcile()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_only_the_enrollments_a_step_wrote_or_removed_are_read_again(
        settings: Settings, reconciler: Reconciler) -> None:
    """After its steps a pass reads back the enrollment files they touched; marking a job
    ready touches none (at a thousand jobs that was a thousand reads per pass), while
    forgetting a stopped job's process removes its file, which is then read again."""
    write_sleeper(settings.specs_dir, "a")
    [started] = reconciler.reconcile().jobs
    assert started.identity is not None
    ready = reconciler.executor.run([UpdateJob(replace(started, ready=True), "ready", "ready")])
    assert ready.enrollments == set()
    gone = reconciler.executor.run([UpdateJob(started.with_identity(None), "stopped", "x")])
    assert gone.enrollments == {started.id}
    assert gone.enrolled == {}  # removed: read again (found missing), never taken as written
    assert not (settings.run_dir / f"{started.id}.enroll.json").exists()


def _printer(settings: Settings, word: str) -> None:
    """A service `p` whose process prints `word`, then sleeps."""
    argv = yaml_list([PY, "-c", f"import time; print({word!r}, flush=True); time.sleep(3600)"])
    write_spec(settings.specs_dir, "p.yaml", f"""\
    name: p
    actions:
      - {{name: main, process: true, cmd: {argv}}}
    """)


def test_a_new_generation_starts_a_fresh_log_and_the_old_one_is_previous(
        settings: Settings, reconciler: Reconciler) -> None:
    """`logs --previous` right after a spec change shows the old generation's output."""
    live = settings.logs_dir / "p" / "main.log"
    _printer(settings, "generation-one")
    assert reconciler.converge(wait=20).converged
    wait_for(lambda: "generation-one" in live.read_text())
    _printer(settings, "generation-two")
    assert reconciler.converge(wait=20).converged
    wait_for(lambda: "generation-two" in live.read_text())
    assert "generation-one" not in live.read_text()
    assert "generation-one" in (settings.logs_dir / "p" / "main.log.1").read_text()


def test_a_started_job_says_what_state_it_is_in(
        settings: Settings, reconciler: Reconciler,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The reason of a running one-shot is `running`, not the spawn's `start (new job)`."""
    write_spec(settings.specs_dir, "o.yaml", f"""\
    name: o
    actions:
      - {{name: slow, process: false, cmd: {yaml_list(SLEEPER)}}}
    """)
    reconciler.reconcile()
    row = job(settings, capsys, "o.slow")
    assert (row["phase"], row["reason"]) == ("running", "running")


def test_a_start_that_fails_is_not_counted_as_a_restart(settings: Settings) -> None:
    """A job crashes and its restart cannot start (its working directory is gone: a specs
    dir being replaced); once it can, it is restarted. One crash, one restart: the failed
    attempt ran nothing (as a container that could not be created is no restart)."""
    work = settings.specs_dir / "work"
    work.mkdir()
    (settings.specs_dir / "a.yaml").write_text(
        "name: a\nactions:\n  - name: main\n    process: true\n    cwd: work\n"
        "    cmd: exec sleep 3600\n")
    later = [0.0]
    reconciler = Reconciler(settings, clock=lambda: time.time() + later[0])
    try:
        assert reconciler.converge(wait=20).converged
        [job] = reconciler.store.jobs()
        assert job.pid is not None and job.restart_count == 0
        later[0] += 60  # long after its start: restarted at once, no crash loop
        work.rmdir()
        os.kill(job.pid, signal.SIGKILL)
        wait_for(lambda: identity_of(job.pid or 0) is None, message="the crash")
        reconciler.reconcile()
        [failed] = reconciler.store.jobs()
        assert failed.phase == "backoff" and "working directory missing" in (failed.reason or "")
        assert failed.restart_count == 0
        work.mkdir()
        later[0] += 60  # past its backoff
        reconciler.reconcile()
        [again] = reconciler.store.jobs()
        assert again.pid not in (None, job.pid) and again.restart_count == 1
    finally:
        reconciler.down(wait=10)
        reconciler.close()


def test_once_naps_between_passes_until_its_youngest_start_is_old_enough(
        settings: Settings) -> None:
    """`converge` waits FIRST_LOOK_SECONDS after a pass that changed the host, so what it
    started has that long to fail before the next pass may call it ready; when the pass only
    started processes, counted from the youngest start (a pass that started many is past it
    when it ends). A pass that changed nothing waits longer."""
    write_sleeper(settings.specs_dir, "a")
    now = [time.time()]  # the controller's clock, moved by hand
    reconciler = Reconciler(settings, clock=lambda: now[0])
    try:
        started = reconciler.reconcile()
        assert [type(s) for s in started.plan.changes] == [Spawn]
        [job] = started.jobs
        assert job.started_at == now[0]
        now[0] += 0.01
        assert reconciler._nap(started, 10.0) == pytest.approx(FIRST_LOOK_SECONDS - 0.01)
        assert reconciler._nap(started, 0.005) == 0.005  # never past the wait
        now[0] += 1.0
        assert reconciler._nap(started, 10.0) == 0.0
        ready = reconciler.reconcile()
        assert not ready.plan.changes and ready.converged
        assert reconciler._nap(ready, 10.0) == 0.25
    finally:
        reconciler.down(wait=10)
        reconciler.close()
