from reconciler.text import printable


def test_control_characters_are_escaped() -> None:
    assert printable("a\nb\r\tc\x1b[2J\x7f\x85\u2028") == "a\\nb\\r\\tc\\x1b[2J\\x7f\\x85\\u2028"


def test_plain_text_is_unchanged() -> None:
    assert printable("web.api: exited 1 — ünïcode ok") == "web.api: exited 1 — ünïcode ok"
