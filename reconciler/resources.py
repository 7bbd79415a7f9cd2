"""The daemon's resource monitor (DESIGN §8.4): samples every running job on its own thread,
judges the anomaly rules and the `max_rss` limits, and hands each round to the loop.

Reading /proc for a thousand jobs takes tens of milliseconds, so it happens here, never in
a pass. The loop, which owns the only writer connection, stores each round (`Round`) and
acts on it: an anomaly that starts or ends is an event, a job over its `max_rss` is
restarted by the next pass (reason `memory-limit`). A round that finds a job over its limit
kicks the loop at once, so the restart comes within the sample that saw it (within two
samples of the growth that crossed the limit).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from reconciler.anomalies import DEFAULT_RULES, GROWTH_RULES, Rules, evaluate, quiet_now
from reconciler.host.sampling import SampleClock, Sampler
from reconciler.identity import Identity
from reconciler.state.records import JobRecord, Sample
from reconciler.timing import THREAD_JOIN_SECONDS

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 5.0
WINDOW_SECONDS = 3600.0  # samples kept in the database
# Points per growth window in the thinned series the growth rules fit their line through.
TREND_POINTS = 20
# The growth rules (a line fitted through ten minutes of samples) are judged every this
# many seconds, not every round: the trends they look for take minutes, and fitting a
# thousand lines every 5 s cost more than sampling.
GROWTH_EVERY_SECONDS = 60.0
# An anomaly in force ends only after this many rounds in a row without it (or when its job
# stops running): a value hovering at a threshold, or one round that could not read a
# process, must not make an onset and a recovery event every round.
RECOVER_ROUNDS = 3
# Rounds waiting for the loop; beyond this the oldest is dropped (a gap in the samples)
# rather than memory growing while a pass hangs.
ROUNDS_KEPT = 12

JobsNow = Callable[[], Sequence[JobRecord]]
Limits = Callable[[], Mapping[tuple[str, str], int]]  # (service, action) -> max_rss bytes


@dataclass(frozen=True, slots=True)
class Round:
    """One sampling round: the samples, the rules each job breaks now, and the jobs over
    their memory limit (identity: the process that was over, so a restarted one is not
    stopped for its predecessor's sin)."""

    samples: tuple[Sample, ...]
    anomalies: dict[str, dict[str, str]]  # job id -> rule -> why
    over_limit: dict[str, tuple[Identity, str]] = field(default_factory=dict)


class ResourceMonitor:
    """Samples `jobs()` every `interval` seconds on its own thread; each round goes into
    `rounds` and `kick()` wakes the loop."""

    def __init__(self, jobs: JobsNow, limits: Limits, kick: Callable[[], None], *,
                 interval: float = DEFAULT_INTERVAL_SECONDS, rules: Rules = DEFAULT_RULES,
                 sampler: Sampler | None = None) -> None:
        self.interval = interval
        self.rules = rules
        # appended here, popped by the loop (deque's append/popleft are thread-safe)
        self.rounds: deque[Round] = deque(maxlen=ROUNDS_KEPT)
        self._held: dict[tuple[str, str], tuple[str, int]] = {}  # (job, rule) -> why, misses
        self._jobs = jobs
        self._limits = limits
        self._kick = kick
        self._sampler = sampler or Sampler()
        self._recent: dict[str, deque[Sample]] = {}  # job id -> the last dstate window
        self._trend: dict[str, deque[Sample]] = {}  # job id -> thinned growth window
        self._growth: dict[str, dict[str, str]] = {}  # job id -> growth rules broken
        self._growth_at = -GROWTH_EVERY_SECONDS  # sample time of the last growth judgement
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resources", daemon=True)

    def resume_after(self, newest: float | None) -> None:
        """Before `start`: sample times come after `newest` (stored by a previous daemon),
        even when the wall clock is now behind it."""
        if newest is not None:
            self._sampler.clock = SampleClock(start_after=newest)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(THREAD_JOIN_SECONDS)
        if not self._thread.is_alive():  # never close fds a round still reads
            self._sampler.close()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    self.rounds.append(self.take_round())
                    self._kick()
                except Exception:  # one bad round must not end sampling for good
                    log.exception("resource sampling failed; trying again next interval")
        finally:
            self._sampler.close()  # this thread's fds: closed by it, never under a round

    def take_round(self) -> Round:
        jobs = list(self._jobs())
        samples = self._sampler.sample(jobs)
        anomalies: dict[str, dict[str, str]] = {}
        growth_due = bool(samples) and (
            samples[0].at - self._growth_at >= min(GROWTH_EVERY_SECONDS, self.interval * 12))
        spacing = self.rules.growth_window / TREND_POINTS
        for sample in samples:
            trend = self._trend.setdefault(sample.job_id, deque())
            _thin_append(trend, sample, spacing, self.rules.growth_window * 1.1)
            if growth_due:
                self._growth[sample.job_id] = {
                    k: v for k, v in evaluate(trend, self.rules).items() if k in GROWTH_RULES}
            recent = self._recent_of(sample)
            found = {} if quiet_now(sample, self.rules) else evaluate(
                recent, self.rules, growth=False)
            if self._growth.get(sample.job_id):
                found = {**found, **self._growth[sample.job_id]}
            if found:
                anomalies[sample.job_id] = found
        if growth_due:  # once a minute: forget the series of jobs no longer sampled
            self._growth_at = samples[0].at
            sampled = {s.job_id for s in samples}
            self._recent = {k: v for k, v in self._recent.items() if k in sampled}
            self._trend = {k: v for k, v in self._trend.items() if k in sampled}
            self._growth = {k: v for k, v in self._growth.items() if k in sampled}
        in_force = self._hold(anomalies, jobs) if anomalies or self._held else {}
        return Round(tuple(samples), in_force, over_memory(jobs, samples, self._limits()))

    def _recent_of(self, sample: Sample) -> Sequence[Sample]:
        """The samples the rules about now look at: this one alone, or, while the job has a
        member in D state, every sample since that began (the D rule needs 30 s of them).
        Only those jobs keep a series: a thousand deques updated every round for a rule
        that almost never holds cost more than the rule."""
        if not sample.dstate:
            self._recent.pop(sample.job_id, None)
            return (sample,)
        recent = self._recent.setdefault(sample.job_id, deque())
        recent.append(sample)
        # spans the rule and at least two intervals: at a 60 s interval, the 45 s the rule
        # needs to see would otherwise hold one sample only and never fire
        span = max(self.rules.dstate_seconds * 1.5, self.interval * 2.5)
        while recent[0].at < sample.at - span:
            recent.popleft()
        return recent

    def _hold(self, found: dict[str, dict[str, str]],
              jobs: Sequence[JobRecord]) -> dict[str, dict[str, str]]:
        """The anomalies in force: those found now, and those found lately that have not
        been missing for RECOVER_ROUNDS rounds in a row (while their job still runs)."""
        running = {j.id for j in jobs if j.pid is not None}
        held: dict[tuple[str, str], tuple[str, int]] = {
            (job_id, rule): (why, 0) for job_id, rules in found.items()
            for rule, why in rules.items()}
        for key, (why, misses) in self._held.items():
            if key not in held and key[0] in running and misses + 1 < RECOVER_ROUNDS:
                held[key] = (why, misses + 1)
        self._held = held
        in_force: dict[str, dict[str, str]] = {}
        for (job_id, rule), (why, _) in held.items():
            in_force.setdefault(job_id, {})[rule] = why
        return in_force


def over_memory(jobs: Sequence[JobRecord], samples: Sequence[Sample],
                limits: Mapping[tuple[str, str], int]) -> dict[str, tuple[Identity, str]]:
    """Jobs whose RSS (summed over their processes) is above their `max_rss`."""
    if not limits:
        return {}
    by_id = {j.id: j for j in jobs}
    over: dict[str, tuple[Identity, str]] = {}
    for sample in samples:
        limit = limits.get(sample.key)
        job = by_id.get(sample.job_id)
        if limit is None or job is None or job.identity is None or sample.rss_bytes <= limit:
            continue
        over[sample.job_id] = (job.identity, f"memory-limit: RSS {_mib(sample.rss_bytes)} over "
                                             f"max_rss {_mib(limit)}")
    return over


def _thin_append(series: deque[Sample], sample: Sample, spacing: float, span: float) -> None:
    """The growth rules' series: a point every `spacing` seconds (a twentieth of the growth
    window), the newest `span` seconds. Ten minutes of every sample of a thousand jobs would
    be a hundred thousand objects held for a line fit; the newest point is at most
    `spacing` old when the rules look (they judge minutes of growth)."""
    if series and sample.at - series[-1].at < spacing and sample.cpu_seconds >= (
            series[-1].cpu_seconds):
        return
    series.append(sample)
    while series[0].at < sample.at - span:
        series.popleft()


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:.1f} MiB"
