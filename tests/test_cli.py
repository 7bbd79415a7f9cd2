"""The command line's contract: flags in either place, quiet closed pipes, unknown names are
errors, and no input ever shows a traceback."""

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
    assert capsys.readouterr().out.startswith("SERVICE")


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
