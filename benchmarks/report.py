"""Render the run as docs/benchmarks.md: machine, command, figures, ratios, goals."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import clistartup, metricscost, samplingcost
from benchmarks.logflood import FloodResult, MiB
from benchmarks.measure import SessionResult
from benchmarks.metricscost import MetricsPlan, MetricsResult
from benchmarks.samplingcost import SamplingPlan, SamplingResult
from benchmarks.slowstop import SlowStopResult

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BASE, CIRCUS, OURS = "supervisord", "circus", "reconciler"


NOTES = "## Findings"
# A changed spec file is read once it has been quiet for `--settle` (200 ms by default,
# DESIGN §8.1): the goal that was 300 ms grows by that settle time (issue 8).
SAVE_GOAL_MS = 400
SLOW_STOP_GOAL_MS = 50  # respawn p50 while another job takes 8 s to stop (issue 8)


def kept_notes(path: Path) -> str:
    """Hand-written analysis below `## Findings` survives a re-run; the figures above it are
    regenerated."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    at = text.find("\n" + NOTES)
    return "" if at < 0 else text[at:]


def machine() -> list[str]:
    mem_kib = _meminfo_kib("MemTotal")
    model = next((line.split(":", 1)[1].strip() for line in _lines("/proc/cpuinfo")
                  if line.startswith("model name")), platform.processor() or "?")
    return [f"- CPU: {model}, nproc {os.cpu_count()}",
            f"- memory: {mem_kib / 1024 / 1024:.1f} GiB",
            f"- kernel: {platform.release()}", f"- python: {platform.python_version()}"]


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _meminfo_kib(key: str) -> int:
    for line in _lines("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: with 30 samples p95 is the 29th, not an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def med(values: Sequence[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


Metric = Callable[[list[SessionResult]], float | None]


def _pooled(runs: list[SessionResult]) -> list[float]:
    return [t * 1000 for r in runs for t in r.respawn_s]


# (label, metric, goal as (kind, bound) where kind "ratio" or "delta" against supervisord)
METRICS: list[tuple[str, Metric, tuple[str, float] | None]] = [
    ("converge (s)", lambda rs: med([r.converge_s for r in rs]), ("ratio", 0.5)),
    ("respawn p50 (ms)", lambda rs: pct(_pooled(rs), 50), ("ratio", 0.05)),
    ("respawn p95 (ms)", lambda rs: pct(_pooled(rs), 95), None),
    ("respawn max (ms)", lambda rs: max(_pooled(rs), default=None), ("ratio", 0.1)),
    ("respawn samples / timeouts",
     lambda rs: None, None),
    ("idle CPU (% of a core)", lambda rs: med([r.cpu_pct for r in rs]), ("delta", 0.3)),
    ("RSS (MiB)", lambda rs: med([r.rss_mib for r in rs]), ("ratio", 2.0)),
]


def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}" if v >= 0.01 else f"{v:.2g}"


def verdict(ours: float | None, base: float | None, goal: tuple[str, float] | None) -> str:
    if goal is None or ours is None or base is None:
        return ""
    kind, bound = goal
    if kind == "ratio":
        ok = ours <= bound * base
        return f"≤ {bound:g}× → {'met' if ok else '**missed**'}"
    ok = ours <= base + bound
    return f"≤ +{bound:g} pt → {'met' if ok else '**missed**'}"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None or b == 0 else f"{a / b:.3g}×"


