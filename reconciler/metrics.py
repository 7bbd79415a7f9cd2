"""Prometheus metrics of the controller (DESIGN §8.3): what the daemon serves on
`/metrics` and what `--once --metrics-textfile` writes.

Pass-level series (passes by result, their duration, the last success) are prometheus_client
instruments the daemon updates after each pass. Everything about jobs is read at scrape time
by a custom collector from the last pass's result (one immutable snapshot, swapped whole, so
a scrape on the server's thread never sees half a pass), so the series of a removed job
disappear with it instead of lingering as a stale gauge. CPU, memory and open fds come from
/proc at scrape time, verified against each job's identity (a recycled pid is never
measured as ours).

Naming follows Prometheus conventions: base units (seconds, bytes), `_total` on counters,
and no pid or revision label anywhere but on an `_info` series, so a restart or a new commit
does not mint a new series for every job.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from reconciler import __version__
from reconciler.controller import PassResult
from reconciler.host.usage import Counters, read_counters
from reconciler.identity import Identity
from reconciler.state.records import JobRecord, Phase

# Every phase a job can be seen in (`removed` jobs are gone from the metrics).
PHASES: tuple[str, ...] = tuple(p for p in get_args(Phase) if p != "removed")
# A pass takes milliseconds when nothing changes and seconds when a thousand jobs start.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
JOB_LABELS = ("service", "action")

# prometheus_client adds a `<name>_created` timestamp series to every counter and histogram
# by default: a second series per counter that no dashboard here uses.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in 0.2x

ReadCounters = Callable[[Mapping[str, Identity]], Mapping[str, Counters]]


@dataclass(frozen=True, slots=True)
class Seen:
    """What the last successful pass saw, as the metrics report it."""

    jobs: tuple[JobRecord, ...]
    revision: str | None
    applied_revision: str | None
    dirty: bool | None
    spec_file_errors: int  # files not loading cleanly (+1 when the specs dir is unreadable)


def seen_of(result: PassResult) -> Seen:
    loaded = result.loaded
    broken = sum(1 for outcome in loaded.files.values() if outcome.errors)
    return Seen(jobs=result.jobs, revision=result.source.revision,
                applied_revision=result.applied_revision, dirty=result.source.dirty,
                spec_file_errors=broken + (loaded.dir_error is not None))


class Metrics:
    """The registry of one daemon (or one `--once` run) and the instruments passes update.

    `process` adds prometheus_client's standard `process_*` series of this process (the
    daemon's own CPU, memory and fds); a one-off textfile leaves them out, since they would
    describe a process that has exited by the time node_exporter reads them.
    `read_counters` is the seam to /proc.
    """

    def __init__(self, *, process: bool = True, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 read_counters: ReadCounters = read_counters) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._clock = clock
        self._monotonic = monotonic  # for ages: the wall clock may step (NTP, a VM resumed)
        self._seen: Seen | None = None
        self._last_success: float | None = None
        self._restarts = RestartTotal()
        build = Gauge("reconciler_build_info", "The reconciler's version (value 1).",
                      ["version"], registry=self.registry)
        build.labels(version=__version__).set(1)
        self._passes = Counter("reconciler_reconcile", "Reconcile passes, by result.",
                               ["result"], registry=self.registry)
        for result in ("success", "error"):
            self._passes.labels(result=result)  # both series exist from the start
        self._duration = Histogram("reconciler_reconcile_duration_seconds",
                                   "How long reconcile passes took.",
                                   buckets=DURATION_BUCKETS, registry=self.registry)
        self._success_at = Gauge("reconciler_last_successful_reconcile_timestamp_seconds",
                                 "When the last successful pass ended (Unix time).",
                                 registry=self.registry)
        self.registry.register(JobCollector(lambda: self._seen, read_counters,
                                            lambda: self._restarts.total))
        if process:
            ProcessCollector(registry=self.registry)

    def passed(self, seen: Seen, seconds: float) -> None:
        """A pass ran to its end (spec errors included: those are `spec_file_errors`)."""
        self._restarts.update(seen.jobs)
        self._seen = seen
        self._passes.labels(result="success").inc()
        self._duration.observe(seconds)
        self._last_success = self._monotonic()
        self._success_at.set(self._clock())

    def failed(self, seconds: float) -> None:
        """A pass raised: the jobs keep what the last successful pass saw."""
        self._passes.labels(result="error").inc()
        self._duration.observe(seconds)

    def healthy(self, within: float) -> bool:
        """`/healthz`: a pass succeeded within the last `within` seconds."""
        last = self._last_success
        return last is not None and self._monotonic() - last <= within

    def seconds_since_success(self) -> float | None:
        last = self._last_success
        return None if last is None else self._monotonic() - last


class RestartTotal:
    """The host's restarts as a real counter. A plain sum over the current jobs drops when
    a job that restarted goes away (removed, or replaced by a new generation starting at 0),
    and Prometheus reads any drop as a reset: `increase()` would count every remaining
    restart again. So the total only ever adds what each job's count grew by."""

    def __init__(self) -> None:
        self.total = 0
        self._counted: dict[str, int] = {}  # job id -> its restart_count already in total

    def update(self, jobs: Iterable[JobRecord]) -> None:
        counted: dict[str, int] = {}
        for job in jobs:
            if job.phase == "removed":
                continue
            before = self._counted.get(job.id, 0)
            self.total += max(job.restart_count - before, 0)
            counted[job.id] = max(job.restart_count, before)
        self._counted = counted


