"""The "metrics" scenario (reconciler only): what `--metrics-addr` costs (issue 11).

Two daemons with the same N sleepers, one after the other: one without the endpoint, one
with it. Each converges, settles, then idles for a window (no scrapes), which gives the
endpoint's standing cost in CPU and RSS. Then the second is scraped `scrapes` times, 0.2 s
apart: each scrape's wall time is the full HTTP round trip seen from the scraper, and the
daemon's CPU ticks over all of them give the CPU one scrape costs. The idle CPU the
endpoint adds when Prometheus scrapes it every `scrape_every` seconds is the standing cost
plus one scrape's CPU per interval. (A window with scrapes in it would measure the same
thing with the noise of the 30 s resync, which falls into some windows and not others.)
"""

from __future__ import annotations

import socket
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import measure, procfs
from benchmarks.supervisors import Reconciler, Supervisor

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class MetricsPlan:
    n: int = 1000
    runs: int = 3
    idle_s: float = 30.0
    scrape_every: float = 15.0
    scrapes: int = 30  # timed back to back (0.2 s apart) after the idle window
    settle_s: float = 2.0
    converge_timeout: float = 180.0


@dataclass
class MetricsResult(measure.OnOff):
    """`on`: the daemon with the endpoint (not scraped during the idle window)."""

    n: int = 0
    scrape_ms: list[float] = field(default_factory=list)
    scrape_cpu_ms: list[float] = field(default_factory=list)  # daemon CPU per scrape, per run
    scrape_bytes: int = 0


class MetricsReconciler(Reconciler):
    """The CLI daemon with `--metrics-addr` on a free loopback port."""

    def __init__(self, workdir: Path, n: int, marker: str) -> None:
        super().__init__(workdir, n, marker)
        self.port = _free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def argv(self) -> list[str]:
        return [*super().argv(), "--metrics-addr", f"127.0.0.1:{self.port}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> tuple[float, int]:
    """Seconds for one scrape, and its size in bytes."""
    start = time.perf_counter()
    with _DIRECT.open(url, timeout=30) as response:
        size = len(response.read())
    return time.perf_counter() - start, size


def run(plan: MetricsPlan, root: Path, marker: str) -> MetricsResult:
    out = MetricsResult(n=plan.n)
    for k in range(plan.runs):
        for with_metrics in (False, True) if k % 2 == 0 else (True, False):
            _session(plan, root / f"metrics-{k}-{int(with_metrics)}", marker, with_metrics,
                     out)
    return out


def _session(plan: MetricsPlan, workdir: Path, marker: str, with_metrics: bool,
             out: MetricsResult) -> None:
    cls = MetricsReconciler if with_metrics else Reconciler

    def scrapes(sup: Supervisor) -> None:
        if isinstance(sup, MetricsReconciler):
            _scrapes(sup, plan.scrapes, out)

    measure.on_off_session(cls(workdir, plan.n, marker), with_metrics, out,
                           converge_timeout=plan.converge_timeout, settle_s=plan.settle_s,
                           idle_s=plan.idle_s, then=scrapes)


def _scrapes(sup: MetricsReconciler, count: int, out: MetricsResult) -> None:
    """`count` scrapes 0.2 s apart: each one's wall time, and the daemon's CPU per scrape
    (its ticks over the whole series, less nothing: between scrapes it idles)."""
    before = procfs.read_stat(sup.pid)
    for _ in range(count):
        seconds, out.scrape_bytes = scrape(sup.url)
        out.scrape_ms.append(seconds * 1000)
        time.sleep(0.2)
    after = procfs.read_stat(sup.pid)
    if before is not None and after is not None:
        ticks = after.cpu_ticks - before.cpu_ticks
        out.scrape_cpu_ms.append(1000 * ticks / procfs.CLOCK_TICKS / count)


def summary(res: MetricsResult, scrape_every: float) -> dict[str, float | None]:
    idle = res.idle_summary()
    standing, per_scrape = idle["cpu_added"], measure.median_or_none(res.scrape_cpu_ms)
    return {
        **idle,
        "scrape_p50_ms": measure.median_or_none(res.scrape_ms),
        "scrape_max_ms": max(res.scrape_ms) if res.scrape_ms else None,
        "scrape_cpu_ms": per_scrape, "cpu_standing": standing,
        "cpu_added": (None if standing is None or per_scrape is None
                      else standing + 100 * per_scrape / 1000 / scrape_every),
    }
