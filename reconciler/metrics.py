"""Prometheus metrics of the controller (DESIGN §8.3): what the daemon serves on
`/metrics` and what `--once --metrics-textfile` writes.

Pass-level series (passes by result, their duration, the last success) are prometheus_client
instruments the daemon updates after each pass, with its standard `process_*` collector.
Everything about jobs is rendered at scrape time (`JobSeries`) from the last pass's result
(one immutable snapshot, swapped whole, so a scrape on the server's thread never sees half a
pass), so the series of a removed job disappear with it instead of lingering as a stale
gauge. CPU, memory and open fds come from /proc at scrape time, verified against each job's
identity (a recycled pid is never measured as ours).

Naming follows Prometheus conventions: base units (seconds, bytes), `_total` on counters,
and no pid or revision label anywhere but on an `_info` series, so a restart or a new commit
does not mint a new series for every job.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector

from reconciler import __version__
from reconciler.controller import PassResult
from reconciler.files import write_atomic
from reconciler.host.usage import Counters, read_counters
from reconciler.identity import Identity
from reconciler.state.records import JobRecord, Phase

# Every phase a job can be seen in (`removed` jobs are gone from the metrics).
PHASES: tuple[str, ...] = tuple(p for p in get_args(Phase) if p != "removed")
# A pass takes milliseconds when nothing changes and seconds when a thousand jobs start.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# What /metrics serves: the text format (which every Prometheus and node_exporter reads).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
TEXTFILE_MODE = 0o644  # node_exporter runs as its own user and must read it

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
        self._anomalies: Mapping[str, Mapping[str, str]] = {}
        self._jobs = JobSeries(read_counters, lambda: self._restarts.total,
                               lambda: self._anomalies)
        if process:
            ProcessCollector(registry=self.registry)

    def exposition(self) -> bytes:
        """Every series, in the text exposition format."""
        return generate_latest(self.registry) + self._jobs.render(self._seen).encode()

    def write_textfile(self, path: Path) -> None:
        """For node_exporter's textfile collector: replaced atomically (a temp file beside
        it, renamed over it; never written through a symlink), so a reader never sees half
        a file. The directory must exist: one we created would be ours alone (0700) and
        node_exporter could not read it."""
        if not path.parent.is_dir():
            raise FileNotFoundError(f"{path.parent} is not a directory")
        write_atomic(path, self.exposition(), TEXTFILE_MODE)

    def anomalies(self, found: Mapping[str, Mapping[str, str]]) -> None:
        """The anomalies of the last sampling round (job id -> rule -> why)."""
        self._anomalies = found

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


# (name, type, help) of the per-job series that change only when the job's record does
_RECORD_FAMILIES = (
    ("reconciler_job_phase", "gauge", "1 for the phase the job is in, else 0."),
    ("reconciler_job_ready", "gauge", "1 when the job is ready."),
    ("reconciler_job_restarts_total", "counter",
     "Restarts of the job since its generation began."),
    ("reconciler_job_start_time_seconds", "gauge",
     "When the job's current process started (Unix time)."),
    ("reconciler_job_last_exit_code", "gauge",
     "Exit code of the job's last run (negative: the signal that ended it)."),
)
# ... and of those read from /proc at each scrape
_USAGE_FAMILIES = (
    ("reconciler_job_cpu_seconds_total", "counter",
     "CPU time (user + system) of the job's main process."),
    ("reconciler_job_resident_memory_bytes", "gauge",
     "Resident memory of the job's main process."),
    ("reconciler_job_open_fds", "gauge", "Open file descriptors of the job's main process."),
)
_RecordLines = tuple[str, ...]  # one chunk per _RECORD_FAMILIES entry, then the label text


class JobSeries:
    """The per-job series, the host-level aggregates and the source, rendered in the text
    exposition format at scrape time from the last pass's snapshot.

    Rendered here rather than by prometheus_client's generic collector path: at a thousand
    jobs a scrape is ~17 000 samples, which that path formats one object at a time (about
    190 ms here; the goal is 50 ms). A job's record-derived lines are formatted once and
    reused while its record says the same; only CPU, memory and fds are formatted anew.
    The output is checked by prometheus_client's own parser in the tests.
    """

    def __init__(self, counters: ReadCounters, restarts: Callable[[], int],
                 anomalies: Callable[[], Mapping[str, Mapping[str, str]]]) -> None:
        self._counters = counters
        self._restarts = restarts
        self._anomalies = anomalies
        self._cache: dict[tuple[object, ...], _RecordLines] = {}

    def render(self, seen: Seen | None) -> str:
        jobs = current_jobs(seen.jobs) if seen is not None else []
        lines = self._record_lines(jobs)
        out: list[str] = []
        for index, family in enumerate(_RECORD_FAMILIES):
            out.append(_header(*family))
            out.extend(chunk[index] for chunk in lines)
        out.extend(_usage_lines(jobs, lines, self._counters(
            {j.id: j.identity for j in jobs if j.pid is not None and j.identity is not None})))
        out.append(_anomaly_lines(jobs, lines, self._anomalies()))
        out.append(_host_lines(seen.jobs if seen is not None else (), self._restarts()))
        if seen is not None:
            out.append(_source_lines(seen))
        return "".join(out)

    def _record_lines(self, jobs: list[JobRecord]) -> list[_RecordLines]:
        """Every job's record-derived chunks, from the cache where its record is unchanged
        (the cache keeps only the jobs of this scrape, so it never outgrows the host)."""
        fresh: dict[tuple[object, ...], _RecordLines] = {}
        found: list[_RecordLines] = []
        for job in jobs:
            key = (job.service, job.action, job.phase, job.ready, job.restart_count,
                   job.pid, job.started_at, job.last_exit_code)
            chunk = self._cache.get(key) or _record_chunk(job)
            fresh[key] = chunk
            found.append(chunk)
        self._cache = fresh  # one assignment: concurrent scrapes each see a whole cache
        return found


def _header(name: str, kind: str, help_text: str) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def _label(value: str) -> str:
    """A label value, escaped as the text format says (names are plain, but be sure)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _record_chunk(job: JobRecord) -> _RecordLines:
    labels = f'service="{_label(job.service)}",action="{_label(job.action)}"'
    phases = "".join(f'reconciler_job_phase{{{labels},phase="{phase}"}} '
                     f'{1 if job.phase == phase else 0}\n' for phase in PHASES)
    started = (f"reconciler_job_start_time_seconds{{{labels}}} {_number(job.started_at)}\n"
               if job.pid is not None and job.started_at is not None else "")
    exit_code = (f"reconciler_job_last_exit_code{{{labels}}} {job.last_exit_code}\n"
                 if job.last_exit_code is not None else "")
    return (phases, f"reconciler_job_ready{{{labels}}} {1 if job.ready else 0}\n",
            f"reconciler_job_restarts_total{{{labels}}} {job.restart_count}\n",
            started, exit_code, labels)


