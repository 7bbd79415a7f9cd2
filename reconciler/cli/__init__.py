"""`reconcile`: the command line. Parsing (`args`), commands (`commands`) and output
(`render`) live in their own modules; this one owns the error policy.

No traceback reaches a user: expected failures print one line `reconcile: error: ...` and
exit 2; anything unexpected prints one line and how to get the details. Exit codes are in
`reconciler.cli.errors`.
"""

import os
import sys

from reconciler.cli.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PIPE, UsageError

# No `from __future__ import annotations` (its import is a measurable part of `--help`):
# the annotations below are strings. TYPE_CHECKING is not `typing`'s: importing it costs more
# than all of `--help`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

__all__ = ["main"]


def main(argv: "Sequence[str] | None" = None) -> int:
    try:
        code = _main(argv)
        if sys.stdout is not None:  # None when started with stdout closed (`>&-`)
            sys.stdout.flush()  # inside the try: a closed pipe often shows only at this flush
        if argv is None:  # the process's own command line: it ends when this returns
            _spare_the_exit()
        return code
    except BrokenPipeError:
        # The reader went away (`| head`). Python's documented recipe: point stdout at
        # /dev/null so the flush at interpreter exit cannot raise again, and end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE


def _spare_the_exit() -> None:
    """Leave every object to the exit: the interpreter's last collections would walk all of
    them (the modules' too) only to free memory the process's end frees anyway, 2-3 ms of
    `reconcile status` (issue 13). What it gives up: the `__del__` of objects left in
    reference cycles, which Python does not promise at exit anyway (the data model's
    `__del__` note); stdout is flushed above, and atexit handlers run as before. Not for a
    `main` called with its argv: tests call it in their own process, which goes on."""
    import gc

    gc.freeze()


def _no_collection() -> None:
    """A plain `status` run as the program: a short read of a few thousand objects that
    form no garbage cycles (gen-0 collections during it find next to nothing) and then
    exits, so the cycle collector is not run at all: 1-1.5 ms of CPU (issue 13). Never for
    another command (the daemon runs for months), nor for `main(argv)` (tests)."""
    import gc

    gc.disable()


def _main(argv: "Sequence[str] | None") -> int:
    given = sys.argv[1:] if argv is None else argv
    if _top_help_asked(given):
        return EXIT_OK
    from reconciler.cli.quick import quick_args

    args = quick_args(given)  # a plain `status` needs no argparse (cli/quick.py)
    if args is not None and argv is None:
        _no_collection()
    if args is None:
        from reconciler.cli.args import build_parser

        args = build_parser().parse_args(argv)
    # after parsing: `--help` and a usage error load only argparse (tests/test_cli_imports.py)
    try:
        if argv is None and args.command is None:  # `--once` or the daemon, as the program
            _load_the_controller(daemon=not args.once)
        return int(_command_of(args)(args))
    except BrokenPipeError:
        raise  # main() ends quietly
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as err:
        return _failed(err)


def _load_the_controller(*, daemon: bool) -> None:
    """Load the controller's modules with the cycle collector paused (cli/collector.py:
    ~56k objects that live as long as the process). `--once` freezes them for good, so the
    full collections of its passes no longer walk them (~30 ms of a `--once` of a thousand
    services: docs/benchmarks.md, "--once, sixth round"). The daemon does not: it freezes
    after its first pass, after one collection (daemon.py), and whatever garbage the imports
    left must still be collectable then, or it would stay for months."""
    from reconciler.cli.collector import collector_paused

    with collector_paused(freeze=not daemon):
        import reconciler.controller
        if daemon:
            import reconciler.daemon  # noqa: F401


def _command_of(args: "argparse.Namespace") -> "Callable[[argparse.Namespace], int]":
    """`validate` runs without `cli/commands.py` and what it imports (the state's reader and
    lock, sqlite3): it uses none of it, and issue 13 wants it fast (cli/validate.py).
    `status` too: it reads the state through its own lean path (cli/status.py)."""
    if args.command == "validate":
        from reconciler.cli.validate import cmd_validate

        return cmd_validate
    if args.command == "status":  # the same: reconciler/cli/status.py
        from reconciler.cli.status import cmd_status

        return cmd_status
    from reconciler.cli.commands import run

    return run


def _failed(err: Exception) -> int:
    """The error policy, importing the error types only once there is an error to sort."""
    import sqlite3

    from reconciler.settings import SettingsError
    from reconciler.state.errors import StateError
    from reconciler.state.lock import LockTimeout

    if isinstance(err, (SettingsError, StateError, LockTimeout, UsageError)):
        return _error(str(err))
    if isinstance(err, sqlite3.DatabaseError):
        from reconciler.state.reader import is_damage

        if is_damage(err):
            return _error(f"the state database is damaged ({err}). Managed processes keep "
                          "running. Run `reconcile repair` with the same --state-dir")
        return _error(f"state database: {err}")
    if isinstance(err, OSError):  # the host said no (permissions, full disk): not our bug
        return _error(str(err))
    # the last line of defence: one line, never a traceback
    if os.environ.get("RECONCILER_DEBUG"):
        raise err
    from reconciler.text import printable

    print(f"reconcile: internal error: {type(err).__name__}: {printable(str(err))} "
          "(set RECONCILER_DEBUG=1 for a traceback)", file=sys.stderr)
    return EXIT_ERROR


def _top_help_asked(argv: "Sequence[str]") -> bool:
    """`reconcile --help` at the default width: the text argparse prints there, generated
    from the parser (`cli/helptext.py`), written without importing argparse (issue 13)."""
    if list(argv) not in (["--help"], ["-h"]) or sys.stdout is None:
        return False
    from reconciler.cli import helptext

    if helptext.terminal_columns(os.environ, helptext.stdout_fd()) != helptext.COLUMNS:
        return False  # another width: argparse wraps the help for it
    sys.stdout.write(helptext.TOP_HELP)
    return True


def _error(message: str) -> int:
    from reconciler.text import printable

    print(f"reconcile: error: {printable(message)}", file=sys.stderr)
    return EXIT_ERROR