class JobCollector(Collector):
    """The per-job series, the host-level aggregates and the source, read at scrape time
    from the last pass's snapshot (`seen`)."""

    def __init__(self, seen: Callable[[], Seen | None], counters: ReadCounters,
                 restarts: Callable[[], int]) -> None:
        self._seen = seen
        self._counters = counters
        self._restarts = restarts

    def collect(self) -> Iterator[Metric]:
        seen = self._seen()
        jobs = current_jobs(seen.jobs) if seen is not None else []
        counters = self._counters({j.id: j.identity for j in jobs
                                   if j.pid is not None and j.identity is not None})
        yield from job_families(jobs, counters)
        yield from host_families(seen.jobs if seen is not None else (), self._restarts())
        if seen is not None:
            yield from source_families(seen)


def current_jobs(jobs: Iterable[JobRecord]) -> list[JobRecord]:
    """One job per (service, action): while a new generation replaces an old one both have
    a record, and two series with the same labels would make the whole scrape invalid. The
    newest (the one the spec now describes) speaks for the action; the host-level counts
    still count both."""
    newest: dict[tuple[str, str], JobRecord] = {}
    for job in jobs:
        if job.phase == "removed":
            continue
        held = newest.get(job.key)
        if held is None or (job.created_at or 0.0) >= (held.created_at or 0.0):
            newest[job.key] = job
    return list(newest.values())


