"""Argument parsing: the argparse parser of `reconcile`'s flags and commands. What the flags
mean (defaults, `settings_from`, durations) is in `cli/flags.py`, re-exported here, so that a
plain `status` (parsed by `cli/quick.py`) never imports argparse.

Options shared by several commands are defined once, in parent parsers, with
`default=argparse.SUPPRESS`: a subcommand's copy then only overrides the top level's when it
is given, so `reconcile -o json status` and `reconcile status -o json` mean the same (the
same holds for `--allow-empty`). Readers use the accessors below for their defaults.
"""

from __future__ import annotations

import argparse
import os

from reconciler import __version__
from reconciler.cli.flags import (  # re-exported: the parser's defaults and the readers
    DEFAULT_SETTLE,
    LOG_FORMATS,
    OUTPUTS,
    SORT_KEYS,
    VALIDATE_FORMATS,
)

TYPE_CHECKING = False  # not `typing`: importing it costs more than all of `--help`
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEFAULT_SETTLE", "build_parser", "subcommands_of", "top_help"]

if TYPE_CHECKING:  # generic only in typeshed: at run time it takes no subscript
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction


class LazySubcommands(_SubParsers):
    """The subcommands, each parser built only when its command is given (issue 13: building
    all fifteen was ~10 ms of every command). The top-level help lists every command from
    its one-line help at once, and an unknown command names every choice, as argparse's own
    action does; `build_all` builds the rest (tests compare them all)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # argparse passes them
        self.builders: dict[str, Callable[[], object]] = {}
        # argparse reads only `in` and the names' order from it, never a parser
        self.choices = self.builders  # type: ignore[assignment]

    def add_command(self, name: str, help_text: str, build: Callable[[], object]) -> None:
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help_text))
        self.builders[name] = build

    def parser_of(self, name: str) -> argparse.ArgumentParser:
        if name not in self._name_parser_map:
            self.builders[name]()
        return self._name_parser_map[name]

    def built(self) -> list[str]:
        """The commands whose parser exists (in the order they were built)."""
        return list(self._name_parser_map)

    def build_all(self) -> None:
        for name in self.builders:
            self.parser_of(name)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        assert isinstance(values, list)  # nargs=PARSER: the command and what follows it
        self.parser_of(values[0])
        super().__call__(parser, namespace, values, option_string)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own formatter at the width it would choose itself, found without importing
    shutil (and with it zlib, bz2 and lzma: ~3 ms): argparse makes a formatter for every
    `add_argument` to check the metavar, so every command paid that import."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            from reconciler.cli.helptext import stdout_fd, terminal_columns

            width = terminal_columns(os.environ, stdout_fd()) - 2  # as argparse does
        super().__init__(prog, indent_increment, max_help_position, width)


def parent_parser() -> argparse.ArgumentParser:
    """A parser holding options other parsers take over (`parents=`)."""
    return argparse.ArgumentParser(add_help=False, formatter_class=HelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    """`args.command` names the subcommand (None: the daemon, or `--once`). Only the given
    command's parser is built (`LazySubcommands`)."""
    common = parent_parser()
    common.add_argument("--specs", metavar="DIR", default=argparse.SUPPRESS,
                        help="specs directory (default: $RECONCILER_SPECS or ./specs)")
    common.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="state directory (default: $RECONCILER_STATE_DIR or per-user)")
    common.add_argument("--rebind", action="store_true", default=argparse.SUPPRESS,
                        help="let this state dir serve this --specs dir from now on (it "
                             "refuses another specs dir than the one it serves)")
    # before or after the command: `diff --labels FILE` previews another kind of host
    common.add_argument("--revision", metavar="LABEL", default=argparse.SUPPRESS,
                        help="name the specs dir's revision (default: $RECONCILER_REVISION, "
                             "else from git when the specs dir is in a git work tree)")
    common.add_argument("--labels", metavar="FILE", default=argparse.SUPPRESS,
                        help="this host's labels for placement (YAML mapping; default: "
                             "$RECONCILER_LABELS or /etc/reconciler/labels.yaml if it exists)")
    allow_empty = parent_parser()
    allow_empty.add_argument("--allow-empty", action="store_true", default=argparse.SUPPRESS,
                             help="let an empty specs dir prune every running service")

    parser = argparse.ArgumentParser(
        prog="reconcile", parents=[common, allow_empty], formatter_class=HelpFormatter,
        description="Make this host run what the specs dir says, and keep it that way.")
    # its own action, not the parent's: set_defaults on a shared action would change the
    # subcommands' default too
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--once", action="store_true",
                        help="converge once, print a table and exit (0 ok, 1 not converged, "
                             "2 invalid specs)")
    parser.add_argument("--wait", default="60s", help="with --once: how long to wait")
    parser.add_argument("--settle", default=DEFAULT_SETTLE,
                        help="read a changed spec file once it has been quiet this long "
                             "(a half-written file is never read; 0s to read at once)")
    parser.add_argument("--resync", default="30s",
                        help="daemon: full resync interval (a safety net; events trigger passes)")
    add_service_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=LazySubcommands)
    assert isinstance(sub, LazySubcommands)
    add_commands(sub, common, allow_empty)
    return parser


def subcommands_of(parser: argparse.ArgumentParser) -> LazySubcommands:
    """The parser's `LazySubcommands` (for tests and `build_all`)."""
    found = [a for a in parser._actions if isinstance(a, LazySubcommands)]
    return found[0]


