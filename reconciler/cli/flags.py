"""What the flags of `reconcile` mean: their defaults and the readers that turn a parsed
namespace into settings, durations and targets. Kept apart from `args.py` (the argparse
parser) so that a command parsed without argparse (`cli/quick.py`: a plain `status`) loads
none of it (issue 13).
"""

from __future__ import annotations

from reconciler.cli.errors import UsageError

TYPE_CHECKING = False  # not `typing`'s: a plain `status` need not import it for this
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping

    from reconciler.settings import Settings

# The commands whose passes place services by the labels (None: the daemon and --once): a
# broken labels file stops them before any pass, and only them.
PLACING_COMMANDS = (None, "diff", "resume")
DEFAULT_SETTLE = "200ms"  # `--settle`'s default, the same as Settings.settle's (tested)
MAX_SETTLE_SECONDS = 60.0  # longer would mean an edit is not applied for minutes
DEFAULT_SAMPLE_SECONDS = 5.0  # = resources.DEFAULT_INTERVAL_SECONDS (kept out of --help)
MIN_RESYNC_SECONDS = 1.0  # a safety net, not a poll: `--resync 1ms` busy-looped the daemon
OUTPUTS = ("table", "json")
VALIDATE_FORMATS = ("text", "github")
LOG_FORMATS = ("text", "json", "journal")  # logformat.FORMATS, without importing logging setup
METRICS_ADDR_ENV = "RECONCILER_METRICS_ADDR"
SORT_KEYS = ("cpu", "rss")  # resources.SORT_KEYS, without importing the renderer here
MIN_TOP_INTERVAL = 0.1  # seconds: faster only burns the CPU it is meant to show


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
    if settle is None or settle == DEFAULT_SETTLE:  # Settings' default: no units to import
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
