"""Keep secrets out of everything the reconciler prints or records.

Operators paste `status`, `events` and `diff` output into tickets and chats. Env values are
never printed; command lines are, and people do put `--password=…` or `API_TOKEN=…` on
them. Every command line shown to a user goes through `redact_argv` first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from reconciler.text import printable

SECRET_NAME = re.compile(r"(?i)(token|passw(or)?d|secret|key)")
MASK = "***"
_ASSIGNMENT = re.compile(r"^(['\"]?-{0,2}[A-Za-z_][A-Za-z0-9_.-]*)=(.*)$", re.S)


def is_secret_name(name: str) -> bool:
    return SECRET_NAME.search(name) is not None


def redact_argv(argv: Iterable[str]) -> list[str]:
    """`--password=x` → `--password=***`; `--token x` → `--token ***`; `API_KEY=x` → `API_KEY=***`;
    inside a `sh -c` string, each whitespace-separated word is treated the same way."""
    redacted: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            redacted.append(MASK)
            hide_next = False
            continue
        redacted.append(_redact_words(arg) if " " in arg else _redact_word(arg))
        hide_next = arg.startswith("-") and "=" not in arg and is_secret_name(arg)
    return redacted


def command_line(argv: Iterable[str], limit: int = 120) -> str:
    """A command as operators see it in reasons, events and `blocked_by`: redacted, on one
    line, and short enough for a table."""
    text = printable(" ".join(" ".join(redact_argv(argv)).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redact_words(text: str) -> str:
    words = re.split(r"(\s+)", text)
    hide_next = False
    for i, word in enumerate(words):
        if not word or word.isspace():
            continue
        if hide_next:
            words[i] = MASK
            hide_next = False
            continue
        words[i] = _redact_word(word)
        hide_next = word.startswith("-") and "=" not in word and is_secret_name(word)
    return "".join(words)


def _redact_word(word: str) -> str:
    match = _ASSIGNMENT.match(word)
    if match and is_secret_name(match.group(1)):
        closing = match.group(2)[-1] if match.group(2)[-1:] in ("'", '"') else ""
        return f"{match.group(1)}={MASK}{closing}"
    return word
