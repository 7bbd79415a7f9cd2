"""The pure core is pure by its imports, not by convention.

`plan` must be a function of its arguments: if importing it loads a module that talks to the
host (processes, sockets, SQLite, the file watcher, the scheduler, /proc readers), sooner or
later some code path uses it. Checked in a fresh interpreter, so what other tests imported
does not hide a regression.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = ("subprocess", "socket", "select", "psutil", "sqlite3", "sqlite_utils",
             "watchfiles", "apscheduler", "yaml")
PURE = ("reconciler.plan", "reconciler.desired", "reconciler.observed", "reconciler.identity",
        "reconciler.state.records", "reconciler.backoff", "reconciler.environment")

# pydantic's plugin loader imports importlib.metadata, which imports email and with it socket
# and select, as soon as any model class is built: loaded by the library, never used by us.
# The baseline is what that costs, so the test sees only what our modules add.
_PROBE = """
import json, sys
import pydantic
class _Probe(pydantic.BaseModel):
    x: int = 0
baseline = set(sys.modules)
import {module}
print(json.dumps(sorted(set(sys.modules) - baseline)))
"""


def _modules_loaded_by(module: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(module=module)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    loaded: list[str] = json.loads(out)
    return loaded


@pytest.mark.parametrize("module", PURE)
def test_pure_module_loads_no_io_module(module: str) -> None:
    loaded = _modules_loaded_by(module)
    assert module in loaded  # the probe really imported it
    io = [m for m in loaded if m.split(".")[0] in FORBIDDEN]
    host = [m for m in loaded if m.startswith(("reconciler.host", "reconciler.state.store",
                                               "reconciler.spec.load"))]
    assert io == [] and host == [], f"importing {module} loads {io + host}"


def test_probe_sees_an_io_import() -> None:
    """The check can fail: a module that does I/O is caught."""
    loaded = _modules_loaded_by("reconciler.host.spawn")
    assert "subprocess" in loaded and "reconciler.host.procfs" in loaded