def table(results: dict[str, dict[int, list[SessionResult]]], n: int) -> list[str]:
    names = [s for s in (BASE, CIRCUS, OURS) if s in results]
    head = [*names, "circus ÷ supervisord", "reconciler ÷ supervisord", "goal (reconciler)"]
    lines = [f"### N = {n}", "", "| metric | " + " | ".join(head) + " |",
             "|---" * (len(head) + 1) + "|"]
    for label, metric, goal in METRICS:
        if label.startswith("respawn samples"):
            cells = [f"{len(_pooled(results[s][n]))} / "
                     f"{sum(r.respawn_timeouts for r in results[s][n])}" for s in names]
            lines.append(f"| {label} | " + " | ".join(cells) + " | | | |")
            continue
        vals = {s: metric(results[s][n]) for s in names}
        base = vals.get(BASE)
        cells = [fmt(vals[s]) for s in names]
        cells += [ratio(vals.get(CIRCUS), base), ratio(vals.get(OURS), base),
                  verdict(vals.get(OURS), base, goal)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


ONCE_GOAL_S = 2.0  # issue 13: `--once` from nothing at N = 1000


def reconciler_only(results: dict[str, dict[int, list[SessionResult]]],
                    noops: list[tuple[float | None, list[float]]], noop_n: int,
                    onces: Sequence[tuple[float | None, float]] = (),
                    once_n: int = 0) -> list[str]:
    lines = ["### Reconciler only", "", "| metric | median | p95 | max | goal |",
             "|---|---|---|---|---|"]
    passes = [t * 1000 for _, ts in noops for t in ts]
    if passes:
        good = med(passes) is not None and med(passes) <= 100  # type: ignore[operator]
        lines.append(f"| no-op pass, N={noop_n} (ms) | {fmt(med(passes))} | "
                     f"{fmt(pct(passes, 95))} | {fmt(max(passes))} | "
                     f"≤ 100 ms → {'met' if good else '**missed**'} |")
        once = [o for o, _ in noops if o is not None]
        lines.append(f"| `reconcile --once` from nothing, N={noop_n} (s) | {fmt(med(once))} | "
                     "| | |")
    timed = [o for o, _ in onces if o is not None]
    if onces:
        good = bool(timed) and len(timed) == len(onces) and (med(timed) or 0) <= ONCE_GOAL_S
        lines.append(f"| `reconcile --once` from nothing, N={once_n} (s) | {fmt(med(timed))} | "
                     f"| {fmt(max(timed)) if timed else '-'} | ≤ {ONCE_GOAL_S:g} s → "
                     f"{'met' if good else '**missed**'} |")
        # what swings with the file system's state, not with the code (measure.py)
        system = [cpu for _, cpu in onces]
        lines.append(f"| its system CPU, each run (s) | {fmt(med(system))} | | "
                     f"{fmt(max(system))} | {', '.join(fmt(c) for c in system)} |")
    for n, runs in results.get(OURS, {}).items():
        saves = [t * 1000 for r in runs for t in r.save_s]
        if saves:
            good = (med(saves) or 0) <= SAVE_GOAL_MS
            lines.append(f"| save → running with N={n} running (ms) | {fmt(med(saves))} | "
                         f"{fmt(pct(saves, 95))} | {fmt(max(saves))} | "
                         f"≤ {SAVE_GOAL_MS} ms → {'met' if good else '**missed**'} |")
    return [*lines, ""]


def slow_stop(res: SlowStopResult, command: str = "") -> list[str]:
    """The slow stop scenario's table; `command` is named when it ran on its own."""
    times = [t * 1000 for t in res.respawn_s]
    p50 = pct(times, 50)
    good = p50 is not None and p50 <= SLOW_STOP_GOAL_MS and res.timeouts == 0
    how = ("`reconcile down SERVICE` run beside the daemon" if res.trigger == "down"
           else "its spec file removed")
    lines = ["### Slow stop (reconciler only)", ""]
    if command:
        lines += [f"Produced by `{command}` (wall time {res.wall_s / 60:.1f} min).", ""]
    lines += [
        f"N = {res.n} sleepers; meanwhile one job that ignores SIGTERM is being stopped "
        f"(`stop: {{timeout: {res.stop_timeout:g}s}}`, {how}); sleepers are SIGKILLed "
        f"during that stop. {len(times)} respawn samples / {res.timeouts} timeouts over "
        f"{res.windows} stop window(s); {res.failed_windows} window(s) failed to start.", "",
        "| metric | p50 | p95 | max | goal |", "|---|---|---|---|---|",
        f"| respawn during a slow stop (ms) | {fmt(p50)} | {fmt(pct(times, 95))} | "
        f"{fmt(max(times, default=None))} | p50 ≤ {SLOW_STOP_GOAL_MS} ms → "
        f"{'met' if good else '**missed**'} |",
        f"| respawned while the slow job still ran | {res.within_stop} / {len(times)} | | | "
        "all |",
        f"| slow stop, SIGTERM → slow job dead (s) | {fmt(pct(res.stop_s, 50))} | | "
        f"{fmt(max(res.stop_s, default=None))} | ≈ {res.stop_timeout:g} s, then SIGKILL |",
        ""]
    return lines


def log_flood(results: list[FloodResult], command: str = "") -> list[str]:
    """The log flood scenario's table, one row per variant; `command` when run on its own."""
    lines = ["### Log flood (reconciler only)", ""]
    if command:
        wall = sum(r.wall_s for r in results)
        lines += [f"Produced by `{command}` (wall time {wall:.0f} s).", ""]
    lines += [
        "One job writes 1 MiB chunks of 128-byte lines to its log; every ~2 ms the harness "
        "lstats the live log and each `.log.N`. Goals (docs/operations.md): live ≤ max_size "
        "+ 1 MiB, each `.log.N` ≤ max_size, history ≤ keep × max_size.", "",
        "| variant | written (MB) at MB/s | live max (MiB) | over max_size (MiB) "
        "| samples over goal | max `.log.N` (MiB) | max history (MiB) | kept at end (MiB) "
        "| daemon CPU (% core) | samples, gap p50/max (ms) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if not r.started or not r.samples:
            lines.append(f"| {r.label} | did not start | | | | | | | | |")
            continue
        over = (r.live_max - r.max_size) / MiB
        lines.append(
            f"| {r.label} | {r.written / 1e6:.0f} at {r.written / 1e6 / max(r.write_s, 1e-9):.0f}"
            f" | {r.live_max / MiB:.1f} | {over:+.2f} → {_goal(over <= 1)} "
            f"| {r.over_samples} / {r.samples} "
            f"| {r.history_file_max / MiB:.1f} → {_goal(r.history_file_max <= r.max_size)} "
            f"| {r.history_total_max / MiB:.1f} (≤ {r.keep} × {r.max_size / MiB:g}) → "
            f"{_goal(r.history_total_max <= r.keep * r.max_size)} "
            f"| {r.kept_end / MiB:.1f} | {fmt(r.daemon_cpu_pct)} "
            f"| {r.samples}, {r.gap_p50_ms:.1f}/{r.gap_max_ms:.1f} |")
    return [*lines, ""]


def metrics_cost(res: MetricsResult, plan: MetricsPlan, command: str = "") -> list[str]:
    """The metrics scenario's table (issue 11's goals); `command` when run on its own."""
    got = metricscost.summary(res, plan.scrape_every)
    lines = ["### Metrics endpoint (reconciler only)", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    scrape, cpu, rss = got["scrape_p50_ms"], got["cpu_added"], got["rss_added"]
    lines += [
        f"N = {res.n} sleepers, {plan.runs} run(s), each a daemon without and one with "
        f"`--metrics-addr`; idle window {plan.idle_s:g} s (no scrapes); then "
        f"{plan.scrapes} scrapes 0.2 s apart (full HTTP round trip, "
        f"{res.scrape_bytes / 1024:.0f} KiB each), the daemon's CPU counted over them. "
        f"{res.failures} session(s) failed to converge.", "",
        "| metric | without | with | added | goal |", "|---|---|---|---|---|",
        f"| scrape at N={res.n} (ms) | | p50 {fmt(scrape)}, max {fmt(got['scrape_max_ms'])} "
        f"| | p50 ≤ 50 ms → {_goal(scrape is not None and scrape <= 50)} |",
        f"| daemon CPU per scrape (ms) | | {fmt(got['scrape_cpu_ms'])} | | |",
        f"| idle CPU, not scraped (% of a core) | {fmt(got['cpu_off'])} "
        f"| {fmt(got['cpu_on'])} | {fmt(got['cpu_standing'])} | |",
        f"| idle CPU, scraped every {plan.scrape_every:g} s (% of a core) | | | {fmt(cpu)} "
        f"| ≤ +0.3 → {_goal(cpu is not None and cpu <= 0.3)} |",
        f"| RSS (MiB) | {fmt(got['rss_off'])} | {fmt(got['rss_on'])} | {fmt(rss)} "
        f"| ≤ +5 → {_goal(rss is not None and rss <= 5)} |", ""]
    return lines


def sampling_cost(res: SamplingResult, plan: SamplingPlan, command: str = "") -> list[str]:
    """The sampling scenario's table (issue 12's goal); `command` when run on its own."""
    got = samplingcost.summary(res)
    lines = ["### Resource sampling (reconciler only)", ""]
    if command:
        lines += [f"Produced by `{command}`.", ""]
    cpu, pct_round = got["cpu_added"], got["round_pct"]
    lines += [
        f"N = {res.n} sleepers, {plan.runs} run(s), each a daemon sampling every hour (in "
        f"effect not at all) and one at the default 5 s; idle window {plan.idle_s:g} s. "
        f"Then {plan.rounds} rounds of `Sampler.sample` over the N jobs, timed in-process "
        f"(CPU time). {res.failures} session(s) failed to converge.", "",
        "| metric | sampling off | every 5 s | added | goal |", "|---|---|---|---|---|",
        f"| idle CPU (% of a core) | {fmt(got['cpu_off'])} | {fmt(got['cpu_on'])} "
        f"| {fmt(cpu)} | ≤ 1 → {_goal(cpu is not None and cpu <= 1)} |",
        f"| one round, CPU (ms) | | {fmt(got['round_ms'])} | {fmt(pct_round)} % of a core "
        f"at 5 s | ≤ 1 % → {_goal(pct_round is not None and pct_round <= 1)} |",
        f"| RSS (MiB) | {fmt(got['rss_off'])} | {fmt(got['rss_on'])} "
        f"| {fmt(got['rss_added'])} | within the RSS goal above |", ""]
    return lines


def _goal(met: bool) -> str:
    return "met" if met else "**missed**"


def render(results: dict[str, dict[int, list[SessionResult]]],
           noops: list[tuple[float | None, list[float]]],
           onces: Sequence[tuple[float | None, float]],
           plan: Any, command: str,
           elapsed: float, versions: dict[str, str],
           slow: SlowStopResult | None = None,
           flood: Sequence[FloodResult] = (),
           metrics: tuple[MetricsResult, MetricsPlan] | None = None,
           sampling: tuple[SamplingResult, SamplingPlan] | None = None,
           cli: tuple[clistartup.CliResult, clistartup.CliPlan] | None = None) -> str:
    polls = [r.poll_ms for d in results.values() for rs in d.values() for r in rs if r.poll_ms]
    out = ["# Benchmarks: reconciler vs supervisord vs circus", "",
           "Produced by (from the repository root, venv with `.[bench]` installed):", "",
           f"    {command}", "",
           f"Wall time {elapsed / 60:.1f} min; {plan.runs} run(s); N = "
           f"{', '.join(map(str, plan.ns))}; {plan.samples} respawn samples per supervisor and N "
           f"(pooled over the runs); "
           f"idle window {plan.idle_s:g} s; poll resolution (one look for new pids + 1 ms sleep) "
           f"median {fmt(med(polls))} ms.", "", "## Machine", "", *machine(),
           "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
           "## Results", "",
           "Converge, idle CPU and RSS are medians over runs; respawn percentiles pool every "
           "sample of every run. Ratios are to supervisord in the same run.", ""]
    for n in plan.ns:
        out += table(results, n)
    if OURS in results:
        out += reconciler_only(results, noops, plan.noop_n, onces, plan.once_n)
    if slow is not None:
        out += slow_stop(slow)
    if flood:
        out += log_flood(list(flood))
    if metrics is not None:
        out += metrics_cost(*metrics)
    if sampling is not None:
        out += sampling_cost(*sampling)
    if cli is not None:
        out += clistartup.report(*cli, "python -m benchmarks --scenario cli")
    out.append(METHOD)
    return "\n".join(out) + "\n"


METHOD = """## Method

- Workload: N programs `sh -c 'exec sleep 3600'`, one per supervisord `[program]`, one per
  circus `[watcher]` (`numprocesses = 1`), one per reconciler **service** (one spec file
  `bench.yaml` with N YAML documents, each one service with one `process: true` action and
  the string command `exec sleep 3600`, which the reconciler runs with `/bin/sh -c`). That is
  the direct translation an operator would write when moving from supervisord. Every
  supervisor keeps its defaults otherwise (supervisord: `autorestart`, `startsecs=1`, AUTO
  child logs, `minfds` raised so N pipes fit; circus: no stats, output discarded;
  reconciler: the CLI daemon with its default 30 s resync, per-job log files, run from
  this source tree byte-compiled first, as `pip install` would have done; supervisord and
  circus run from site-packages, compiled at install).
- Each daemon runs as a subprocess in its own session; every process gets `BENCH_RUN=<uuid>`
  in its environment, by which the harness kills everything it started at the end.
- "Running" = a child of the daemon whose `comm` is `sleep` (the `sh` has exec'ed). The
  harness scans `/proc` every 1 ms, reading `stat` only for new pids.
- converge: from `Popen` of the daemon until N sleepers run (includes interpreter start).
- respawn: SIGKILL one original sleeper at a time (a different one each time, so no
  crash-loop backoff applies), time until a new sleeper runs; 0.1 s between samples;
  `--samples` is the pooled count per supervisor and N, split evenly over the runs.
- idle: after 2 s settling, CPU time (utime+stime from `/proc/<pid>/stat`, 10 ms ticks) of
  the daemon and its non-managed children over the window, as % of one core; RSS summed.
- no-op pass: `reconcile --once` converges N actions with no daemon running, then
  `Reconciler(settings).reconcile()` is timed in-process (it adopts the running jobs; every
  pass must plan zero changes).
- `--once` from nothing: the whole `reconcile --once` process starting N sleepers with an
  empty state dir and no daemon, until it exits converged; timed at the largest N (with the
  no-op pass) and at N = 1000, where issue 13 states its goal of 2 s.
- save → running: with the daemon running N sleepers, a new spec file with one service is
  written as a hidden temp file and `os.replace`d into the specs dir; time until its sleeper
  runs; 0.3 s between samples. It includes the daemon's `--settle` quiet period (a changed
  file is read once untouched for 200 ms by default), hence the goal of 400 ms.
- slow stop (`--scenario slow-stop`; reconciler only): N sleepers plus one-file services
  whose shell catches SIGTERM, writes a note and keeps running, with `stop: {timeout: 8s}`.
  One at a time such a service is stopped (spec file removed; `--slow-trigger down` runs
  `reconcile down SERVICE` instead); once its note shows it got SIGTERM, sleepers are
  SIGKILLed at 0.25, 1.75, 3.25, 4.75 and 6.25 s into the stop, each only while the slow
  job is still alive (pid and start time from /proc), and timed as for respawn. Then the
  harness waits until the slow job is dead (the SIGKILL at the timeout) before the next
  stop. A new stop is opened only within a 100 s budget (50 s with `--quick`), so when
  stops block the pass (one sample per stop, ~8 s each) fewer than `--slow-samples` (20)
  samples are taken.
- log flood (`--scenario log-flood`; reconciler only): the daemon runs one job, a Python
  writer appending 1 MiB chunks of 128-byte text lines to its log with `os.write`, paced to
  100 MB/s (or unthrottled), once the job has run for 1 s. Its `logs` are the default
  `{max_size: 10MiB, keep: 5}` or `max_size: 1MiB`. Every ~2 ms the harness lstats the live
  log and each `.log.N`; the writer notes how much it wrote; the daemon's CPU (all threads)
  is read from /proc over the flood. The sampler may miss a peak between two samples (see
  the gap column).
- metrics (`--scenario metrics`; reconciler only): N sleepers under a daemon without
  `--metrics-addr` and under one with it (alternating which goes first, per run); each
  converges and settles, then its idle CPU and RSS are measured as above (no scrapes); then
  the second is scraped 30 times 0.2 s apart, each timed from the scraper (connect, request,
  whole body), and the daemon's CPU ticks over the 30 give one scrape's CPU. The CPU added at
  a 15 s scrape interval is the idle difference plus one scrape's CPU per 15 s.
- sampling (`--scenario sampling`; reconciler only): N sleepers under a daemon with
  `--sample-interval 1h` and under one with the default 5 s (alternating which goes first);
  idle CPU and RSS as above; then 20 sampling rounds of the N jobs timed in the harness's
  process (`Sampler.sample`, CPU time).
- The harness's own 1 ms poll competes for the 2 cores with the daemons; it does so equally
  for all three.
"""
