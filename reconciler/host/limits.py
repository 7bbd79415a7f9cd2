"""The controller's file descriptor limit, the one its children get back, and the
rlimits of a spec's `limits:` set on a gated child before its command runs.

The controller holds a few descriptors per managed process (a pidfd for exit detection, one
for its process snapshot, one per own child), so the common soft limit of 1024 runs out
near 300 processes. Like systemd, the controller raises its own soft limit to the hard
limit, and its children start with the soft limit it was given: a service must not behave
differently depending on who started the controller.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Sequence

log = logging.getLogger(__name__)

_CEILING = 1 << 20  # when the hard limit is unlimited
_given_soft: int | None = None


def raise_fd_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit (once; later calls do nothing)."""
    global _given_soft
    if _given_soft is not None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    _given_soft = soft
    target = _CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, target, err)


def child_fd_limit() -> int:
    """The soft limit children get: the one the controller was started with."""
    if _given_soft is not None:
        return _given_soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# A spec's `limits:` key -> the rlimit it sets (spec/model.py Limits.RLIMITS).
RLIMITS: dict[str, int] = {
    "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC,
    "core": resource.RLIMIT_CORE, "memlock": resource.RLIMIT_MEMLOCK,
    "as": resource.RLIMIT_AS, "fsize": resource.RLIMIT_FSIZE,
}
_NR_OPEN = "/proc/sys/fs/nr_open"


class LimitError(Exception):
    """An rlimit could not be set; the message names the limit (`limits.nofile: …`)."""


def _shown(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _above(value: int, hard: int) -> bool:
    """`value` > `hard` in the kernel's order, where RLIM_INFINITY (-1) is the largest."""
    if hard == resource.RLIM_INFINITY:
        return False
    return value == resource.RLIM_INFINITY or value > hard


def _nr_open() -> int | None:
    try:
        with open(_NR_OPEN, encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def apply_rlimits(pid: int, limits: Sequence[tuple[str, int]]) -> None:
    """Set each (spec key, value) as both soft and hard limit of process `pid` with
    prlimit(2), from the parent: `preexec_fn` is unsafe in a threaded parent (LIBRARIES.md),
    and the gated child is waiting, not running its command yet. `value` is
    `spec.model.UNLIMITED` (-1, RLIM_INFINITY) for unlimited. Raises LimitError naming the
    limit: raising a hard limit needs CAP_SYS_RESOURCE, and RLIMIT_NOFILE never goes above
    fs.nr_open, not even for root."""
    for key, value in limits:
        which = RLIMITS[key]
        try:
            resource.prlimit(pid, which, (value, value))
        except (OSError, ValueError) as err:
            raise LimitError(_limit_problem(pid, key, which, value, err)) from err


def _limit_problem(pid: int, key: str, which: int, value: int,
                   err: OSError | ValueError) -> str:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    try:
        hard = resource.prlimit(pid, which)[1]
    except (OSError, ValueError):
        return f"limits.{key}: cannot set it to {_shown(value)}: {reason}"
    if key == "nofile" and (nr_open := _nr_open()) is not None and value > nr_open:
        return (f"limits.{key}: cannot set it to {value}: {reason} "
                f"(the kernel's fs.nr_open is {nr_open})")
    if _above(value, hard):
        return (f"limits.{key}: cannot raise the hard limit from {_shown(hard)} to "
                f"{_shown(value)}: {reason}")
    return f"limits.{key}: cannot set it to {_shown(value)}: {reason}"


def unraisable_hard_limits() -> dict[str, int] | None:
    """The controller's own hard limits by spec key, which a job can never exceed because
    the controller cannot raise them (validation refuses more); None when it can: with
    CAP_SYS_RESOURCE in its effective set (root in a container often lacks it), or, where
    /proc/self/status cannot be read, as root."""
    if _can_raise_hard_limits():
        return None
    return {key: resource.getrlimit(which)[1] for key, which in RLIMITS.items()}


_CAP_SYS_RESOURCE = 24


def _can_raise_hard_limits() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_RESOURCE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0
