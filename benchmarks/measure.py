"""The measurements. Each returns plain numbers; `__main__` aggregates and reports them.

Time is wall-clock `perf_counter` in the benchmark process, sampled by a 1 ms poll of /proc
(resolution: the 1 ms sleep plus one poll, reported as `poll_ms`). "Running" means the
managed pid has exec'ed `sleep` (its comm is `sleep`), not merely been forked.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import procfs
from benchmarks.supervisors import REPO, Reconciler, Supervisor


@dataclass
class SessionResult:
    """One supervisor, one N, one run."""

    converge_s: float | None = None
    cpu_pct: float | None = None
    rss_mib: float | None = None
    respawn_s: list[float] = field(default_factory=list)
    respawn_timeouts: int = 0
    save_s: list[float] = field(default_factory=list)
    poll_ms: float | None = None


def converge(sup: Supervisor, timeout: float) -> tuple[procfs.ChildTracker, float | None]:
    """From Popen of the daemon until N sleepers run."""
    sup.write_config()
    start = time.perf_counter()
    sup.start()
    tracker = procfs.ChildTracker(sup.pid)
    elapsed = procfs.wait_for(lambda: len(tracker.poll()) >= sup.n, timeout)
    return tracker, (None if elapsed is None else time.perf_counter() - start)


def idle(sup: Supervisor, tracker: procfs.ChildTracker, seconds: float) -> tuple[float, float]:
    """CPU % of one core used by the daemon and its non-managed children over `seconds`,
    and their summed RSS (MiB) at the end. Sampled from /proc/<pid>/stat, 10 ms ticks."""
    helpers = lambda: [sup.pid, *tracker.others]  # noqa: E731
    before = _ticks(helpers())
    start = time.perf_counter()
    time.sleep(seconds)
    tracker.poll()
    after = _ticks(helpers())
    elapsed = time.perf_counter() - start
    cpu = sum(after.get(p, 0) - t for p, t in before.items()) / procfs.CLOCK_TICKS
    rss = sum(s.rss_kib for p in helpers() if (s := procfs.read_stat(p)) is not None)
    return 100.0 * cpu / elapsed, rss / 1024.0


def _ticks(pids: list[int]) -> dict[int, int]:
    return {p: s.cpu_ticks for p in pids if (s := procfs.read_stat(p)) is not None}


def respawn(tracker: procfs.ChildTracker, samples: int, gap: float,
            timeout: float = 10.0) -> tuple[list[float], int]:
    """SIGKILL one original sleeper at a time (never the same one twice, so no backoff
    policy applies) and time until a new sleeper runs."""
    tracker.poll()
    victims = random.sample(sorted(tracker.running), min(samples, len(tracker.running)))
    times: list[float] = []
    timeouts = 0
    for victim in victims:
        before = set(tracker.poll())
        start = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        elapsed = procfs.wait_for(lambda b=before: bool(tracker.poll_new() - b), timeout)
        if elapsed is None:
            timeouts += 1
        else:
            times.append(time.perf_counter() - start)
        time.sleep(gap)
    return times, timeouts


def save_to_running(sup: Reconciler, tracker: procfs.ChildTracker, samples: int,
                    gap: float, timeout: float = 10.0) -> list[float]:
    """Atomically save a new spec file (one service) and time until its sleeper runs."""
    times: list[float] = []
    for k in range(samples):
        before = set(tracker.poll())
        start = time.perf_counter()
        sup.add_service(f"new{k:03d}")
        elapsed = procfs.wait_for(lambda b=before: bool(tracker.poll_new() - b), timeout)
        if elapsed is not None:
            times.append(time.perf_counter() - start)
        time.sleep(gap)
    return times


def poll_cost(tracker: procfs.ChildTracker, rounds: int = 200) -> float:
    """Median ms of one look for new processes + 1 ms sleep: the resolution of the respawn
    and save → running timings above."""
    tracker.poll()
    laps = []
    for _ in range(rounds):
        start = time.perf_counter()
        tracker.poll_new()
        time.sleep(0.001)
        laps.append(time.perf_counter() - start)
    return statistics.median(laps) * 1000


def once_from_nothing(sup: Reconciler) -> float | None:
    """Wall seconds of `reconcile --once` starting N actions with no daemon and no state, as
    a user runs it (a whole process); None if it did not converge."""
    return once_with_system_cpu(sup)[0]


def once_with_system_cpu(sup: Reconciler) -> tuple[float | None, float]:
    """`once_from_nothing`, and the kernel CPU seconds its process used. Reported beside the
    wall time because that is what swings: on a journal-less ext4 (this VM's) each new file
    right after thousands were deleted makes the kernel skip the recently deleted inodes
    one by one, and the same `--once` went from 0.4 s of system CPU to 2.5 s
    (docs/benchmarks.md, "--once, seventh round")."""
    if sup.state.exists():
        raise RuntimeError(f"{sup.state} exists: --once would not start from nothing")
    sup.write_config()
    env = {**os.environ, "BENCH_RUN": sup.marker, "PYTHONPATH": os.fspath(REPO)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime
    start = time.perf_counter()
    done = subprocess.run(sup.once_argv(), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - start
    system = resource.getrusage(resource.RUSAGE_CHILDREN).ru_stime - before
    return (wall if done.returncode == 0 else None), system


def noop_pass(sup: Reconciler, passes: int) -> tuple[float | None, list[float]]:
    """Converge N actions with `reconcile --once` (no daemon), then time in-process passes
    that find nothing to do. Returns (--once wall seconds, pass seconds)."""
    from reconciler.controller import Reconciler as Controller
    from reconciler.settings import resolve

    once = once_from_nothing(sup)
    times: list[float] = []
    with Controller(resolve(sup.specs, sup.state)) as controller:
        for _ in range(passes):
            start = time.perf_counter()
            result = controller.reconcile()
            times.append(time.perf_counter() - start)
            if result.plan.changes:
                raise RuntimeError(f"not a no-op pass: {len(result.plan.changes)} changes")
    return once, times


@dataclass
class OnOff:
    """Idle CPU (% of a core) and RSS (MiB) of a daemon without (`off`) and with (`on`) a
    feature, one entry per session: the metrics and sampling scenarios share this."""

    cpu_off: list[float] = field(default_factory=list)
    cpu_on: list[float] = field(default_factory=list)
    rss_off: list[float] = field(default_factory=list)
    rss_on: list[float] = field(default_factory=list)
    failures: int = 0  # sessions that did not converge

    def idle_summary(self) -> dict[str, float | None]:
        """Medians of both sides and what the feature adds."""
        cpu_off, cpu_on = median_or_none(self.cpu_off), median_or_none(self.cpu_on)
        rss_off, rss_on = median_or_none(self.rss_off), median_or_none(self.rss_on)
        return {"cpu_off": cpu_off, "cpu_on": cpu_on,
                "cpu_added": None if cpu_on is None or cpu_off is None else cpu_on - cpu_off,
                "rss_off": rss_off, "rss_on": rss_on,
                "rss_added": None if rss_on is None or rss_off is None else rss_on - rss_off}


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def on_off_session(sup: Supervisor, on: bool, out: OnOff, *, converge_timeout: float,
                   settle_s: float, idle_s: float,
                   then: Callable[[Supervisor], None] | None = None) -> None:
    """Converge, settle, measure idle CPU and RSS into the `on` or `off` side of `out`,
    then run `then` on the converged daemon; always stop it."""
    try:
        tracker, converged = converge(sup, converge_timeout)
        if converged is None:
            out.failures += 1
            return
        time.sleep(settle_s)
        cpu, rss = idle(sup, tracker, idle_s)
        (out.cpu_on if on else out.cpu_off).append(cpu)
        (out.rss_on if on else out.rss_off).append(rss)
        if then is not None:
            then(sup)
    finally:
        sup.stop()
