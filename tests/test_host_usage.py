"""CPU and memory of real processes through host.usage."""

from __future__ import annotations

import sys

import psutil

from reconciler.host.usage import Usage, UsageSampler
from tests.conftest import Foreign
from tests.helpers import wait_for

SAMPLER = UsageSampler()  # one for the module: a later call measures against an earlier one


def test_busy_child_shows_cpu_on_a_later_call(foreign: Foreign) -> None:
    busy = foreign.start([sys.executable, "-c", "while True: pass"])
    first = SAMPLER.usage(busy.pid)
    assert first is not None
    assert first.cpu_percent == 0.0  # no earlier sample to compare with
    assert first.rss_bytes > 0
    later = wait_for(lambda: _cpu_above(busy.pid, 0.0), interval=0.1, message="busy cpu > 0")
    assert later.rss_bytes > 0


def test_idle_child_has_rss_and_little_cpu(foreign: Foreign) -> None:
    idle = foreign.start(["sleep", "60"])
    wait_for(lambda: psutil.Process(idle.pid).status() == psutil.STATUS_SLEEPING,
             message="sleep to be sleeping")
    first = SAMPLER.usage(idle.pid)
    assert first is not None
    assert first.cpu_percent == 0.0
    assert first.rss_bytes > 0
    second = SAMPLER.usage(idle.pid)
    assert second is not None
    assert second.cpu_percent < 50.0  # a sleeping process; generous for a loaded CI host


def test_zombie_and_gone_processes_have_no_usage(foreign: Foreign) -> None:
    child = foreign.start(["true"])
    wait_for(lambda: psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE,
             message="an unreaped child")
    assert SAMPLER.usage(child.pid) is None
    child.wait()
    assert SAMPLER.usage(child.pid) is None


def test_recycled_pid_does_not_reuse_the_old_sample(foreign: Foreign) -> None:
    """A cache keyed by pid alone would measure a new process against a dead one's counters."""
    child = foreign.start(["sleep", "60"])
    created = psutil.Process(child.pid).create_time()
    previous = psutil.Process(child.pid)
    previous.cpu_percent(interval=None)  # primed, as an earlier process would have been
    cache = {(child.pid, created - 1000.0): previous}  # what an earlier process left
    sample = UsageSampler(cache).usage(child.pid)
    assert sample is not None and sample.cpu_percent == 0.0  # a first sample, not a delta
    assert list(cache) == [(child.pid, created)]


def _cpu_above(pid: int, threshold: float) -> Usage | None:
    sample = SAMPLER.usage(pid)
    return sample if sample is not None and sample.cpu_percent > threshold else None


def test_sample_measures_the_named_processes_and_skips_a_recycled_pid(foreign: Foreign) -> None:
    from reconciler.host.identity import identity_of

    busy = foreign.start([sys.executable, "-c", "while True: pass"])
    ident = identity_of(busy.pid)
    assert ident is not None
    stranger = ident._replace(starttime_ticks=ident.starttime_ticks + 1)  # same pid, not it
    found = UsageSampler().sample({"job": ident, "stale": stranger}, interval=0.05)
    assert set(found) == {"job"}
    assert found["job"].rss_bytes > 0
    assert UsageSampler().sample({}) == {}  # nothing to measure: no window waited either


def test_counters_add_up_cpu_and_skip_a_recycled_pid(foreign: Foreign) -> None:
    """No wait and no second sample: CPU seconds only grow, and a pid that now names another
    process (another start time) or another boot is never read as ours."""
    from reconciler.host.identity import identity_of
    from reconciler.host.usage import read_counters

    busy = foreign.start([sys.executable, "-c", "while True: pass"])
    ident = identity_of(busy.pid)
    assert ident is not None
    stranger = ident._replace(starttime_ticks=ident.starttime_ticks + 1)
    other_boot = ident._replace(boot_id="0" * 32)
    first = read_counters({"job": ident, "stale": stranger, "old": other_boot})
    assert set(first) == {"job"}
    assert first["job"].rss_bytes > 0 and first["job"].threads >= 1
    assert first["job"].open_fds is not None and first["job"].open_fds >= 3
    later = wait_for(lambda: (c := read_counters({"job": ident})).get("job") is not None
                     and c["job"].cpu_seconds > first["job"].cpu_seconds and c,
                     message="busy process's CPU seconds to grow")
    assert later["job"].cpu_seconds > 0
    busy.kill()
    busy.wait()
    assert read_counters({"job": ident}) == {}
