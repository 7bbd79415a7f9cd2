"""Shared helpers for the security tests: specs on disk and the CLI as a user runs it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from reconciler import cli
from reconciler.settings import Settings

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(3600)"]


def write_spec(specs_dir: Path, name: str, text: str, mode: int = 0o644) -> Path:
    path = specs_dir / name
    path.write_text(textwrap.dedent(text))
    os.chmod(path, mode)
    return path


def run_cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    """`reconcile ARGS` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([*args, "--specs", str(settings.specs_dir),
                         "--state-dir", str(settings.state_dir)])
    return code, out.getvalue(), err.getvalue()


def status_json(settings: Settings) -> list[dict[str, Any]]:
    code, out, _ = run_cli(settings, "status", "-o", "json")
    assert code == 0
    return json.loads(out)
