"""`reconcile suspend` / `resume` with real processes (issue 10, part 8): a suspended service
is observed but never started, stopped, restarted or pruned; it stays suspended across
restarts of the controller; `resume` heals it (or prunes it, when its spec is gone)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from reconciler.settings import Settings
from reconciler.state.store import Store
from tests.helpers import wait_for
from tests.test_reconcile import (
    SLEEPER,
    alive,
    job,
    out_of,
    run_cli,
    status,
    write_sleeper,
    write_spec,
)


def test_a_suspended_service_is_not_restarted_and_resume_heals_it(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    write_sleeper(settings.specs_dir, "b")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    before = job(settings, capsys, "a.main")
    assert out_of(capsys, settings, "suspend", "a")[:2] == (0, "a suspended\n")
    os.kill(int(before["pid"]), signal.SIGKILL)  # type: ignore[call-overload]
    wait_for(lambda: not alive(before["pid"]))
    assert run_cli(settings, "--once", "--wait", "20s") == 0  # converged: a is not waited for
    after = job(settings, capsys, "a.main")
    assert after["pid"] == before["pid"] and after["suspended"] is True  # not acted on
    assert job(settings, capsys, "b.main")["suspended"] is False
    _, table, _ = out_of(capsys, settings, "status")
    header, columns, *rows = table.splitlines()  # the status header line, then the table
    assert header.startswith("daemon ") and "SUSPENDED" in columns
    assert [line.split()[10] for line in rows] == ["yes", "-"]
    code, out, _ = out_of(capsys, settings, "diff")
    assert (code, out) == (0, "no changes\n")
    code, out, _ = out_of(capsys, settings, "resume", "a")
    assert code == 0 and out.startswith("a resumed\n")  # and its pass recorded the crash
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    healed = job(settings, capsys, "a.main")
    assert healed["suspended"] is False and alive(healed["pid"])
    assert healed["restart_count"] == 1 and healed["job_id"] == before["job_id"]


def test_a_spec_change_of_a_suspended_service_is_not_applied(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    before = job(settings, capsys, "a.main")
    assert run_cli(settings, "suspend", "a") == 0
    write_spec(settings.specs_dir, "a.yaml", f"""\
    name: a
    actions:
      - {{name: main, process: true, cmd: {json.dumps(SLEEPER)}, env: {{NEW: "1"}}}}
    """)
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert job(settings, capsys, "a.main")["job_id"] == before["job_id"]
    assert alive(before["pid"])
    assert run_cli(settings, "resume", "a") == 0  # the new generation now
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    after = job(settings, capsys, "a.main")
    assert after["job_id"] != before["job_id"] and alive(after["pid"])
    assert not alive(before["pid"])


def test_a_suspended_service_removed_from_the_specs_is_pruned_only_once_resumed(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_sleeper(settings.specs_dir, "gone")
    write_sleeper(settings.specs_dir, "keep")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    gone = job(settings, capsys, "gone.main")
    assert run_cli(settings, "suspend", "gone") == 0
    spec.unlink()
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert alive(gone["pid"]) and job(settings, capsys, "gone.main")["phase"] == "running"
    assert run_cli(settings, "resume", "gone") == 0
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert [r["service"] for r in status(settings, capsys)] == ["keep"]
    wait_for(lambda: not alive(gone["pid"]))


def test_suspended_is_sticky_and_recorded(settings: Settings,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Stored in the state dir (a new controller sees it), with `suspend`/`resume` events;
    asking twice changes nothing."""
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "suspend", "a") == 0  # known from the specs before it ever ran
    assert out_of(capsys, settings, "suspend", "a")[:2] == (0, "a was already suspended\n")
    with Store.open(settings.db_path) as store:
        assert store.suspended() == frozenset({"a"})
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert status(settings, capsys) == []  # never started
    assert run_cli(settings, "resume", "a") == 0
    assert out_of(capsys, settings, "resume", "a")[:2] == (0, "a was not suspended\n")
    code, out, _ = out_of(capsys, settings, "events", "-o", "json")
    assert code == 0
    kinds = [e["kind"] for e in json.loads(out) if e["kind"] in ("suspend", "resume")]
    assert kinds == ["suspend", "resume"]
    assert job(settings, capsys, "a.main")["phase"] == "running"


def test_suspend_of_an_unknown_service_and_acting_on_a_suspended_one_are_errors(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    for command in (("suspend", "nosuch"), ("resume", "nosuch")):
        code, _, err = out_of(capsys, settings, *command)
        assert code == 2 and "no service named nosuch" in err, command
    assert run_cli(settings, "suspend", "a") == 0
    pid = job(settings, capsys, "a.main")["pid"]
    for command in (("down", "a"), ("restart", "a.main")):
        code, _, err = out_of(capsys, settings, *command)
        assert code == 2 and "a is suspended" in err, command
    assert run_cli(settings, "down") == 0  # everything else: a is left alone
    assert alive(pid) and job(settings, capsys, "a.main")["phase"] == "running"
