"""The controller's file descriptor limit, and the one its children get back.

The controller holds a few descriptors per managed process (a pidfd for exit detection, one
for its process snapshot, one per own child), so the common soft limit of 1024 runs out
near 300 processes. Like systemd, the controller raises its own soft limit to the hard
limit, and its children start with the soft limit it was given: a service must not behave
differently depending on who started the controller.
"""

from __future__ import annotations

import logging
import resource

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
