"""What each command loads (issue 13): start-up is mostly imports, so a command must load
only what it uses. A fresh interpreter runs the command and lists `sys.modules`; the timing
goals themselves are measured by `python -m benchmarks --scenario cli`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.settings import Settings
from tests.test_reconcile import write_sleeper

REPO = Path(__file__).resolve().parent.parent
# runs `main(argv)` in a fresh interpreter and prints the top-level packages it loaded
PROBE = """
import contextlib, io, json, sys
from reconciler.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""
# the daemon's, the spec model's and the writer's libraries: tens of ms each to import
HEAVY = ("pydantic", "pydantic_core", "apscheduler", "watchfiles", "prometheus_client", "yaml",
         "sqlite_utils", "psutil")


def loaded(*argv: str) -> tuple[int, set[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # COLUMNS: the help's width is the default one (stdout is a pipe)
    for name in ("RECONCILER_SPECS", "RECONCILER_STATE_DIR", "RECONCILER_LABELS", "COLUMNS"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    return result["code"], set(result["modules"])


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_help_loads_nothing_but_its_text() -> None:
    """The bare `--help` at the default width is served from cli/helptext.py: not even
    argparse (with re and enum, more than issue 13's 1.5× of `python -c pass`)."""
    code, modules = loaded("--help")
    assert code == 0
    assert heavy_in(modules) == []
    ours = {m for m in modules if m.startswith("reconciler")}
    assert ours == {"reconciler", "reconciler.cli", "reconciler.cli.errors",
                    "reconciler.cli.helptext"}
    assert not {"argparse", "shutil", "typing"} & modules  # (the probe itself loads re)
    assert "__future__" not in modules  # its import alone is a visible part of `--help`


def test_a_command_help_loads_argparse_and_nothing_of_ours_beyond_the_parser() -> None:
    code, modules = loaded("status", "--help")
    assert code == 0
    assert heavy_in(modules) == []
    ours = {m for m in modules if m.startswith("reconciler")}
    assert ours == {"reconciler", "reconciler.cli", "reconciler.cli.args",
                    "reconciler.cli.errors", "reconciler.cli.helptext",  # its width
                    "reconciler.cli.quick",  # which found it is not a plain `status`
                    "reconciler.cli.flags"}  # the parser's defaults
    # each costs ms of --help (shutil: argparse's formatter would import it for the width)
    assert not {"typing", "sqlite3", "shutil"} & modules


# what `status` used to load and does not use: `stats`' and `top`'s code, `logging` (only the
# daemon and a store that has a warning to give log), `platform` (os.uname gives the `os`
# label), the duration parser (for `--settle`'s default), each a few ms of its start
NOT_FOR_STATUS = ("reconciler.cli.resources", "reconciler.cli.top", "logging", "platform",
                  "reconciler.spec.units", "reconciler.logformat")


def test_status_of_running_jobs_loads_no_heavy_library(settings: Settings,
                                                      reconciler: Reconciler) -> None:
    write_sleeper(settings.specs_dir, "web")
    reconciler.converge(10.0)
    flags = ("--specs", str(settings.specs_dir), "--state-dir", str(settings.state_dir))
    for argv in (("status", *flags), ("status", "-o", "json", *flags), ("events", *flags),
                 ("info", *flags)):
        code, modules = loaded(*argv)
        assert code == 0, argv
        assert heavy_in(modules) == [], argv
        assert "reconciler.plan" not in modules and "reconciler.daemon" not in modules
        assert sorted(set(NOT_FOR_STATUS) & modules) == [], argv
        if argv[0] == "status":  # parsed by cli/quick.py: argparse, gettext, locale not loaded
            assert not {"argparse", "gettext", "locale", "reconciler.cli.args"} & modules, argv
            assert "string" not in modules, argv  # procfs's hex digits: it compiles a regex


# `status` runs on its own lean path (cli/status.py, state/reader.py): none of these, each a
# few ms of it (dataclasses brings inspect, ast and dis; pathlib brings urllib.parse)
NOT_ON_STATUS_PATH = ("dataclasses", "inspect", "ast", "dis", "pathlib", "urllib", "typing",
                      "re", "enum", "logging", "argparse", "pydantic", "yaml", "sqlite_utils",
                      "reconciler.settings", "reconciler.state.store", "reconciler.state.records",
                      "reconciler.cli.commands", "reconciler.cli.validate",
                      # fourth round: procfs' dir fd is no contextmanager, the daemon lock is
                      # read without fcntl (only taking a lock needs it), the boot id is no
                      # text file (its codec is a module)
                      "contextlib", "fcntl", "encodings.ascii", "reconciler.files",
                      "reconciler.timing",
                      # the reader opens the database through sqlite3's C module: the
                      # package's dbapi2 imports datetime for adapters a reader never uses
                      "sqlite3", "datetime")
# imports nothing itself (unlike PROBE, which loads json and re): what status loads, exactly
BARE_PROBE = """
import sys
from reconciler.cli import main
code = main(sys.argv[1:])
sys.stderr.write("\\nMODULES " + str(code) + " " + " ".join(sorted(sys.modules)) + "\\n")
"""


def status_modules(*argv: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("RECONCILER_SPECS", "RECONCILER_STATE_DIR", "RECONCILER_LABELS"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", BARE_PROBE, "status", *argv], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    code, *modules = done.stderr.rsplit("MODULES ", 1)[1].split()
    assert code == "0" and "s0" in done.stdout  # it did show the job
    return set(modules)


def test_status_loads_only_what_it_shows(settings: Settings, reconciler: Reconciler) -> None:
    write_sleeper(settings.specs_dir, "s0")
    reconciler.converge(10.0)
    flags = ("--specs", str(settings.specs_dir), "--state-dir", str(settings.state_dir))
    table = status_modules(*flags)
    as_json = status_modules("-o", "json", *flags)
    json_brings = {"re", "enum"}  # json's decoder compiles its patterns at import
    for modules, allowed in ((table, set()), (as_json, json_brings)):
        forbidden = set(NOT_ON_STATUS_PATH) - allowed  # a package, or a module by its name
        assert sorted(m for m in modules if m in forbidden or m.split(".")[0] in forbidden
                      ) == []
        assert "_sqlite3" in modules and "reconciler.cli.status" in modules  # not vacuous
    assert "json" not in table  # the table decodes no JSON column and writes no JSON
    assert "json" in as_json


def test_stats_still_loads_what_status_leaves_out(settings: Settings,
                                                  reconciler: Reconciler) -> None:
    """The other side of the check above: the modules it forbids are the ones `stats`
    imports where it runs, so their absence from `status` is not a probe that sees nothing."""
    write_sleeper(settings.specs_dir, "web")
    reconciler.converge(10.0)
    code, modules = loaded("stats", "web", "--specs", str(settings.specs_dir),
                           "--state-dir", str(settings.state_dir))
    assert code == 0
    assert "reconciler.cli.resources" in modules and "reconciler.cli.commands" in modules


def test_settle_default_is_the_settings_default() -> None:
    """`settings_from` skips parsing `--settle`'s default (so no command imports the
    units parser for it): that is right only while both say the same."""
    from dataclasses import fields

    from reconciler.cli.flags import DEFAULT_SETTLE
    from reconciler.spec.units import parse_duration

    default = next(f.default for f in fields(Settings) if f.name == "settle")
    assert parse_duration(DEFAULT_SETTLE) == default


@pytest.mark.parametrize("argv", [("validate",), ("schema",)])
def test_validate_and_schema_load_the_spec_model_but_not_the_daemon(
        specs_dir: Path, argv: tuple[str, ...]) -> None:
    write_sleeper(specs_dir, "web")
    code, modules = loaded(*argv, "--specs", str(specs_dir))
    assert code == 0
    assert "pydantic" in modules  # it is what validates: the check above is not vacuous
    assert not {"apscheduler", "watchfiles", "prometheus_client", "sqlite_utils",
                "psutil"} & {m.split(".")[0] for m in modules}
    assert "reconciler.daemon" not in modules and "reconciler.controller" not in modules


def test_the_program_leaves_its_objects_to_the_exit_and_a_test_process_does_not(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`main()` run as the program freezes the collector's objects once its output is out
    (the shutdown's collections walked them all: 2-3 ms of `status`); `main(argv)`, which
    tests call in their own process, must leave it alone."""
    import gc

    from reconciler.cli import main

    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: sys.stderr.write(f'FROZEN {gc.get_freeze_count()}'))\n"
             "from reconciler.cli import main\n"
             "sys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe, "--help"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    assert "usage: reconcile" in done.stdout
    assert int(done.stderr.rsplit("FROZEN ", 1)[1]) > 0
    before = gc.get_freeze_count()
    assert main(["--help"]) == 0
    assert gc.get_freeze_count() == before
    assert "usage: reconcile" in capsys.readouterr().out


def test_only_a_plain_status_run_as_the_program_skips_the_collector(
        specs_dir: Path, state_dir: Path) -> None:
    """A plain `status` (parsed by cli/quick.py) runs without cycle collection, as the
    program only; any other command keeps the collector (the daemon runs for months)."""
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: sys.stderr.write(f'ENABLED {gc.isenabled()}'))\n"
             "from reconciler.cli import main\n"
             "sys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    flags = ["--specs", str(specs_dir), "--state-dir", str(state_dir)]
    for argv, enabled in ((["status", *flags], "False"), (["status", "--help"], "True"),
                          (["validate", "--specs", str(specs_dir)], "True")):
        done = subprocess.run([sys.executable, "-c", probe, *argv], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.stderr.rsplit("ENABLED ", 1)[1] == enabled, argv


def test_once_as_the_program_freezes_the_controller_before_its_first_pass(
        specs_dir: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--once` run as the program loads the controller's modules with the collector off and
    freezes them before the first pass, which runs with the collector on (cli/__init__.py,
    `_load_the_controller`; the daemon freezes after its first pass instead). `main(argv)`
    in a test's process freezes nothing."""
    import gc

    from reconciler.cli import main

    (specs_dir / "one.yaml").write_text('name: one\nactions:\n  - {name: hi, cmd: ["true"]}\n')
    flags = ["--specs", str(specs_dir), "--state-dir", str(state_dir), "--once", "--wait", "30s"]
    probe = ("import gc, sys\n"
             "from reconciler.controller import Reconciler\n"
             "reconcile = Reconciler.reconcile\n"
             "def seen(self, *args, **kwargs):\n"
             "    sys.stderr.write(f'PASS {gc.get_freeze_count()} {gc.isenabled()}\\n')\n"
             "    return reconcile(self, *args, **kwargs)\n"
             "Reconciler.reconcile = seen\n"
             "from reconciler.cli import main\n"
             "sys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe, *flags], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    frozen, enabled = done.stderr.split("PASS ", 1)[1].split()[:2]
    assert int(frozen) > 10_000 and enabled == "True"

    seen: list[tuple[int, bool]] = []
    reconcile = Reconciler.reconcile

    def spy(self: Reconciler, *args: object, **kwargs: object) -> object:
        seen.append((gc.get_freeze_count(), gc.isenabled()))
        return reconcile(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Reconciler, "reconcile", spy)
    before = gc.get_freeze_count()
    assert main(flags) == 0
    assert seen and all(count == before for count, _ in seen)
