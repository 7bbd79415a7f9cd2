"""The command line's contract: flags in either place, quiet closed pipes, unknown names are
errors, no input ever shows a traceback, and read-only commands write nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.settings import Settings
from tests.test_reconcile import PY, SLEEPER, alive, run_cli, status, write_sleeper, write_spec
from tests.test_state_dir import immutable, snapshot


def test_output_json_works_before_or_after_the_command(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    for argv in (["-o", "json", "status"], ["status", "-o", "json"],
                 ["--output", "json", "events"], ["-o", "json", "diff"]):
        capsys.readouterr()
        cli.main([*argv, "--specs", str(settings.specs_dir),
                  "--state-dir", str(settings.state_dir)])
        assert isinstance(json.loads(capsys.readouterr().out), list), argv
    capsys.readouterr()
    assert run_cli(settings, "-o", "json", "status", "-o", "table") == 0  # the last one wins
    header, table = capsys.readouterr().out.split("\n", 1)  # status: one header line, then
    assert header.startswith("daemon ") and table.startswith("SERVICE")  # its table


def run_into_a_closed_pipe(args: list[str], settings: Settings) -> subprocess.CompletedProcess[
        bytes]:
    """stdout is a pipe whose reader is already gone: every write fails with EPIPE, the
    deterministic form of `reconcile status | head -1`."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *args, "--state-dir",
             str(settings.state_dir), "--specs", str(settings.specs_dir)],
            stdout=write_end, stderr=subprocess.PIPE, timeout=60,
            env={**os.environ, "RECONCILER_STATE_DIR": str(settings.state_dir)})
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", [["status", "-o", "json"], ["events"], ["schema"]],
                         ids=" ".join)