def job_families(jobs: list[JobRecord], counters: Mapping[str, Counters]) -> list[Metric]:
    phase = GaugeMetricFamily("reconciler_job_phase", "1 for the phase the job is in, else 0.",
                              labels=[*JOB_LABELS, "phase"])
    ready = GaugeMetricFamily("reconciler_job_ready", "1 when the job is ready.",
                              labels=JOB_LABELS)
    restarts = CounterMetricFamily("reconciler_job_restarts",
                                   "Restarts of the job since its generation began.",
                                   labels=JOB_LABELS)
    started = GaugeMetricFamily("reconciler_job_start_time_seconds",
                                "When the job's current process started (Unix time).",
                                labels=JOB_LABELS)
    exit_code = GaugeMetricFamily("reconciler_job_last_exit_code",
                                  "Exit code of the job's last run (negative: the signal "
                                  "that ended it).", labels=JOB_LABELS)
    cpu = CounterMetricFamily("reconciler_job_cpu_seconds",
                              "CPU time (user + system) of the job's main process.",
                              labels=JOB_LABELS)
    rss = GaugeMetricFamily("reconciler_job_resident_memory_bytes",
                            "Resident memory of the job's main process.", labels=JOB_LABELS)
    fds = GaugeMetricFamily("reconciler_job_open_fds",
                            "Open file descriptors of the job's main process.",
                            labels=JOB_LABELS)
    for job in jobs:
        names = [job.service, job.action]
        for name in PHASES:
            phase.add_metric([*names, name], 1.0 if job.phase == name else 0.0)
        ready.add_metric(names, 1.0 if job.ready else 0.0)
        restarts.add_metric(names, float(job.restart_count))
        if job.pid is not None and job.started_at is not None:
            started.add_metric(names, job.started_at)
        if job.last_exit_code is not None:
            exit_code.add_metric(names, float(job.last_exit_code))
        used = counters.get(job.id)
        if used is not None:
            cpu.add_metric(names, used.cpu_seconds)
            rss.add_metric(names, float(used.rss_bytes))
            if used.open_fds is not None:
                fds.add_metric(names, float(used.open_fds))
    return [phase, ready, restarts, started, exit_code, cpu, rss, fds]


def host_families(jobs: Iterable[JobRecord], restarts: int) -> list[Metric]:
    """What a fleet view federates instead of the per-job series: a thousand hosts times a
    thousand jobs times ~17 series each is past what one Prometheus holds. `restarts` is the
    host's running total (`RestartTotal`)."""
    live = [j for j in jobs if j.phase != "removed"]
    by_phase: Tally[str] = Tally(j.phase for j in live)
    count = GaugeMetricFamily("reconciler_jobs", "Jobs on this host, by phase.",
                              labels=["phase"])
    for name in PHASES:
        count.add_metric([name], float(by_phase.get(name, 0)))
    total = CounterMetricFamily("reconciler_restarts",
                                "Restarts summed over this host's jobs.",
                                value=float(restarts))
    return [count, total]


def source_families(seen: Seen) -> list[Metric]:
    info = GaugeMetricFamily("reconciler_source_info",
                             "The specs dir's revision the last pass saw (value 1).",
                             labels=["revision", "applied_revision", "dirty"])
    dirty = "" if seen.dirty is None else str(seen.dirty).lower()
    info.add_metric([seen.revision or "", seen.applied_revision or "", dirty], 1.0)
    errors = GaugeMetricFamily("reconciler_spec_file_errors",
                               "Spec files that do not load cleanly (each runs on its last "
                               "good version, if any).", value=float(seen.spec_file_errors))
    return [info, errors]


def _sample_names() -> frozenset[str]:
    """Every sample name a scrape can contain: the contract `contrib/` is tested against."""
    families = {
        "reconciler_build_info": ("",), "reconciler_reconcile": ("_total",),
        "reconciler_reconcile_duration_seconds": ("_bucket", "_sum", "_count"),
        "reconciler_last_successful_reconcile_timestamp_seconds": ("",),
        "reconciler_source_info": ("",), "reconciler_spec_file_errors": ("",),
        "reconciler_job_phase": ("",), "reconciler_job_ready": ("",),
        "reconciler_job_restarts": ("_total",), "reconciler_job_start_time_seconds": ("",),
        "reconciler_job_last_exit_code": ("",), "reconciler_job_cpu_seconds": ("_total",),
        "reconciler_job_resident_memory_bytes": ("",), "reconciler_job_open_fds": ("",),
        "reconciler_jobs": ("",), "reconciler_restarts": ("_total",),
        "process_virtual_memory_bytes": ("",), "process_resident_memory_bytes": ("",),
        "process_start_time_seconds": ("",), "process_cpu_seconds": ("_total",),
        "process_open_fds": ("",), "process_max_fds": ("",),
    }
    return frozenset(name + suffix for name, suffixes in families.items() for suffix in suffixes)


SAMPLE_NAMES = _sample_names()
