"""`reconcile validate` start-up (issue 13: 200 services in ≤ 250 ms): what it loads and that
the cuts made for it leave its verdicts alone. Timings are measured by `python -m benchmarks
--scenario cli`, not here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
