"""Text that reaches an operator's terminal or log: never raw control characters.

Spec names, values, file names and command lines come from untrusted files. A newline in a
name can forge a log line, an escape sequence can rewrite the operator's terminal. Every
message built from such input goes through `printable` first (the daemon's log lines through
`logformat.PrintableFormatter`, which lives there so that commands that log nothing, like
`status`, never import `logging`).
"""

from __future__ import annotations

# C0 controls (tab included: it misaligns tables), DEL, C1 controls, and the Unicode line and
# paragraph separators that some log viewers also break lines on, and the bidirectional
# overrides/isolates that make a terminal show text in another order than it is written.
CONTROL_CHARS = (*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, 0x200E, 0x200F,
                 *range(0x202A, 0x202F), *range(0x2066, 0x206A))


def _escape(code: int) -> str:
    char = chr(code)
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{code:02x}"
                                                       if code < 0x100 else f"\\u{code:04x}")


# a `str.translate` table rather than a regex: `re` (with enum) is a visible part of
# `reconcile status`, which prints its header through here (issue 13); built on the first
# text that needs it, since most text has nothing to escape
_escapes: dict[int, str] | None = None


def printable(text: str) -> str:
    """`text` with every control character shown as a Python-style escape (`\\n`, `\\x1b`)."""
    if text.isprintable():  # no Cc, Cf, Zl, Zp (nor other unprintables): nothing to escape
        return text
    global _escapes
    table = _escapes
    if table is None:  # complete before it is shared: the daemon's threads log through here
        table = _escapes = {code: _escape(code) for code in CONTROL_CHARS}
    return text.translate(table)
