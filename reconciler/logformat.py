"""The daemon's own log lines: `--log-format text|json|journal`, and no library noise.

`journal` prefixes each line with its syslog priority (`<3>` error … `<7>` debug), which
journald reads off a service's stderr (sd-daemon(3)), so `journalctl -p warning` shows the
warnings and errors without our timestamps doubling journald's own. It is the default when
stderr *is* the journal stream: `$JOURNAL_STREAM` names its device and inode, and a
variable merely inherited (stderr redirected to a file) does not match them.

Every format escapes control characters from specs and processes, so one record is always
one line (json escapes every character that is not printable ASCII).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Mapping
from typing import IO

from reconciler.text import printable

FORMATS = ("text", "json", "journal")
# syslog priorities (sd-daemon(3) SD_ERR …), by logging level
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
               (logging.INFO, 6))
_DEBUG_PRIORITY = 7
# Libraries that log at INFO about their own workings: watchfiles says "3 changes detected"
# on every save, APScheduler says "Added job" on every backoff timer.
QUIET_LIBRARIES = ("watchfiles", "apscheduler")


class PrintableFormatter(logging.Formatter):
    """Escapes control characters in every log message (not in a traceback, whose line
    breaks are ours): one log record is always one line, whatever a spec or a process put
    into the values it carries."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def default_format(environ: Mapping[str, str], stderr: IO[str]) -> str:
    """`journal` when stderr is connected to the journal, else `text`."""
    return "journal" if _is_journal(environ.get("JOURNAL_STREAM", ""), stderr) else "text"


def _is_journal(journal: str, stream: IO[str]) -> bool:
    device, colon, inode = journal.partition(":")
    if not colon or not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):  # no file behind it (captured), or closed
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def configure(log_format: str, stream: IO[str]) -> None:
    """Route every log record of this process to `stream` in `log_format`, INFO and up,
    with the libraries' own chatter held to warnings. A process whose logging is already
    set up (an embedding program, a test runner) keeps its own handlers."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "journal":
        return JournalFormatter("%(message)s")
    return PrintableFormatter("%(asctime)s %(levelname)s %(message)s")


def priority(level: int) -> int:
    return next((p for threshold, p in _PRIORITIES if level >= threshold), _DEBUG_PRIORITY)


class JournalFormatter(PrintableFormatter):
    """`<priority>message`. A traceback's every line carries the prefix too: journald makes
    each line its own entry, and an unprefixed one would be filed as `info`."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time` (UTC, ISO 8601), `level`, `logger`, `message`, and
    `exception` when there is a traceback, for log shippers that parse rather than grep."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)  # ASCII only: C1 controls and bidi marks come out escaped