def _usage_lines(jobs: list[JobRecord], chunks: list[_RecordLines],
                 counters: Mapping[str, Counters]) -> list[str]:
    cpu, rss, fds = (_header(*family) for family in _USAGE_FAMILIES)
    cpu_lines, rss_lines, fd_lines = [cpu], [rss], [fds]
    for job, chunk in zip(jobs, chunks, strict=True):
        used = counters.get(job.id)
        if used is None:
            continue
        labels = chunk[-1]
        cpu_lines.append(f"reconciler_job_cpu_seconds_total{{{labels}}} "
                         f"{_number(used.cpu_seconds)}\n")
        rss_lines.append(f"reconciler_job_resident_memory_bytes{{{labels}}} {used.rss_bytes}\n")
        if used.open_fds is not None:
            fd_lines.append(f"reconciler_job_open_fds{{{labels}}} {used.open_fds}\n")
    return [*cpu_lines, *rss_lines, *fd_lines]


def _anomaly_lines(jobs: list[JobRecord], chunks: list[_RecordLines],
                   anomalies: Mapping[str, Mapping[str, str]]) -> str:
    """1 per rule a job breaks now (docs/resources.md); a job without anomalies has none."""
    lines = [_header("reconciler_job_anomaly", "gauge",
                     "1 for each resource anomaly rule the job breaks now.")]
    for job, chunk in zip(jobs, chunks, strict=True):
        for rule in sorted(anomalies.get(job.id, {})):
            lines.append(f'reconciler_job_anomaly{{{chunk[-1]},rule="{_label(rule)}"}} 1\n')
    return "".join(lines)


def _host_lines(jobs: Iterable[JobRecord], restarts: int) -> str:
    """What a fleet view federates instead of the per-job series: a thousand hosts times a
    thousand jobs times ~17 series each is past what one Prometheus holds. `restarts` is the
    host's running total (`RestartTotal`)."""
    live = [j for j in jobs if j.phase != "removed"]
    by_phase: Tally[str] = Tally(j.phase for j in live)
    return "".join([
        _header("reconciler_jobs", "gauge", "Jobs on this host, by phase."),
        *(f'reconciler_jobs{{phase="{phase}"}} {by_phase.get(phase, 0)}\n' for phase in PHASES),
        _header("reconciler_restarts_total", "counter",
                "Restarts summed over this host's jobs."),
        f"reconciler_restarts_total {restarts}\n"])


def _source_lines(seen: Seen) -> str:
    dirty = "" if seen.dirty is None else str(seen.dirty).lower()
    return "".join([
        _header("reconciler_source_info", "gauge",
                "The specs dir's revision the last pass saw (value 1)."),
        f'reconciler_source_info{{revision="{_label(seen.revision or "")}",'
        f'applied_revision="{_label(seen.applied_revision or "")}",dirty="{dirty}"}} 1\n',
        _header("reconciler_spec_file_errors", "gauge",
                "Spec files that do not load cleanly (each runs on its last good version, "
                "if any)."),
        f"reconciler_spec_file_errors {seen.spec_file_errors}\n"])


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
        "reconciler_job_anomaly": ("",),
        "reconciler_jobs": ("",), "reconciler_restarts": ("_total",),
        "process_virtual_memory_bytes": ("",), "process_resident_memory_bytes": ("",),
        "process_start_time_seconds": ("",), "process_cpu_seconds": ("_total",),
        "process_open_fds": ("",), "process_max_fds": ("",),
    }
    return frozenset(name + suffix for name, suffixes in families.items() for suffix in suffixes)


SAMPLE_NAMES = _sample_names()
