"""The pure core is pure by its imports, not by convention.

`plan` must be a function of its arguments: if importing it loads a module that talks to the
host (processes, sockets, SQLite, the file watcher, the scheduler, /proc readers), sooner or
later some code path uses it. Checked in a fresh interpreter, so what other tests imported
does not hide a regression.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("subprocess", "socket", "select", "psutil", "sqlite3", "sqlite_utils",
             "watchfiles", "apscheduler", "yaml")
PURE = ("reconciler.plan", "reconciler.desired", "reconciler.observed", "reconciler.identity",
        "reconciler.state.records", "reconciler.backoff", "reconciler.environment",
        "reconciler.anomalies")

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


ROOT = Path(__file__).resolve().parents[1]


def _source(module: str) -> Path:
    base = ROOT.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports(module: str) -> set[str]:
    """Every module `module`'s source imports at run time (`if TYPE_CHECKING:` blocks are
    skipped: they never run), wherever in the file the import statement is."""
    tree = ast.parse(_source(module).read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if _source(f"{node.module}.{alias.name}").exists())
    return found


def _imported_by_our_code(module: str) -> set[str]:
    """What our modules import, following our own imports from `module` (the sys.modules
    check above cannot see a standard module that pydantic already loaded)."""
    seen, todo, outside = set(), [module], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in _imports(current):
            if name.split(".")[0] == "reconciler":
                todo.append(name)
            else:
                outside.add(name)
    return seen | outside


@pytest.mark.parametrize("module", PURE)
def test_pure_module_source_imports_no_io_module(module: str) -> None:
    imported = _imported_by_our_code(module)
    io = sorted(m for m in imported if m.split(".")[0] in FORBIDDEN or m.startswith(
        ("reconciler.host", "reconciler.state.store", "reconciler.spec.load")) or m in (
        "reconciler.logs", "reconciler.settings"))
    assert io == [], f"{module} imports {io}"
    ours = [m for m in imported if m.startswith("reconciler") and _source(m).exists()]
    globals_read = sorted(m for m in ours
                          if re.search(r"os\.environ|getenv\(", _source(m).read_text()))
    assert globals_read == [], f"{module} reaches modules that read the environment"


def test_source_walk_sees_an_io_import() -> None:
    assert "socket" in _imported_by_our_code("reconciler.host.probes")
    assert "reconciler.host.procfs" in _imported_by_our_code("reconciler.host.identity")


def test_probe_sees_an_io_import() -> None:
    """The check can fail: a module that does I/O is caught."""
    loaded = _modules_loaded_by("reconciler.host.spawn")
    assert "subprocess" in loaded and "reconciler.host.procfs" in loaded
