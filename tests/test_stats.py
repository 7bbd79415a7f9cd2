"""`reconcile stats SERVICE[.ACTION]` (DESIGN §8.4): the series math (CPU % from a cumulative
counter that may drop, resampling that keeps peaks, sparklines) as pure functions, and the
command on a real state db filled with synthetic samples."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.cli.resources import (
    TICKS,
    WIDTH,
    cpu_percents,
    cpu_rate,
    human_bytes,
    resample,
    sparkline,
)
from reconciler.settings import Settings
from reconciler.state.records import Anomaly, Event, Sample
from reconciler.state.store import Store
from tests.test_reconcile import out_of, run_cli, write_sleeper

MiB = 2**20


def sample(at: float, cpu: float = 0.0, rss: int = 10 * MiB, *, job_id: str = "web-main-1",
           service: str = "web", action: str = "main", fds: int | None = 5) -> Sample:
    return Sample(at=at, job_id=job_id, service=service, action=action, members=1,
                  rss_bytes=rss, cpu_seconds=cpu, threads=3, open_fds=fds, fd_limit=1024,
                  oom_score=12, state="S", wchan="do_select")


# --- pure functions --------------------------------------------------------------------------


def test_cpu_rate_is_percent_of_one_core_between_two_samples() -> None:
    assert cpu_rate(sample(100.0, cpu=1.0), sample(105.0, cpu=3.5)) == pytest.approx(50.0)
    assert cpu_rate(sample(100.0, cpu=1.0), sample(102.0, cpu=5.0)) == pytest.approx(200.0)


def test_a_dropping_counter_or_no_time_has_no_rate() -> None:
    assert cpu_rate(sample(100.0, cpu=9.0), sample(105.0, cpu=1.0)) is None  # a new process
    assert cpu_rate(sample(100.0, cpu=1.0), sample(100.0, cpu=2.0)) is None


def test_a_drop_starts_a_new_segment() -> None:
    series = [sample(0, 0.0), sample(5, 2.5), sample(10, 0.5), sample(15, 1.0)]
    assert cpu_percents(series) == [None, pytest.approx(50.0), None, pytest.approx(10.0)]
    assert cpu_percents([]) == []


@given(st.lists(st.tuples(st.floats(0.0, 100.0), st.floats(0.0, 1e6)), max_size=50))
def test_cpu_percents_are_never_negative(steps: list[tuple[float, float]]) -> None:
    at, series = 0.0, []
    for gap, counter in steps:
        at += gap
        series.append(sample(at, cpu=counter))
    rates = cpu_percents(series)
    assert len(rates) == len(series)
    assert all(rate is None or rate >= 0 for rate in rates)


@given(st.lists(st.one_of(st.none(), st.floats(0, 1e12)), max_size=2000),
       st.integers(1, 100))
def test_resample_fits_the_width_and_keeps_the_peak(values: list[float | None],
                                                    width: int) -> None:
    out = resample(values, width)
    assert len(out) == min(len(values), width)
    known = [v for v in values if v is not None]
    if known:
        assert max(v for v in out if v is not None) == max(known)
    else:
        assert all(v is None for v in out)


def test_resample_keeps_a_short_spike_of_an_hour() -> None:
    values: list[float | None] = [1.0] * 720
    values[400] = 99.0
    out = resample(values)
    assert len(out) == WIDTH and out.count(99.0) == 1 and out[400 * WIDTH // 720] == 99.0


def test_sparkline_scales_from_low_to_high() -> None:
    assert sparkline([0, 7, 3.5, None, 7]) == "▁█▅ █"
    assert sparkline([2.0, 2.0, 2.0]) == "▁▁▁"  # flat: no made-up variation
    assert sparkline([50.0, 100.0], lo=0.0) == "▅█"  # CPU: scaled from 0
    assert sparkline([None, None]) == "  "
    assert set(sparkline([float(i) for i in range(100)])) == set(TICKS)


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1536, 10 * MiB, 3 * 2**30 // 2, None)] == [
        "0B", "1023B", "1.5KiB", "10.0MiB", "1.50GiB", "-"]


# --- the command ---------------------------------------------------------------------------


def fill(settings: Settings, samples: Sequence[Sample], anomalies: Sequence[Anomaly] = (),
         events: Sequence[Event] = ()) -> None:
    settings.state_dir.mkdir(mode=0o700, exist_ok=True)
    with Store.open(settings.db_path) as store:
        store.append_samples(samples)
        store.set_anomalies(anomalies)
        store.append_events(events)


def growing(now: float, job_id: str = "web-main-1", count: int = 10) -> list[Sample]:
    """RSS 10 → 10+5·(count-1) MiB, CPU at 50 % of a core, fds 5 → 5+count-1."""
    start = now - 5 * count
    return [sample(start + 5 * i, cpu=2.5 * i, rss=(10 + 5 * i) * MiB, job_id=job_id,
                   fds=5 + i) for i in range(count)]


def test_stats_shows_sparklines_values_and_anomalies(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    fill(settings, growing(now),
         [Anomaly("web-main-1", "web", "main", "rss-growth", now - 30, "+450% in 45s")],
         [Event(at=now - 30, kind="anomaly", reason="rss growing steadily",
                job_id="web-main-1", service="web", action="main",
                detail={"rule": "rss-growth"})])
    code, out, err = out_of(capsys, settings, "stats", "web")
    assert (code, err) == (0, "")
    assert "web.main  job web-main-1  10 samples" in out
    rss = next(line for line in out.splitlines() if line.strip().startswith("RSS"))
    assert "▁" in rss and "█" in rss and "min 10.0MiB" in rss and "max 55.0MiB" in rss
    cpu = next(line for line in out.splitlines() if line.strip().startswith("CPU%"))
    assert "max 50.0" in cpu and "last 50.0" in cpu
    fds = next(line for line in out.splitlines() if line.strip().startswith("FDS"))
    assert "min 5" in fds and "last 14" in fds and "(limit 1024)" in fds
    assert "threads 3" in out and "oom_score 12" in out and "state S (do_select)" in out
    assert "anomaly rss-growth since" in out and "+450% in 45s" in out
    assert "anomaly rss-growth: rss growing steadily" in out  # the onset event


def test_stats_json_has_every_sample_with_its_cpu_percent(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    series = growing(now, count=4)
    series[2] = sample(series[2].at, cpu=0.1, rss=series[2].rss_bytes)  # a restarted member
    fill(settings, series, [Anomaly("web-main-1", "web", "main", "fds", now, "5/1024")])
    code, out, _ = out_of(capsys, settings, "stats", "web.main", "-o", "json")
    assert code == 0
    [job] = json.loads(out)
    assert (job["service"], job["action"], job["job_id"]) == ("web", "main", "web-main-1")
    assert [s["cpu_percent"] for s in job["samples"]] == [None, 50.0, None, 148.0]
    assert [s["rss_bytes"] for s in job["samples"]] == [s.rss_bytes for s in series]
    assert {"at", "open_fds", "threads", "oom_score", "state"} <= set(job["samples"][0])
    assert job["anomalies"] == [{"rule": "fds", "since": now, "detail": "5/1024"}]


def test_stats_shows_every_generation_newest_last(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    now = time.time()
    fill(settings, [*growing(now - 100, job_id="web-main-old"), *growing(now)])
    code, out, _ = out_of(capsys, settings, "stats", "web.main", "-o", "json")
    assert code == 0
    assert [job["job_id"] for job in json.loads(out)] == ["web-main-old", "web-main-1"]


def test_stats_of_an_unknown_name_is_an_error(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    fill(settings, growing(time.time()))
    for target in ("nope", "web.nope"):
        code, out, err = out_of(capsys, settings, "stats", target)
        assert (code, out) == (2, "")
        assert err.startswith(f"reconcile: error: no job named {target}")


def test_stats_of_a_job_without_samples_says_so(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "quiet")  # a real job, never sampled (no daemon)
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    code, out, err = out_of(capsys, settings, "stats", "quiet")
    assert (code, err) == (0, "")
    assert out.startswith("no samples of quiet since") and out.count("\n") == 1
    code, out, _ = out_of(capsys, settings, "stats", "quiet", "-o", "json")
    assert (code, json.loads(out)) == (0, [])


def test_stats_ignores_samples_before_since(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    fill(settings, growing(time.time() - 600))  # ten minutes old
    code, out, _ = out_of(capsys, settings, "stats", "web", "--since", "1m")
    assert code == 0 and out.startswith("no samples of web since")
