"""Argument parsing: the flags and commands of `reconcile`, and what they turn into.

Options shared by several commands are defined once, in parent parsers, with
`default=argparse.SUPPRESS`: a subcommand's copy then only overrides the top level's when it
is given, so `reconcile -o json status` and `reconcile status -o json` mean the same (the
same holds for `--allow-empty`). Readers use the accessors below for their defaults.
"""

from __future__ import annotations

import argparse

from reconciler import __version__
from reconciler.cli.errors import UsageError

TYPE_CHECKING = False  # not `typing`: importing it costs more than all of `--help`
if TYPE_CHECKING:  # what the flags mean is imported by the readers below: `--help` needs none
    from collections.abc import Callable, Mapping

    from reconciler.settings import Settings

# The commands whose passes place services by the labels (None: the daemon and --once): a
# broken labels file stops them before any pass, and only them.
PLACING_COMMANDS = (None, "diff", "resume")
MAX_SETTLE_SECONDS = 60.0  # longer would mean an edit is not applied for minutes
DEFAULT_SAMPLE_SECONDS = 5.0  # = resources.DEFAULT_INTERVAL_SECONDS (kept out of --help)
MIN_RESYNC_SECONDS = 1.0  # a safety net, not a poll: `--resync 1ms` busy-looped the daemon
OUTPUTS = ("table", "json")
VALIDATE_FORMATS = ("text", "github")
LOG_FORMATS = ("text", "json", "journal")  # logformat.FORMATS, without importing logging setup
METRICS_ADDR_ENV = "RECONCILER_METRICS_ADDR"
SORT_KEYS = ("cpu", "rss")  # resources.SORT_KEYS, without importing the renderer here
MIN_TOP_INTERVAL = 0.1  # seconds: faster only burns the CPU it is meant to show


def build_parser() -> argparse.ArgumentParser:
    """`args.command` names the subcommand (None: the daemon, or `--once`)."""
    common = argparse.ArgumentParser(add_help=False)
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
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS)
    allow_empty = argparse.ArgumentParser(add_help=False)
    allow_empty.add_argument("--allow-empty", action="store_true", default=argparse.SUPPRESS,
                             help="let an empty specs dir prune every running service")

    parser = argparse.ArgumentParser(
        prog="reconcile", parents=[common, allow_empty],
        description="Make this host run what the specs dir says, and keep it that way.")
    # its own action, not the parent's: set_defaults on a shared action would change the
    # subcommands' default too
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--once", action="store_true",
                        help="converge once, print a table and exit (0 ok, 1 not converged, "
                             "2 invalid specs)")
    parser.add_argument("--wait", default="60s", help="with --once: how long to wait")
    parser.add_argument("--settle", default="200ms",
                        help="read a changed spec file once it has been quiet this long "
                             "(a half-written file is never read; 0s to read at once)")
    parser.add_argument("--resync", default="30s",
                        help="daemon: full resync interval (a safety net; events trigger passes)")
    add_service_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str, *parents: argparse.ArgumentParser
            ) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common, *parents], help=help_text,
                              description=help_text)

    add("diff", "print the steps a pass would take, change nothing", output, allow_empty)
    add("status", "show services, jobs, phases and why", output)
    validate = add("validate", "check specs: file:line:column: message", output)
    validate.add_argument("dir", nargs="?", help="specs dir to check")
    validate.add_argument("--format", choices=VALIDATE_FORMATS, default="text",
                          help="github: GitHub Actions error annotations on stdout")
    add_suspend_commands(add)
    add("schema", "print the JSON Schema of the spec format")
    down = add("down", "stop a service or one action (all when none is named)")
    down.add_argument("target", nargs="?", metavar="SERVICE[.ACTION]")
    restart = add("restart", "stop a job and start it again now (counts in restart_count)")
    restart.add_argument("target", metavar="SERVICE[.ACTION]")
    events = add("events", "what was killed, cleaned, spawned, adopted, and why", output)
    events.add_argument("service", nargs="?")
    events.add_argument("-n", "--limit", type=int, default=50)
    log_cmd = add("logs", "show a job's log")
    log_cmd.add_argument("target", metavar="SERVICE[.ACTION]")
    log_cmd.add_argument("--previous", action="store_true", help="the previous run's log")
    log_cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    log_cmd.add_argument("-n", "--lines", type=int, default=100)
    add("repair", "rebuild the jobs from run/ after damage to state.db")
    add("info", "the controller: daemon, last pass, source revision, spec files", output)
    add_resource_commands(add, output)
    return parser