def add_commands(sub: LazySubcommands, common: argparse.ArgumentParser,
                 allow_empty: argparse.ArgumentParser) -> None:
    """Each command: its one-line help (listed at once) and how to build its parser."""
    output_parents: list[argparse.ArgumentParser] = []

    def output() -> argparse.ArgumentParser:  # built once, and only for a command that has -o
        if not output_parents:
            parent = parent_parser()
            parent.add_argument("-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS)
            output_parents.append(parent)
        return output_parents[0]

    def command(name: str, help_text: str, parents: Callable[[], list[argparse.ArgumentParser]]
                = list, configure: Callable[[argparse.ArgumentParser], object] | None = None
                ) -> None:
        def build() -> argparse.ArgumentParser:
            built = sub.add_parser(name, parents=[common, *parents()], description=help_text,
                                   formatter_class=HelpFormatter)
            if configure is not None:
                configure(built)
            return built
        sub.add_command(name, help_text, build)

    command("diff", "print the steps a pass would take, change nothing",
            lambda: [output(), allow_empty])
    command("status", "show services, jobs, phases and why", lambda: [output()])
    command("validate", "check specs: file:line:column: message", lambda: [output()],
            configure_validate)
    command("suspend", "leave a service alone: observed, never started, stopped, "
                       "restarted or pruned, until `resume`", configure=configure_service)
    command("resume", "act on a suspended service again (a pass runs at once)",
            configure=configure_service)
    command("schema", "print the JSON Schema of the spec format")
    command("down", "stop a service or one action (all when none is named)",
            configure=lambda p: p.add_argument("target", nargs="?", metavar="SERVICE[.ACTION]"))
    command("restart", "stop a job and start it again now (counts in restart_count)",
            configure=lambda p: p.add_argument("target", metavar="SERVICE[.ACTION]"))
    command("events", "what was killed, cleaned, spawned, adopted, and why", lambda: [output()],
            configure_events)
    command("logs", "show a job's log", configure=configure_logs)
    command("repair", "rebuild the jobs from run/ after damage to state.db")
    command("info", "the controller: daemon, last pass, source revision, spec files",
            lambda: [output()])
    # `top` and `stats SERVICE[.ACTION]` (DESIGN §8.4): they read the daemon's samples
    command("top", "live table of the running jobs' resources (q quits, c/m sort)",
            configure=configure_top)
    command("stats", "a job's resource history: sparklines, last values, anomalies",
            lambda: [output()], configure_stats)


def configure_validate(validate: argparse.ArgumentParser) -> None:
    validate.add_argument("dir", nargs="?", help="specs dir to check")
    validate.add_argument("--format", choices=VALIDATE_FORMATS, default="text",
                          help="github: GitHub Actions error annotations on stdout")


def configure_service(parser: argparse.ArgumentParser) -> None:
    """`suspend` / `resume SERVICE` (DESIGN §8.2)."""
    parser.add_argument("service", metavar="SERVICE")


def configure_events(events: argparse.ArgumentParser) -> None:
    events.add_argument("service", nargs="?")
    events.add_argument("-n", "--limit", type=int, default=50)


def configure_logs(log_cmd: argparse.ArgumentParser) -> None:
    log_cmd.add_argument("target", metavar="SERVICE[.ACTION]")
    log_cmd.add_argument("--previous", action="store_true", help="the previous run's log")
    log_cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    log_cmd.add_argument("-n", "--lines", type=int, default=100)


def configure_top(top: argparse.ArgumentParser) -> None:
    top.add_argument("--sort", choices=SORT_KEYS, default="cpu",
                     help="highest first: cpu (default) or rss; keys c and m switch live")
    top.add_argument("--interval", default="2s",
                     help="refresh every this long (it re-reads the state db, never /proc)")


def configure_stats(stats: argparse.ArgumentParser) -> None:
    stats.add_argument("target", metavar="SERVICE[.ACTION]")
    stats.add_argument("--since", default="1h",
                       help="how far back (samples are kept 1h by default)")


def add_service_flags(parser: argparse.ArgumentParser) -> None:
    """The daemon's flags for running as a service (DESIGN §8.3)."""
    parser.add_argument("--metrics-addr", metavar="HOST:PORT", default=None,
                        help="daemon: serve /metrics and /healthz here (PORT alone: "
                             "127.0.0.1; a non-loopback host only when written here; "
                             "default: $RECONCILER_METRICS_ADDR, loopback only, else off)")
    parser.add_argument("--metrics-textfile", metavar="PATH", default=None,
                        help="with --once: write the metrics to PATH (atomically) for "
                             "node_exporter's textfile collector")
    parser.add_argument("--sample-interval", default=None, metavar="DURATION",
                        help="daemon: sample every running job's resources this often "
                             "(default: $RECONCILER_SAMPLE_INTERVAL or 5s; at least 100ms)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                        help="daemon log lines: text, json, or journal (<N> priority "
                             "prefixes; the default when stderr is the journal)")


def top_help(columns: int) -> str:
    """What `reconcile --help` prints on a terminal `columns` wide (argparse wraps at the
    terminal's width less 2); `cli/helptext.py` holds it for the default width."""
    parser = build_parser()
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=columns - 2)
    return parser.format_help()

