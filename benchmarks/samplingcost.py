"""The "sampling" scenario (reconciler only): what resource sampling costs (issue 12).

Two daemons with the same N sleepers, one after the other: one sampling every hour (in
effect never, within the window) and one at the default 5 s. Each converges, settles, then
idles for a window; the difference in idle CPU (% of one core) and RSS is sampling's cost.
Then, in this process, one sampling round of the N sleepers is timed (`Sampler.sample`,
CPU time of this process), the figure the per-round cost comes from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import measure
from benchmarks.supervisors import Reconciler, Supervisor


@dataclass(frozen=True)
class SamplingPlan:
    n: int = 1000
    runs: int = 3
    idle_s: float = 60.0  # so the first round (it reads every limit) weighs little
    rounds: int = 20  # timed in-process
    settle_s: float = 2.0
    converge_timeout: float = 180.0


@dataclass
class SamplingResult(measure.OnOff):
    """`off`: sampling every hour; `on`: every 5 s."""

    n: int = 0
    round_ms: list[float] = field(default_factory=list)  # CPU per round, in-process


class SamplingReconciler(Reconciler):
    def __init__(self, workdir: Path, n: int, marker: str, interval: str) -> None:
        super().__init__(workdir, n, marker)
        self.interval = interval

    def argv(self) -> list[str]:
        return [*super().argv(), "--sample-interval", self.interval]


def run(plan: SamplingPlan, root: Path, marker: str) -> SamplingResult:
    out = SamplingResult(n=plan.n)
    for k in range(plan.runs):
        order = ("1h", "5s") if k % 2 == 0 else ("5s", "1h")
        for interval in order:
            _session(plan, root / f"sampling-{k}-{interval}", marker, interval, out,
                     time_rounds=(k == 0 and interval == "5s"))
    return out


def _session(plan: SamplingPlan, workdir: Path, marker: str, interval: str,
             out: SamplingResult, time_rounds: bool) -> None:
    def rounds(sup: Supervisor) -> None:
        if time_rounds and isinstance(sup, Reconciler):
            out.round_ms = _time_rounds(sup, plan.rounds)

    measure.on_off_session(SamplingReconciler(workdir, plan.n, marker, interval),
                           interval == "5s", out, converge_timeout=plan.converge_timeout,
                           settle_s=plan.settle_s, idle_s=plan.idle_s, then=rounds)


def _time_rounds(sup: Reconciler, rounds: int) -> list[float]:
    from reconciler.host.sampling import Sampler
    from reconciler.settings import resolve
    from reconciler.state.reader import open_reader

    with open_reader(resolve(sup.specs, sup.state)) as store:
        jobs = store.jobs()
    sampler, times = Sampler(), []
    for _ in range(rounds):
        start = time.process_time()
        sampler.sample(jobs)
        times.append((time.process_time() - start) * 1000)
    return times


def summary(res: SamplingResult) -> dict[str, float | None]:
    round_ms = measure.median_or_none(res.round_ms)
    return {**res.idle_summary(), "round_ms": round_ms,
            "round_pct": None if round_ms is None else 100 * round_ms / 1000 / 5.0}
