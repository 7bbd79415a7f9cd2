"""What the daemon's process loads (issue 13, daemon RSS): every module a long-running process
imports stays resident for good, so the daemon's path must not import what only a bad spec or
another command needs. A fresh interpreter imports the daemon's modules, loads good specs and
lists `sys.modules` (docs/benchmarks.md, "Issue 13, daemon RSS, third round")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_reconcile import write_sleeper, write_spec

REPO = Path(__file__).resolve().parent.parent
# the modules `run_daemon` imports, then one load of the specs dir, as the first pass does
PROBE = """
import json, sys
from pathlib import Path
import reconciler.cli.commands, reconciler.controller, reconciler.daemon
from reconciler.spec.load import load_specs
result = load_specs(Path(sys.argv[1]))
print(json.dumps({"errors": [str(e) for e in result.errors], "modules": sorted(sys.modules)}))
"""


def daemon_modules(specs_dir: Path) -> tuple[list[str], set[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", PROBE, str(specs_dir)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    return result["errors"], set(result["modules"])


def test_good_specs_do_not_load_the_did_you_mean_matcher(specs_dir: Path) -> None:
    """difflib (~0.2 MiB resident) serves only the hint of a misspelled key."""
    write_sleeper(specs_dir, "web")
    errors, modules = daemon_modules(specs_dir)
    assert errors == []
    assert "difflib" not in modules


def test_a_misspelled_key_still_gets_its_hint(specs_dir: Path) -> None:
    write_spec(specs_dir, "web.yaml", """\
    name: web
    actions:
      - {name: main, process: true, cmd: [sleep, "60"], limits: {nofiles: 10}}
    """)
    errors, modules = daemon_modules(specs_dir)
    assert any("did you mean 'nofile'?" in error for error in errors), errors
    assert "difflib" in modules
