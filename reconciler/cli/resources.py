"""What `reconcile stats` and `reconcile top` show (DESIGN §8.4): series math (CPU % from the
cumulative counter, resampling, sparklines), human units, and the texts and JSON documents.

Pure functions of samples, anomalies and events (and `now`): no store, no terminal, no host,
so the arithmetic is unit-tested without processes (tests/test_stats.py).

Decisions (docs/operations.md, "Resources: top and stats"):
- CPU % is of one core: the difference of the cumulative `cpu_seconds` between two consecutive
  samples over the time between them. A counter that drops (a member exited, a new process
  took over) has no rate for that step: the series starts a new segment there (a gap in the
  sparkline, `null` in JSON), never a negative value.
- A sparkline has at most `WIDTH` columns: a longer series is cut into `WIDTH` runs of
  consecutive samples and each run shows its *highest* value, so a short spike is never
  averaged away. CPU is scaled from 0 (idle reads as ▁); RSS and fds from their window's
  minimum to maximum (printed beside the line, so the scale is known).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from reconciler.state.records import Anomaly, Event, Sample
from reconciler.text import printable

TICKS = "▁▂▃▄▅▆▇█"
WIDTH = 60  # columns of a sparkline: one hour at the default 5 s interval is 720 samples
SORT_KEYS = ("cpu", "rss")
ANOMALY_EVENT_KINDS = ("anomaly", "anomaly-recovered")

# --- series --------------------------------------------------------------------------------


def cpu_rate(previous: Sample, current: Sample) -> float | None:
    """% of one core between two samples of a job; None where no honest rate exists (no time
    passed, or the counter dropped: a new segment starts at `current`)."""
    elapsed = current.at - previous.at
    used = current.cpu_seconds - previous.cpu_seconds
    if elapsed <= 0 or used < 0:
        return None
    return 100.0 * used / elapsed


def cpu_percents(samples: Sequence[Sample]) -> list[float | None]:
    """One value per sample (oldest first): the first of a series has no rate."""
    if not samples:
        return []
    return [None, *(cpu_rate(a, b) for a, b in pairwise(samples))]


def resample(values: Sequence[float | None], width: int = WIDTH) -> list[float | None]:
    """At most `width` values: consecutive runs of equal length (±1), each its highest known
    value (None: nothing known in that run)."""
    if width <= 0:
        return []
    count = len(values)
    if count <= width:
        return list(values)
    out: list[float | None] = []
    for column in range(width):
        run = [v for v in values[column * count // width:(column + 1) * count // width]
               if v is not None]
        out.append(max(run) if run else None)
    return out


def sparkline(values: Sequence[float | None], lo: float | None = None,
              hi: float | None = None) -> str:
    """One tick per value, from ▁ (`lo`, default the minimum) to █ (`hi`, default the
    maximum); a space where the value is unknown. A flat series is all ▁."""
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    lo = min(known) if lo is None else lo
    hi = max(known) if hi is None else hi
    span = hi - lo
    ticks = []
    for value in values:
        if value is None:
            ticks.append(" ")
            continue
        level = 0 if span <= 0 else round((value - lo) / span * (len(TICKS) - 1))
        ticks.append(TICKS[min(max(level, 0), len(TICKS) - 1)])
    return "".join(ticks)


def human_bytes(count: float | None) -> str:
    """`512B`, `1.5KiB`, `12.3MiB`, `1.25GiB` (binary units, as the spec's `max_rss`)."""
    if count is None:
        return "-"
    if count < 1024:
        return f"{int(count)}B"
    for unit, scale in (("KiB", 2**10), ("MiB", 2**20)):
        if count < 1024 * scale:
            return f"{count / scale:.1f}{unit}"
    return f"{count / 2**30:.2f}GiB"


def fds_text(sample: Sample) -> str:
    """`12` or `820 (80%)` of the soft limit; `-` when they were not ours to count."""
    if sample.open_fds is None:
        return "-"
    if not sample.fd_limit:
        return str(sample.open_fds)
    return f"{sample.open_fds} ({100 * sample.open_fds // sample.fd_limit}%)"


def clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def span_text(seconds: float) -> str:
    """`45s`, `12m`, `1h0m`: how long a window covers."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60}m"


# --- stats ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobHistory:
    """One job's samples in the window (oldest first), its anomalies in force and its recent
    anomaly events: what `stats` shows for it."""

    samples: tuple[Sample, ...]
    anomalies: tuple[Anomaly, ...]
    events: tuple[Event, ...]

    @property
    def last(self) -> Sample:
        return self.samples[-1]


def histories(samples: Iterable[Sample], anomalies: Iterable[Anomaly],
              events: Iterable[Event]) -> list[JobHistory]:
    """Per job id (a new generation is a new job id), ordered by first sample: newest last."""
    by_job: dict[str, list[Sample]] = {}
    for sample in sorted(samples, key=lambda s: s.at):
        by_job.setdefault(sample.job_id, []).append(sample)
    anomalies, events = list(anomalies), list(events)
    return [JobHistory(tuple(series), tuple(a for a in anomalies if a.job_id == job_id),
                       tuple(e for e in events if e.job_id == job_id))
            for job_id, series in by_job.items()]


def sample_json(sample: Sample, cpu_percent: float | None) -> dict[str, Any]:
    return {"at": sample.at, "rss_bytes": sample.rss_bytes,
            "cpu_percent": None if cpu_percent is None else round(cpu_percent, 2),
            "cpu_seconds": sample.cpu_seconds, "open_fds": sample.open_fds,
            "fd_limit": sample.fd_limit, "threads": sample.threads, "members": sample.members,
            "oom_score": sample.oom_score, "state": sample.state, "wchan": sample.wchan,
            "dstate": sample.dstate, "zombies": sample.zombies}


def anomaly_json(anomaly: Anomaly) -> dict[str, Any]:
    return {"rule": anomaly.rule, "since": anomaly.since, "detail": anomaly.detail}


def anomaly_event_json(event: Event) -> dict[str, Any]:
    return {"at": event.at, "kind": event.kind, "rule": event.detail.get("rule"),
            "reason": event.reason, "detail": event.detail}


def stats_json(jobs: Sequence[JobHistory]) -> list[dict[str, Any]]:
    """`stats -o json`: one object per job id, `{service, action, job_id, samples,
    anomalies, events}` (events: the anomaly onsets and recoveries in the window)."""
    out = []
    for job in jobs:
        last = job.last
        out.append({
            "service": last.service, "action": last.action, "job_id": last.job_id,
            "samples": [sample_json(s, cpu) for s, cpu in
                        zip(job.samples, cpu_percents(job.samples), strict=True)],
            "anomalies": [anomaly_json(a) for a in job.anomalies],
            "events": [anomaly_event_json(e) for e in job.events]})
    return out


def _number(value: float) -> str:
    return f"{value:.1f}"


def series_line(label: str, values: Sequence[float | None], show: Callable[[float], str],
                *, from_zero: bool = False) -> str:
    """`RSS  ▂▃▅▇█  min 10.0MiB  max 50.0MiB  last 45.0MiB`; `show` formats a value."""
    known = [v for v in values if v is not None]
    line = sparkline(resample(values), lo=0.0 if from_zero else None)
    if not known:
        return f"  {label:<7} {line}  no values"
    last = next(v for v in reversed(values) if v is not None)
    return (f"  {label:<7} {line}  min {show(min(known))}  "
            f"max {show(max(known))}  last {show(last)}")


def stats_lines(jobs: Sequence[JobHistory], now: float | None = None) -> list[str]:
    """`stats`: per job a title, sparklines for RSS, CPU % and fds, the latest values, the
    anomalies in force and the recent anomaly events."""
    now = time.time() if now is None else now
    lines: list[str] = []
    for job in jobs:
        if lines:
            lines.append("")
        lines += _job_lines(job, now)
    return [printable(line) for line in lines]  # wchan, details: not ours to trust


def _job_lines(job: JobHistory, now: float) -> list[str]:
    first, last = job.samples[0], job.last
    fds: list[float | None] = [s.open_fds for s in job.samples]
    limit = f" (limit {last.fd_limit})" if last.fd_limit else ""
    lines = [f"{last.service}.{last.action}  job {last.job_id}  {len(job.samples)} samples "
             f"{clock(first.at)}–{clock(last.at)} ({span_text(last.at - first.at)})",
             series_line("RSS", [float(s.rss_bytes) for s in job.samples], human_bytes),
             series_line("CPU%", cpu_percents(job.samples), _number, from_zero=True),
             series_line("FDS", fds, lambda v: str(int(v))) + limit,
             f"  last: threads {last.threads} · members {last.members} · oom_score "
             f"{'-' if last.oom_score is None else last.oom_score} · state "
             f"{last.state or '-'}" + (f" ({last.wchan})" if last.wchan not in ("", "0")
                                      else "")]
    if not job.anomalies:
        lines.append("  anomalies: none")
    for anomaly in job.anomalies:
        lines.append(f"  anomaly {anomaly.rule} since {clock(anomaly.since)} "
                     f"({span_text(now - anomaly.since)} ago): {anomaly.detail}")
    for event in job.events:
        rule = event.detail.get("rule", "")
        lines.append(f"  {clock(event.at)}  {event.kind} {rule}: {event.reason}".rstrip(": "))
    return lines


# --- top -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TopRow:
    """One running job in `top`: its newest sample, the CPU % since the one before, its pid
    (from the job record) and the rules it breaks now."""

    sample: Sample
    cpu_percent: float | None
    pid: int | None
    rules: tuple[str, ...]


def sort_rows(rows: Iterable[TopRow], key: str) -> list[TopRow]:
    """Highest first (`cpu` or `rss`), then by name: a stable order between refreshes."""
    def order(row: TopRow) -> tuple[float, str, str]:
        value = (row.cpu_percent or 0.0) if key == "cpu" else float(row.sample.rss_bytes)
        return (-value, row.sample.service, row.sample.action)

    return sorted(rows, key=order)


TOP_COLUMNS = ("SERVICE.ACTION", "PID", "CPU%", "RSS", "THREADS", "FDS", "STATE", "ANOMALIES")


def top_header(rows: Sequence[TopRow], key: str, now: float) -> str:
    flagged = sum(1 for row in rows if row.rules)
    return (f"reconcile top · {clock(now)} · {len(rows)} job{'s' if len(rows) != 1 else ''} · "
            f"{flagged} with anomalies · sorted by {key}")


def top_lines(rows: Sequence[TopRow], key: str, now: float | None = None) -> list[str]:
    """The header line and the table (sorted by `key`): what `top` prints once, or draws
    at every refresh."""
    now = time.time() if now is None else now
    ordered = sort_rows(rows, key)
    table = [TOP_COLUMNS, *(_top_cells(row) for row in ordered)]
    widths = [max(len(r[i]) for r in table) for i in range(len(TOP_COLUMNS) - 1)]
    lines = [top_header(rows, key, now), ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True))
              + "  " + r[-1] for r in table]
    if not rows:
        lines.append("no samples of running jobs yet (the daemon samples them every "
                     "--sample-interval, 5s by default)")
    return [printable(line) for line in lines]


def _top_cells(row: TopRow) -> tuple[str, ...]:
    sample = row.sample
    return (f"{sample.service}.{sample.action}", str(row.pid or "-"),
            "-" if row.cpu_percent is None else f"{row.cpu_percent:.1f}",
            human_bytes(sample.rss_bytes), str(sample.threads), fds_text(sample),
            sample.state or "-", ",".join(row.rules) or "-")