def test_output_into_a_closed_pipe_ends_quietly(settings: Settings, args: list[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    done = run_into_a_closed_pipe(args, settings)
    assert done.stderr == b""
    assert done.returncode == 141  # 128 + SIGPIPE, like a tool killed by it


def test_down_of_an_unknown_service_or_action_is_an_error(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    [a] = status(settings, capsys)
    for command in (("down", "nosuch"), ("down", "a.nosuch"), ("restart", "a.nosuch"),
                    ("logs", "nosuch"), ("logs", "a.nosuch")):
        capsys.readouterr()
        assert run_cli(settings, *command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith("reconcile: error: no job named") and command[1] in err
    assert alive(a["pid"])


def test_down_service_action_stops_that_action_only(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_spec(settings.specs_dir, "a.yaml", f"""\
    name: a
    actions:
      - {{name: main, process: true, cmd: {json.dumps(SLEEPER)}}}
      - {{name: side, process: true, cmd: {json.dumps(SLEEPER)}}}
    """)
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    before = {r["action"]: r for r in status(settings, capsys)}
    assert run_cli(settings, "down", "a.side") == 0
    after = {r["action"]: r for r in status(settings, capsys)}
    assert after["side"]["phase"] == "stopped" and not alive(before["side"]["pid"])
    assert after["main"]["pid"] == before["main"]["pid"] and alive(before["main"]["pid"])
    assert run_cli(settings, "--once", "--wait", "20s") == 0  # and it stays stopped
    assert {r["action"]: r["phase"] for r in status(settings, capsys)} == {
        "main": "running", "side": "stopped"}


COMMANDS = [["--once", "--wait", "2s"], ["diff"], ["status"], ["events"], ["logs", "a"],
            ["down"], ["down", "a"], ["restart", "a"], ["repair"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("state", ["a-file", "under-a-file", "unreadable-db"])
def test_no_input_shows_a_traceback(settings: Settings, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], command: list[str],
                                    state: str) -> None:
    """Every entry point turns what the host or the state dir says into one line, exit 2."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    state_dir = {"a-file": blocker, "under-a-file": blocker / "state",
                 "unreadable-db": settings.state_dir}[state]
    if state == "unreadable-db":
        settings.state_dir.mkdir(mode=0o700)
        settings.db_path.mkdir()  # a directory where the database should be
    (tmp_path / "specs" / "a.yaml").write_text(
        f"name: a\nactions:\n  - {{name: m, process: true, cmd: {json.dumps([PY])}}}\n")
    capsys.readouterr()
    code = cli.main([*command, "--specs", str(settings.specs_dir),
                     "--state-dir", str(state_dir)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("reconcile: error: "), err
    assert "Traceback" not in err and "internal error" not in err, err


def test_settle_flag_holds_a_fresh_file_back_until_it_has_been_quiet(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """`--settle` is how long a changed file must be quiet before it is read: with an hour
    of it a fresh file is not read within `--wait`; with 0 it is read at once."""
    write_sleeper(settings.specs_dir, "fresh")
    assert run_cli(settings, "--once", "--settle", "60s", "--wait", "300ms") == 1
    assert status(settings, capsys) == []
    assert run_cli(settings, "--once", "--settle", "0s", "--wait", "20s") == 0
    assert [r["service"] for r in status(settings, capsys)] == ["fresh"]
    assert run_cli(settings, "--once", "--settle", "2m") == 2  # bounded: at most 60 s


def test_diff_of_a_fresh_state_dir_creates_nothing(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """No state.db, logs/ or run/ (nor the state dir itself): a preview changes nothing."""
    write_sleeper(settings.specs_dir, "a")
    for output in ("table", "json"):
        capsys.readouterr()
        assert run_cli(settings, "diff", "-o", output) == 1  # differences: a would start
        out = capsys.readouterr().out
        assert "a.main" in out if output == "table" else json.loads(out)[0]["service"] == "a"
    assert not settings.state_dir.exists()
    settings.state_dir.mkdir(mode=0o700)  # an existing, empty one stays empty
    assert run_cli(settings, "diff") == 1
    assert list(settings.state_dir.iterdir()) == []


def test_read_only_commands_work_on_a_read_only_state_dir(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    write_sleeper(settings.specs_dir, "b")
    root = settings.state_dir
    before = snapshot(root)
    with immutable([p for p in [root, *sorted(root.rglob("*"))] if not p.is_symlink()]):
        with pytest.raises(PermissionError):
            (root / "probe").touch()  # the condition holds, even for root
        capsys.readouterr()
        assert run_cli(settings, "diff", "-o", "json") == 1
        changes = json.loads(capsys.readouterr().out)
        assert [(c["verb"], c["service"], c["action"]) for c in changes] == [
            ("spawn", "b", "main")]  # only b's start
        for command in (("status",), ("events",), ("logs", "a.main"), ("validate",),
                        ("schema",)):
            assert run_cli(settings, *command) == 0, command
    assert snapshot(root) == before


def test_allow_empty_is_one_flag_before_or_after_diff(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_sleeper(settings.specs_dir, "a")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    spec.unlink()
    assert run_cli(settings, "diff") == 2  # an empty specs dir prunes nothing by default
    for argv in (["diff", "--allow-empty"], ["--allow-empty", "diff"]):
        capsys.readouterr()
        assert run_cli(settings, *argv, "-o", "json") == 1, argv
        [stop] = json.loads(capsys.readouterr().out)  # the stop of a.main
        assert (stop["verb"], stop["service"], stop["action"]) == ("kill", "a", "main"), argv


def test_logs_of_a_service_removed_from_the_specs_stay_readable(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "keep")
    old = write_sleeper(settings.specs_dir, "old")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    log = settings.logs_dir / "old" / "main.log"
    log.write_text("last words\n")
    old.unlink()  # removed (or renamed: the old name is gone the same way)
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert [r["service"] for r in status(settings, capsys)] == ["keep"]
    for target in ("old.main", "old"):
        capsys.readouterr()
        assert run_cli(settings, "logs", target) == 0, target
        assert "last words" in capsys.readouterr().out
    assert run_cli(settings, "logs", "old.nosuch") == 2


def test_logs_by_name_when_the_database_no_longer_knows_the_job(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """After `repair` rebuilt only the running jobs, a log on disk is still found by name."""
    log = settings.logs_dir / "gone" / "main.log"
    log.parent.mkdir(parents=True)
    log.write_text("from before\n")
    capsys.readouterr()
    assert run_cli(settings, "logs", "gone.main") == 0
    assert "from before" in capsys.readouterr().out
    assert run_cli(settings, "logs", "gone.other") == 2
