"""`reconcile validate`: the one command that needs the spec model and nothing of the state.

Its own module so `cli/__init__.py` can run it without importing `cli/commands.py`, whose
imports (the state reader, the lock, sqlite3, /proc parsers) `validate` never uses: issue 13
wants 200 services validated in ≤ 250 ms, and a process's start-up is mostly imports.
"""

from __future__ import annotations

import sys

from reconciler.cli import render
from reconciler.cli.collector import collector_paused, freeze_at_exit
from reconciler.cli.errors import EXIT_ERROR, EXIT_OK, UsageError
from reconciler.cli.flags import specs_flag, state_dir_flag
from reconciler.settings import specs_dir_of, state_dir_of

TYPE_CHECKING = False  # not `typing`'s, as in cli/commands.py
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence


def cmd_validate(args: argparse.Namespace) -> int:
    """Needs no Settings: it never writes, so the default state dir is fine even in tests."""
    specs_dir = specs_dir_of(args.dir or specs_flag(args))
    state_dir = state_dir_of(state_dir_flag(args)).absolute()
    with collector_paused(freeze=False):
        from reconciler.spec.load import load_specs  # pydantic and yaml: only when validating

        loaded = load_specs(specs_dir, state_dir=state_dir)
    freeze_at_exit()
    if args.format == "github":
        if args.output == "json":
            raise UsageError("--format github and -o json: choose one")
        _emit(render.github_annotations(loaded))
        print(render.validation_summary(loaded) if loaded.ok else
              render.invalid_summary(loaded), file=sys.stderr)
    elif args.output == "json":
        _emit(render.validation_json(loaded))
    else:
        render.print_problems(loaded, None)
        if loaded.ok:
            _emit(render.validation_summary(loaded))
        else:
            print(render.invalid_summary(loaded), file=sys.stderr)
    return EXIT_OK if loaded.ok else EXIT_ERROR


def _emit(lines: str | Sequence[str]) -> None:  # cli/commands.py's `emit`, without importing it
    for line in [lines] if isinstance(lines, str) else lines:
        print(line)
