"""`reconcile --help` and the lazily built subcommands (issue 13): the help served without
argparse is exactly what argparse prints, at the width argparse would choose, and a command's
parser is built only when that command is given, with the same flags and help as before."""

from __future__ import annotations

import argparse
import fcntl
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from reconciler.cli import helptext
from reconciler.cli.args import build_parser, subcommands_of, top_help

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ("diff", "status", "validate", "suspend", "resume", "schema", "down", "restart",
            "events", "logs", "repair", "info", "top", "stats")
WIDTH_PROBE = ("import os, shutil; from reconciler.cli import helptext; "
               "print(shutil.get_terminal_size().columns, "
               "helptext.terminal_columns(os.environ, helptext.stdout_fd()))")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def reconcile(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_stored_help_is_what_the_parser_prints() -> None:
    """Fails when a flag or a command's help changes without regenerating helptext.py
    (`python -m reconciler.cli.helptext`)."""
    assert top_help(helptext.COLUMNS) == helptext.TOP_HELP


@pytest.mark.parametrize("columns", [None, "80", "100", "57"])
def test_help_equals_argparse_at_every_width(columns: str | None) -> None:
    env = clean_env() if columns is None else clean_env(COLUMNS=columns)
    done = reconcile("--help", env=env)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == top_help(int(columns or 80))
    assert reconcile("-h", env=env).stdout == done.stdout


@pytest.mark.parametrize("columns", [None, "100", "0", "-3", "wide", ""])
def test_the_width_is_the_one_shutil_gives_argparse(columns: str | None) -> None:
    env = clean_env() if columns is None else clean_env(COLUMNS=columns)
    done = subprocess.run([sys.executable, "-c", WIDTH_PROBE], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    ours, shutils = done.stdout.split()
    assert ours == shutils


def test_the_width_of_a_real_terminal_is_the_one_shutil_gives_argparse() -> None:
    controller, terminal = os.openpty()
    try:
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 123, 0, 0))
        subprocess.run([sys.executable, "-c", WIDTH_PROBE], env=clean_env(), stdout=terminal,
                       timeout=60, check=True)
        assert os.read(controller, 100).split() == [b"123", b"123"]
    finally:
        os.close(controller)
        os.close(terminal)


def test_other_arguments_with_help_still_go_through_argparse() -> None:
    env = clean_env()
    done = reconcile("status", "--help", env=env)
    assert done.returncode == 0
    assert done.stdout.startswith("usage: reconcile status [-h]")
    done = reconcile("--once", "--help", env=env)  # not the bare `--help`: argparse answers
    assert done.returncode == 0 and done.stdout == helptext.TOP_HELP


def test_a_command_builds_only_its_own_parser() -> None:
    parser = build_parser()
    assert parser.parse_args(["status", "-o", "json"]).output == "json"
    assert subcommands_of(parser).built() == ["status"]


def test_every_command_parses_and_lists_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    subcommands = subcommands_of(parser)
    assert list(subcommands.builders) == list(COMMANDS)
    subcommands.build_all()
    assert subcommands.built() == list(COMMANDS)
    for name in COMMANDS:
        sub = subcommands.parser_of(name)
        assert sub.prog == f"reconcile {name}"
        # the one-line help the top level lists is the command's own description
        assert f"    {name} " in helptext.TOP_HELP
        assert sub.description is not None
        assert " ".join(sub.description.split()[:3]) in " ".join(helptext.TOP_HELP.split())
        assert "--specs" in sub.format_help()


def test_an_unknown_command_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["bogus"])
    assert exit_.value.code == 2
    choices = ", ".join(repr(name) for name in COMMANDS)
    assert f"invalid choice: 'bogus' (choose from {choices})" in capsys.readouterr().err


def test_flags_of_a_lazily_built_command_mean_what_they_did() -> None:
    args = build_parser().parse_args(["-o", "json", "logs", "web.app", "-n", "5", "-f"])
    assert vars(args) == {"output": "json", "once": False, "wait": "60s", "settle": "200ms",
                          "resync": "30s", "metrics_addr": None, "metrics_textfile": None,
                          "sample_interval": None, "log_format": None, "command": "logs",
                          "target": "web.app", "previous": False, "follow": True, "lines": 5}
    args = build_parser().parse_args(["status", "--specs", "s", "-o", "json"])
    assert (args.specs, args.output) == ("s", "json")
    assert isinstance(build_parser().parse_args([]), argparse.Namespace)
