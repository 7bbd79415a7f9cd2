"""`reconcile validate` start-up (issue 13: 200 services in ≤ 250 ms): what it loads and that
the cuts made for it leave its verdicts alone. Timings are measured by `python -m benchmarks
--scenario cli`, not here."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.cli.errors import EXIT_ERROR
from tests.test_cli_imports import REPO, loaded
from tests.test_reconcile import write_sleeper


def test_validate_loads_no_plugin_machinery(specs_dir: Path) -> None:
    """pydantic's plugin loader imports importlib.metadata (email, zipfile, csv: 25–40 ms)
    at the first model; spec/noplugins.py replaces it, and the specs still validate."""
    write_sleeper(specs_dir, "web")
    code, modules = loaded("validate", "--specs", str(specs_dir))
    assert code == 0
    assert "pydantic" in modules and "reconciler.spec.model" in modules
    assert not {"importlib.metadata", "email", "zipfile", "csv"} & modules


_PLUGIN_PROBE = """
import json, sys
from reconciler.spec import model
from pydantic.plugin import _schema_validator
validator = model.Service.__pydantic_validator__
print(json.dumps({"plain": type(validator).__name__ == "SchemaValidator",
                  "loader": sys.modules["pydantic.plugin._loader"].__doc__}))
"""


def test_models_are_built_with_no_plugins_and_plain_validators() -> None:
    """Without plugins pydantic builds the plain `SchemaValidator`, as when none is
    installed: the loader pydantic imports is ours and finds none."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _PLUGIN_PROBE], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout)
    assert result["plain"] is True
    assert "reconciler.spec.noplugins" in result["loader"]


def test_validate_runs_without_the_state_machinery(specs_dir: Path) -> None:
    """cli/__init__.py runs `validate` from cli/validate.py: not cli/commands.py with the
    state's reader, lock and records, sqlite3 or the /proc parsers, none of which it uses."""
    write_sleeper(specs_dir, "web")
    code, modules = loaded("validate", "--specs", str(specs_dir))
    assert code == 0
    assert "reconciler.cli.validate" in modules  # what ran: the check below is not vacuous
    assert not {"reconciler.cli.commands", "reconciler.state.reader", "reconciler.state.lock",
                "reconciler.state.records", "reconciler.host.procfs", "sqlite3"} & modules


def test_validate_usage_error_is_still_one_line(specs_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Its errors go through the same policy as every command's, now sorted after the fact."""
    write_sleeper(specs_dir, "web")
    code = cli.main(["validate", "--specs", str(specs_dir), "--format", "github", "-o", "json"])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert err == "reconcile: error: --format github and -o json: choose one\n"


def test_state_errors_of_other_commands_are_still_one_line(
        tmp_path: Path, specs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The error types are imported only once an error is raised: what the host says to
    `status` (a state dir under a file) is still one line, exit 2, no traceback."""
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    code = cli.main(["status", "--specs", str(specs_dir), "--state-dir", str(blocker / "s")])
    err = capsys.readouterr().err
    assert code == EXIT_ERROR
    assert err.startswith("reconcile: error: ") and err.count("\n") == 1, err


def test_validate_leaves_the_cycle_collector_as_it_found_it(
        specs_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The collector is off while the spec machinery is imported and the specs loaded; the
    process (here: pytest's) gets it back as it was, on or off, valid specs or not."""
    write_sleeper(specs_dir, "web")
    (specs_dir / "bad.yaml").write_text("name: bad\nactions: []\n")
    assert gc.isenabled()
    try:
        assert cli.main(["validate", "--specs", str(specs_dir)]) == EXIT_ERROR
        assert gc.isenabled()
        gc.disable()
        assert cli.main(["validate", "--specs", str(specs_dir)]) == EXIT_ERROR
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert "bad.yaml:2:10: actions: must not be empty" in capsys.readouterr().err


_EXIT_PROBE = """
import atexit, gc, sys
# registered first, so it runs last: after validate's own exit handler
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
from reconciler.cli import main
code = main(sys.argv[1:])
print("frozen before exit:", gc.get_freeze_count() > 0, gc.isenabled())
"""


def test_validate_freezes_what_is_alive_only_at_exit(specs_dir: Path) -> None:
    """The interpreter's last cycle collections skip frozen objects: validate freezes them
    in an exit handler, not before, so its caller's collector is untouched while it runs."""
    write_sleeper(specs_dir, "web")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _EXIT_PROBE, "validate", "--specs",
                           str(specs_dir)], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.splitlines()[-2:] == ["frozen before exit: False True",
                                             "frozen at exit: True"], done.stdout