def add_resource_commands(add: Callable[..., argparse.ArgumentParser],
                          output: argparse.ArgumentParser) -> None:
    """`top` and `stats SERVICE[.ACTION]` (DESIGN §8.4): they read the daemon's samples."""
    top = add("top", "live table of the running jobs' resources (q quits, c/m sort)")
    top.add_argument("--sort", choices=SORT_KEYS, default="cpu",
                     help="highest first: cpu (default) or rss; keys c and m switch live")
    top.add_argument("--interval", default="2s",
                     help="refresh every this long (it re-reads the state db, never /proc)")
    stats = add("stats", "a job's resource history: sparklines, last values, anomalies",
                output)
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


def add_suspend_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """`suspend` / `resume SERVICE` (DESIGN §8.2)."""
    suspend = add("suspend", "leave a service alone: observed, never started, stopped, "
                             "restarted or pruned, until `resume`")
    suspend.add_argument("service", metavar="SERVICE")
    resume = add("resume", "act on a suspended service again (a pass runs at once)")
    resume.add_argument("service", metavar="SERVICE")


# --- what the flags mean ------------------------------------------------------------------


def settings_from(args: argparse.Namespace) -> Settings:
    from dataclasses import replace

    from reconciler.host.labels import (
        DEFAULT_LABELS_FILE,
        LabelsError,
        automatic_labels,
        host_labels,
        labels_file_of,
    )
    from reconciler.settings import resolve

    settings = resolve(specs_flag(args), state_dir_flag(args),
                       revision=getattr(args, "revision", None))
    labels_file = labels_file_of(getattr(args, "labels", None))
    try:
        labels = host_labels(labels_file)
    except LabelsError as err:
        if getattr(args, "command", None) in PLACING_COMMANDS:
            raise UsageError(str(err)) from None
        # status, down, logs, info, …: a broken labels file must not keep an operator from
        # looking or stopping things (`info` shows the labels the last pass placed by)
        labels = automatic_labels()
    # the default file is watched even while it does not exist: created later, it counts
    settings = replace(settings, labels=tuple(sorted(labels.items())),
                       labels_file=labels_file or DEFAULT_LABELS_FILE)
    settle = getattr(args, "settle", None)
    if settle is None:
        return settings
    seconds = duration(settle, "--settle")
    if seconds > MAX_SETTLE_SECONDS:
        raise UsageError(f"--settle: at most {MAX_SETTLE_SECONDS:g}s")
    return replace(settings, settle=seconds)


def specs_flag(args: argparse.Namespace) -> str | None:
    value: str | None = getattr(args, "specs", None)
    return value


def state_dir_flag(args: argparse.Namespace) -> str | None:
    value: str | None = getattr(args, "state_dir", None)
    return value


def rebind_of(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "rebind", False))


def allow_empty_of(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "allow_empty", False))


MIN_SAMPLE_SECONDS = 0.1
MAX_SAMPLE_SECONDS = 3600.0
SAMPLE_INTERVAL_ENV = "RECONCILER_SAMPLE_INTERVAL"


def sample_interval_of(args: argparse.Namespace, environ: Mapping[str, str]) -> float:
    """`--sample-interval`, else `$RECONCILER_SAMPLE_INTERVAL`, else 5 s; bounded."""
    text, flag = args.sample_interval, "--sample-interval"
    if text is None:
        text, flag = environ.get(SAMPLE_INTERVAL_ENV), f"${SAMPLE_INTERVAL_ENV}"
    if not text:
        return DEFAULT_SAMPLE_SECONDS
    seconds = duration(text, flag)
    if not MIN_SAMPLE_SECONDS <= seconds <= MAX_SAMPLE_SECONDS:
        raise UsageError(f"{flag}: from {MIN_SAMPLE_SECONDS * 1000:g}ms to "
                         f"{MAX_SAMPLE_SECONDS:g}s")
    return seconds


def resync_of(args: argparse.Namespace) -> float:
    resync = duration(args.resync, "--resync")
    if resync < MIN_RESYNC_SECONDS:
        raise UsageError(f"--resync: at least {MIN_RESYNC_SECONDS:g}s (events trigger passes; "
                         "the resync is only a safety net)")
    return resync


def parse_target(text: str) -> tuple[str, str | None]:
    """`SERVICE[.ACTION]`: names cannot contain a dot, so the first one separates them."""
    service, dot, action = text.partition(".")
    if not service or (dot and not action):
        raise UsageError(f"{text!r} is not SERVICE or SERVICE.ACTION")
    return service, action or None


def duration(text: str, flag: str) -> float:
    from reconciler.spec.units import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from None
