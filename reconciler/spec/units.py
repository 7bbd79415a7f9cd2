"""Durations and sizes as people write them in specs (`250ms`, `1m30s`, `10MiB`).

A unit is always required: a bare `5` could mean seconds, milliseconds or bytes, and a wrong
guess in a stop timeout or a log cap is worse than an error at load time. Parsing functions
raise `ValueError` with a message fit to show a user as is.
"""

from __future__ import annotations

import math
import re

DURATION_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
    "kB": 1000, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
}

# ASCII digits only: `\d` would also take "٣", which a JSON Schema pattern (ECMA-262) does not.
_NUMBER = r"(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}(?:ms|s|m|h|d))+\s*$"
SIZE_PATTERN = rf"^\s*{_NUMBER}\s*(?:B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)\s*$"

_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d)")
_DURATION_FULL = re.compile(DURATION_PATTERN)
_SIZE_FULL = re.compile(rf"^\s*({_NUMBER})\s*(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)\s*$")
_BARE_NUMBER = re.compile(rf"^\s*{_NUMBER}\s*$")

# Far beyond any sensible timeout, but small enough that sleeps and timers never overflow.
MAX_DURATION = 10 * 365 * 86400.0
MAX_SIZE = 1024**5


def parse_duration(text: str) -> float:
    """`'1m30s'` -> 90.0 seconds."""
    if not _DURATION_FULL.match(text):
        if _BARE_NUMBER.match(text):
            raise ValueError(f"durations need a unit, e.g. '{text.strip()}s'")
        raise ValueError(f"invalid duration '{text}': use a number with a unit "
                         "(ms, s, m, h, d), e.g. '250ms', '5s', '1m30s'")
    seconds = sum(float(num) * DURATION_UNITS[unit]
                  for num, unit in _DURATION_PART.findall(text))
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise ValueError(f"duration '{text.strip()}' is too long (at most 10 years)")
    return seconds


def parse_size(text: str) -> int:
    """`'10MiB'` -> 10485760 bytes."""
    match = _SIZE_FULL.match(text)
    if match is None:
        if _BARE_NUMBER.match(text):
            raise ValueError(f"sizes need a unit, e.g. '{text.strip()}B' or '10MiB'")
        raise ValueError(f"invalid size '{text}': use a number with a unit "
                         "(B, KiB, MiB, GiB, kB, MB, GB), e.g. '512KiB', '10MiB'")
    value = float(match.group(1)) * SIZE_UNITS[match.group(2)]
    if not math.isfinite(value) or value > MAX_SIZE:
        raise ValueError(f"size '{text.strip()}' is too large")
    return round(value)


def format_duration(seconds: float) -> str:
    """The inverse of `parse_duration`, so a dumped spec loads back to the same value."""
    if seconds == 0:
        return "0s"
    if seconds == int(seconds) and seconds >= 1:
        whole = int(seconds)
        hours, rest = divmod(whole, 3600)
        minutes, secs = divmod(rest, 60)
        parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
        return "".join(f"{n}{unit}" for n, unit in parts if n)
    millis = seconds * 1000
    if seconds < 1 and abs(millis - round(millis)) < 1e-9:
        return f"{round(millis)}ms"
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"


def format_size(size: int) -> str:
    """The inverse of `parse_size`; binary units first because log caps are usually MiB."""
    for unit in ("TiB", "GiB", "MiB", "KiB", "TB", "GB", "MB", "kB"):
        factor = SIZE_UNITS[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
