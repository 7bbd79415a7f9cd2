"""How long to wait before the next attempt: pure arithmetic, shared by plan and execute.

The sequence (docs/lifecycle.md, "Restarts and backoff", pinned by tests/test_backoff.py):
a process's first failure in a row restarts at once, as systemd's `Restart=` does, so a
service that crashes once is healed immediately; the n-th waits initial × factor^(n−2). A
failed one-shot, or a start that must wait, waits initial × factor^(n−1) from the first.

Jitter is derived from a hash of the job id and the attempt number instead of a random
generator, so `plan` stays a pure function (same input, same steps) while many jobs that
crash together still spread their restarts out.
"""

from __future__ import annotations

import hashlib

from reconciler.spec.model import Backoff

JITTER = 0.2


def restart_delay(consecutive_failures: int, backoff: Backoff, job_id: str) -> float:
    """Seconds to wait before restarting a process after `consecutive_failures` failures in
    a row: 0 for the first, then `restart_base`, with ±20 % jitter."""
    base = restart_base(consecutive_failures, backoff)
    if base == 0.0:
        return 0.0
    return base * (1.0 + JITTER * _unit_jitter(job_id, consecutive_failures - 1))


def retry_delay(attempt: int, backoff: Backoff, job_id: str) -> float:
    """Seconds before retry number `attempt` (1-based) of something that must wait each time,
    such as a blocked start or a failed one-shot: `retry_base` with ±20 % jitter."""
    return retry_base(attempt, backoff) * (1.0 + JITTER * _unit_jitter(job_id, attempt))


def restart_base(consecutive_failures: int, backoff: Backoff) -> float:
    """`restart_delay` before jitter: 0, then initial × factor^(n−2), capped at max."""
    if consecutive_failures <= 1:
        return 0.0
    return retry_base(consecutive_failures - 1, backoff)


def retry_base(attempt: int, backoff: Backoff) -> float:
    """`retry_delay` before jitter: initial × factor^(attempt−1), capped at max."""
    return _grown(backoff.initial, backoff.factor, max(attempt - 1, 0), backoff.max)


def _grown(initial: float, factor: float, times: int, cap: float) -> float:
    """initial × factor^times, capped, without overflowing: a crash loop never gives up, so
    `times` grows without bound."""
    if factor <= 1.0 or initial >= cap:
        return min(initial, cap)
    delay = initial
    for _ in range(times):
        delay *= factor
        if delay >= cap:
            return cap
    return delay


def _unit_jitter(job_id: str, attempt: int) -> float:
    """A deterministic number in [-1, 1) for this job and attempt."""
    digest = hashlib.blake2b(f"{job_id}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**63 - 1.0
