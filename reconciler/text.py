"""Text that reaches an operator's terminal or log: never raw control characters.

Spec names, values, file names and command lines come from untrusted files. A newline in a
name can forge a log line, an escape sequence can rewrite the operator's terminal. Every
message built from such input goes through `printable` first (the daemon's log lines through
`logformat.PrintableFormatter`, which lives there so that commands that log nothing, like
`status`, never import `logging`).
"""

from __future__ import annotations

import re

# C0 controls (tab included: it misaligns tables), DEL, C1 controls, and the Unicode line and
# paragraph separators that some log viewers also break lines on, and the bidirectional
# overrides/isolates that make a terminal show text in another order than it is written.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e"
                      "\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}"
                                                       if ord(char) < 0x100
                                                       else f"\\u{ord(char):04x}")


def printable(text: str) -> str:
    """`text` with every control character shown as a Python-style escape (`\\n`, `\\x1b`)."""
    return _CONTROL.sub(_escape, text)
