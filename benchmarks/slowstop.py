"""The "slow stop" scenario (reconciler only): does healing go on while a job is stopping?

Issue 8 found that a job ignoring SIGTERM with `stop.timeout: 8s` delayed the respawn of an
unrelated killed job by 7.6 s, because the stop blocked the pass. Here N ordinary sleepers
run beside M "slow" jobs. One slow job at a time is stopped (its spec file removed, or
`reconcile down`), and while it is provably stopping (it has received SIGTERM and is still
alive) ordinary sleepers are SIGKILLed one at a time, each timed until its replacement runs,
exactly as the ordinary respawn measurement does.

A slow job is a shell that catches SIGTERM, notes the fact in a file and keeps running, so
only the SIGKILL at the end of `stop.timeout` ends it. The note is how the harness knows,
without asking the code under test, that a stop is in progress; the job's pid and start time
(its identity in /proc) tell when it ended.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import procfs
from benchmarks.supervisors import REPO, Reconciler

# Kill offsets after the SIGTERM was seen, seconds: spread over the window, all early enough
# that a prompt respawn lands well before the SIGKILL at `stop.timeout` (8 s).
OFFSETS = (0.25, 1.75, 3.25, 4.75, 6.25)


@dataclass(frozen=True)
class SlowPlan:
    n: int = 200  # ordinary sleepers (the victims)
    samples: int = 20  # kills, each during a slow stop
    stop_timeout: float = 8.0
    trigger: str = "remove"  # "remove" the spec file, or "down" (the CLI)
    budget_s: float = 100.0  # no new stop window is opened after this much wall time
    converge_timeout: float = 180.0


@dataclass
class SlowStopResult:
    n: int = 0
    trigger: str = ""
    stop_timeout: float = 0.0
    converge_s: float | None = None
    respawn_s: list[float] = field(default_factory=list)
    timeouts: int = 0
    # respawns that came while the slow job was still alive (its stop still in progress)
    within_stop: int = 0
    # SIGTERM seen → slow job dead, one per window: the stop still escalates on time
    stop_s: list[float] = field(default_factory=list)
    windows: int = 0
    failed_windows: int = 0  # the slow job never saw SIGTERM (stop not triggered)
    wall_s: float = 0.0


class SlowStopReconciler(Reconciler):
    """The CLI daemon with N ordinary services (one file, as in the main benchmark) and
    `slow` services in one file each, so that removing a file stops exactly one."""

    def __init__(self, workdir: Path, plan: SlowPlan, marker: str) -> None:
        super().__init__(workdir, plan.n, marker)
        self.plan = plan
        # One window per slow job; a window lasts about stop_timeout, whatever the result.
        self.slow = min(plan.samples, int(plan.budget_s // plan.stop_timeout) + 1)
        self.notes = workdir / "slow"

    def slow_names(self) -> list[str]:
        return [f"slow{k:02d}" for k in range(self.slow)]

    def write_config(self) -> None:
        super().write_config()
        self.notes.mkdir(exist_ok=True)
        for name in self.slow_names():
            (self.specs / f"{name}.yaml").write_text(self.slow_yaml(name))

    def slow_yaml(self, name: str) -> str:
        """Writes its pid on start and a note on SIGTERM, then keeps waiting: `wait` returns
        at once on a trapped signal (POSIX), and the `sleep` child dies of the group
        signal, so the note is written within a millisecond of the stop's signal."""
        pid = shlex.quote(os.fspath(self.notes / f"{name}.pid"))
        note = shlex.quote("echo > " + shlex.quote(os.fspath(self.notes / f"{name}.term")))
        script = (f"echo $$ > {pid}; trap {note} TERM; "
                  "while :; do sleep 3600 & wait $!; done")
        return (f"name: {name}\nactions:\n  - name: slow\n    process: true\n"
                f"    cmd: {json.dumps(script)}\n"
                f"    stop: {{timeout: {self.plan.stop_timeout:g}s}}\n"
                f"    env: {{BENCH_RUN: \"{self.marker}\"}}\n")

    def identity(self, name: str) -> tuple[int, int] | None:
        """(pid, start time) of the slow job's shell, from its own note and /proc."""
        try:
            pid = int((self.notes / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        st = procfs.read_stat(pid)
        return None if st is None else (pid, st.starttime)

    def stop_slow(self, name: str) -> subprocess.Popen[bytes] | None:
        """Start stopping one slow job; `down` runs the CLI without waiting for it."""
        if self.plan.trigger == "remove":
            os.unlink(self.specs / f"{name}.yaml")
            return None
        env = {**os.environ, "BENCH_RUN": self.marker, "PYTHONPATH": os.fspath(REPO)}
        return subprocess.Popen([*self.argv(), "down", name], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)


def run(plan: SlowPlan, root: Path, marker: str) -> SlowStopResult:
    """Start the daemon, converge, run stop windows until enough samples or the budget is
    spent, and always kill everything."""
    sup = SlowStopReconciler(root / f"slow-stop-{plan.n}", plan, marker)
    out = SlowStopResult(n=plan.n, trigger=plan.trigger, stop_timeout=plan.stop_timeout)
    started = time.perf_counter()
    try:
        sup.write_config()
        sup.start()
        tracker = procfs.ChildTracker(sup.pid)
        names = sup.slow_names()
        ready = lambda: (len(tracker.poll()) >= sup.n  # noqa: E731
                         and all(sup.identity(s) for s in names))
        if procfs.wait_for(ready, plan.converge_timeout) is None:
            return out
        out.converge_s = time.perf_counter() - started
        time.sleep(1.0)  # let the start-up passes settle, as the main benchmark does
        victims = random.sample(sorted(tracker.running), min(plan.samples, sup.n))
        for name in names:
            if len(out.respawn_s) + out.timeouts >= len(victims):
                break
            if time.perf_counter() - started + plan.stop_timeout > plan.budget_s:
                break
            window(sup, tracker, name, victims, out)
        return out
    finally:
        out.wall_s = time.perf_counter() - started
        sup.stop()


def window(sup: SlowStopReconciler, tracker: procfs.ChildTracker, name: str,
           victims: list[int], out: SlowStopResult) -> None:
    """One slow stop: trigger it, wait for its SIGTERM, kill victims at OFFSETS while the
    slow job lives, then wait for the SIGKILL that ends it."""
    plan = sup.plan
    ident = sup.identity(name)
    if ident is None or not procfs.alive(*ident):
        out.failed_windows += 1
        return
    cli = sup.stop_slow(name)
    term = sup.notes / f"{name}.term"
    if procfs.wait_for(term.exists, 10.0) is None:
        out.failed_windows += 1
        return
    out.windows += 1
    t0 = time.perf_counter()
    for offset in OFFSETS:
        if len(out.respawn_s) + out.timeouts >= len(victims):
            break
        time.sleep(max(0.0, t0 + offset - time.perf_counter()))
        if not procfs.alive(*ident):
            break  # the stop is over: a kill now would not measure what this is about
        victim = victims[len(out.respawn_s) + out.timeouts]
        before = set(tracker.poll())
        start = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        respawned = procfs.wait_for(lambda b=before: bool(tracker.poll_new() - b),
                                    plan.stop_timeout + 5.0)
        if respawned is None:
            out.timeouts += 1
            continue
        out.respawn_s.append(time.perf_counter() - start)
        out.within_stop += procfs.alive(*ident)
    if procfs.wait_for(lambda: not procfs.alive(*ident), plan.stop_timeout + 5.0) is not None:
        out.stop_s.append(time.perf_counter() - t0)
    if cli is not None:
        try:
            cli.wait(timeout=plan.stop_timeout + 5.0)
        except subprocess.TimeoutExpired:
            cli.kill()
            cli.wait()

