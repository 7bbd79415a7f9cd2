import logging

from reconciler.logformat import PrintableFormatter
from reconciler.text import printable


def test_control_characters_are_escaped() -> None:
    assert printable("a\nb\r\tc\x1b[2J\x7f\x85\u2028") == "a\\nb\\r\\tc\\x1b[2J\\x7f\\x85\\u2028"


def test_plain_text_is_unchanged() -> None:
    assert printable("web.api: exited 1 — ünïcode ok") == "web.api: exited 1 — ünïcode ok"


def test_a_log_record_is_always_one_line() -> None:
    """The daemon's log handler escapes what specs and processes put into a message, so a
    value with a newline cannot forge a second log line."""
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "spawn %s: %s",
                               ("web\nFAKE 00:00 INFO all good", "exit\x1b[2J"), None)
    line = PrintableFormatter("%(levelname)s %(message)s").format(record)
    assert line == "ERROR spawn web\\nFAKE 00:00 INFO all good: exit\\x1b[2J"


def test_every_escaped_character_is_one_isprintable_refuses() -> None:
    """`printable` returns text that `str.isprintable` accepts as it is: right only while
    every character it escapes is one that `isprintable` refuses."""
    from reconciler.text import CONTROL_CHARS

    assert not any(chr(code).isprintable() for code in CONTROL_CHARS)
    assert printable("\u00a0x\u200bé") == "\u00a0x\u200bé"  # unprintable, not escaped: as before
