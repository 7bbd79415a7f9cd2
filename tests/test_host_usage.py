"""CPU and memory of real processes through host.usage."""

from __future__ import annotations

import os
import sys

from reconciler.host.identity import identity_of
from reconciler.host.usage import read_now
from tests.conftest import Foreign
from tests.helpers import wait_for


def test_read_now_averages_cpu_since_start_and_skips_strangers(foreign: Foreign) -> None:
    """`status` reads once and never waits: a busy process's CPU % is its average since it
    started (CPU time over elapsed time, as ps(1) shows it); a pid now naming another
    process (another start time) or another boot is not ours, and a zombie has no usage."""
    busy = foreign.start([sys.executable, "-c", "while True: pass"])
    ident = identity_of(busy.pid)
    assert ident is not None
    stranger = ident._replace(starttime_ticks=ident.starttime_ticks + 1)
    other_boot = ident._replace(boot_id="0" * 32)
    assert set(read_now({"job": ident, "stale": stranger, "old": other_boot})) == {"job"}
    found = wait_for(lambda: (u := read_now({"job": ident}).get("job")) is not None
                     and u.cpu_percent > 10.0 and u, message="busy process's CPU % > 10")
    assert found.cpu_percent < 100.0 * 1.5  # one thread: at most one core (+ rounding)
    assert found.rss_bytes > 0
    busy.kill()
    wait_for(lambda: read_now({"job": ident}) == {}, message="a zombie to have no usage")
    assert read_now({}) == {}


def test_read_now_of_an_idle_process_is_near_zero(foreign: Foreign) -> None:
    idle = foreign.start(["sleep", "60"])
    ident = wait_for(lambda: identity_of(idle.pid), message="sleep's identity")
    # the figure is the average since start, and a start costs a clock tick or two of CPU:
    # read it once the process has lived long enough for those to be under a tenth
    wait_for(lambda: age_of(ident.starttime_ticks) > 0.5, message="half a second of age")
    usage = read_now({"job": ident})["job"]
    assert 0.0 <= usage.cpu_percent < 50.0 and usage.rss_bytes > 0


def age_of(starttime_ticks: int) -> float:
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - starttime_ticks / os.sysconf("SC_CLK_TCK")


def test_counters_add_up_cpu_and_skip_a_recycled_pid(foreign: Foreign) -> None:
    """No wait and no second sample: CPU seconds only grow, and a pid that now names another
    process (another start time) or another boot is never read as ours."""
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
