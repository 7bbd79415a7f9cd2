"""The backoff sequence is the one docs/lifecycle.md states, read from its table.

A process's first failure in a row restarts at once (a crash healed immediately, as systemd
does); the n-th waits initial × factor^(n−2). A failed one-shot waits initial × factor^(n−1)
from its first failure. The doc's table and this test say the same numbers because the test
reads them from the doc.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reconciler.backoff import (
    JITTER,
    restart_base,
    restart_delay,
    retry_base,
    retry_delay,
)
from reconciler.spec.model import Backoff
from reconciler.spec.units import parse_duration

LIFECYCLE = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"
_ROW = re.compile(r"^\s*\|\s*(\d+)( and later)?\s*\|\s*(\S+)\s*\|\s*(\S+)\s*\|\s*$")


def documented_sequence() -> list[tuple[int, bool, float, float]]:
    """(n, "and later", process delay, one-shot delay) rows of the table in the
    "Restarts and backoff" section of docs/lifecycle.md."""
    text = LIFECYCLE.read_text()
    section = text.split("## Restarts and backoff", 1)[1].split("\n## ", 1)[0]
    rows = [_ROW.match(line) for line in section.splitlines()]
    return [(int(m[1]), bool(m[2]), parse_duration(m[3]), parse_duration(m[4]))
            for m in rows if m is not None]


DEFAULTS = Backoff()


def test_the_doc_states_the_sequence_for_the_defaults() -> None:
    rows = documented_sequence()
    assert [n for n, _, _, _ in rows] == list(range(1, len(rows) + 1))
    assert len(rows) >= 5 and rows[-1][1], "the table ends with an 'and later' row"
    assert (DEFAULTS.initial, DEFAULTS.factor, DEFAULTS.max) == (0.2, 2.0, 30.0)
    assert rows[0][2] == 0.0, "a process's first failure restarts at once"


@pytest.mark.parametrize("n, later, process, one_shot", documented_sequence())
def test_delays_before_jitter_are_the_documented_ones(
        n: int, later: bool, process: float, one_shot: float) -> None:
    for failures in ([n, n + 1, n + 10, 10**6] if later else [n]):
        assert restart_base(failures, DEFAULTS) == pytest.approx(process)
        assert retry_base(failures, DEFAULTS) == pytest.approx(one_shot)


@pytest.mark.parametrize("n, later, process, one_shot", documented_sequence())
def test_jitter_stays_within_20_percent_and_is_deterministic(
        n: int, later: bool, process: float, one_shot: float) -> None:
    for job in ("a", "b", "c"):
        restart = restart_delay(n, DEFAULTS, job)
        retry = retry_delay(n, DEFAULTS, job)
        assert process * (1 - JITTER) <= restart <= process * (1 + JITTER)
        assert one_shot * (1 - JITTER) <= retry <= one_shot * (1 + JITTER)
        assert restart == restart_delay(n, DEFAULTS, job)


def test_jitter_spreads_jobs_that_fail_together() -> None:
    delays = {restart_delay(3, DEFAULTS, f"job-{i}") for i in range(20)}
    assert len(delays) == 20


def test_the_formula_follows_the_spec_values() -> None:
    backoff = Backoff.model_validate({"initial": "1s", "factor": 3, "max": "1m"})
    assert [restart_base(n, backoff) for n in range(1, 7)] == [0.0, 1.0, 3.0, 9.0, 27.0, 60.0]
    assert [retry_base(n, backoff) for n in range(1, 6)] == [1.0, 3.0, 9.0, 27.0, 60.0]
    constant = Backoff.model_validate({"initial": "2s", "factor": 1})
    assert [restart_base(n, constant) for n in (1, 2, 50)] == [0.0, 2.0, 2.0]
