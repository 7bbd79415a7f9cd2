"""`reconcile validate`: the one command that needs the spec model and nothing of the state.

Its own module so `cli/__init__.py` can run it without importing `cli/commands.py`, whose
imports (the state reader, the lock, sqlite3, /proc parsers) `validate` never uses: issue 13
wants 200 services validated in ≤ 250 ms, and a process's start-up is mostly imports.
"""

from __future__ import annotations

import atexit
import gc
import sys
from contextlib import contextmanager

from reconciler.cli import render
from reconciler.cli.errors import EXIT_ERROR, EXIT_OK, UsageError
from reconciler.cli.flags import specs_flag, state_dir_flag
from reconciler.settings import specs_dir_of, state_dir_of

TYPE_CHECKING = False  # not `typing`'s, as in cli/commands.py
if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Sequence


def cmd_validate(args: argparse.Namespace) -> int:
    """Needs no Settings: it never writes, so the default state dir is fine even in tests."""
    specs_dir = specs_dir_of(args.dir or specs_flag(args))
    state_dir = state_dir_of(state_dir_flag(args)).absolute()
    with _no_cycle_collection():
        from reconciler.spec.load import load_specs  # pydantic and yaml: only when validating

        loaded = load_specs(specs_dir, state_dir=state_dir)
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


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """Importing pydantic and building the spec models allocates enough objects to run the
    cycle collector ~80 times (~10 ms, 6% of `validate`), to find next to nothing: what a
    load leaves behind is freed by reference counting. Afterwards the survivors join the
    oldest generation (`freeze` then `unfreeze`: the young generation's count starts again
    from zero), as if they had survived those collections; else re-enabling would run one
    young collection over all of them at the next allocation, costing back what was saved."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()
        atexit.unregister(_freeze_at_exit)  # once, however often a process validates
        atexit.register(_freeze_at_exit)


def _freeze_at_exit() -> None:
    """At exit the interpreter collects cycles over every object still alive (the models,
    pydantic's schemas: ~40k objects): ~20-50 ms of `validate`, a sixth of it, to free memory
    the process is about to give back anyway. Frozen objects are skipped, so freeze them:
    at exit only (atexit runs before those collections), so a process that runs `validate`
    and goes on (a test) keeps its collector as it was until then."""
    gc.freeze()
