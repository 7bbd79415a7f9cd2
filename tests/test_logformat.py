"""The daemon's log formats: journal priorities, one JSON object per line, and the default
that follows where stderr really goes."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from reconciler.logformat import default_format, formatter, priority


def record(level: int, message: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("reconciler.test", level, __file__, 1, message, None, exc_info)


def raised() -> BaseException:
    try:
        raise OSError(5, "Input/output error")
    except OSError as err:
        return err


@pytest.mark.parametrize(("level", "expected"), [
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6),
    (logging.DEBUG, 7),
])
def test_journal_priorities_follow_syslog(level: int, expected: int) -> None:
    assert priority(level) == expected
    assert formatter("journal").format(record(level, "hi")) == f"<{expected}>hi"


def test_every_line_of_a_journal_traceback_keeps_its_priority() -> None:
    """journald files each line as its own entry: an unprefixed line would be `info`."""
    text = formatter("journal").format(record(logging.ERROR, "pass failed", raised()))
    lines = text.split("\n")
    assert len(lines) > 2 and all(line.startswith("<3>") for line in lines)
    assert "OSError" in text


def test_control_characters_never_split_a_record() -> None:
    for name in ("text", "journal"):
        text = formatter(name).format(record(logging.INFO, "a\nb\x1b[2J"))
        assert "\n" not in text and "\x1b" not in text
    line = formatter("json").format(record(logging.INFO, "a\nb\x1b[2J\u202e\x9b"))
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line
    assert json.loads(line)["message"] == "a\nb\x1b[2J\u202e\x9b"  # nothing lost


def test_json_lines_carry_time_level_logger_and_the_traceback() -> None:
    entry = json.loads(formatter("json").format(record(logging.ERROR, "x", raised())))
    assert entry["level"] == "error" and entry["logger"] == "reconciler.test"
    assert entry["time"].endswith("+00:00") and "OSError" in entry["exception"]


def test_journal_is_the_default_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    """systemd sets JOURNAL_STREAM to the device and inode of the stream it connected; a
    child that inherited the variable but writes elsewhere must not get `<N>` prefixes."""
    with (tmp_path / "stream").open("w") as stream, (tmp_path / "other").open("w") as other:
        st = os.fstat(stream.fileno())
        journal = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert default_format(journal, stream) == "journal"
        assert default_format(journal, other) == "text"
        assert default_format({}, stream) == "text"
        for bad in ("", "1", "a:b", ":", f"{st.st_dev}:"):
            assert default_format({"JOURNAL_STREAM": bad}, stream) == "text"
    assert default_format(journal, io.StringIO()) == "text"  # no file behind it
