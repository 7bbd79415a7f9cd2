"""The anomaly rules over a job's recent samples (DESIGN §8.4, docs/resources.md).

Pure: a job's samples in, the rules it breaks now out. The daemon turns a rule that starts
or stops holding into an event (`anomaly`, `anomaly-recovered`) and keeps the ones in force
for `status`, `top` and the metrics.

The growth rules fit a straight line (least squares) through the window and ask two things:
that the line rises by the given fraction of its starting value over the window, and that it
explains the samples (r² ≥ `min_fit`). A leak climbs steadily; a cache that fills once and
stays, or a sawtooth of allocations and frees, does not fit a rising line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reconciler.state.records import Sample


@dataclass(frozen=True, slots=True)
class Rules:
    """The thresholds; the defaults are the documented ones."""

    fd_fraction: float = 0.8  # open fds / soft limit
    growth_window: float = 600.0  # seconds of history the growth rules look at
    rss_growth: float = 0.5  # +50 % over the window
    thread_growth: float = 0.5
    min_thread_increase: int = 10  # 2 → 3 threads is +50 % and nothing to worry about
    min_fit: float = 0.8  # r² of the line through the window
    dstate_seconds: float = 30.0
    zombies: int = 10
    oom_score: int = 800


DEFAULT_RULES = Rules()
RULES = ("fds", "rss-growth", "threads-growth", "d-state", "zombies", "oom-score")


GROWTH_RULES = frozenset({"rss-growth", "threads-growth"})


def evaluate(history: Sequence[Sample], rules: Rules = DEFAULT_RULES, *,
             growth: bool = True) -> dict[str, str]:
    """The rules `history` (one job's samples, oldest first) breaks at its newest sample,
    each with what shows it. `growth=False` leaves out the two growth rules, which fit a
    line through minutes of samples: the caller judges those less often."""
    if not history:
        return {}
    found: dict[str, str] = {}
    for name, check in _CHECKS if growth else _NOW_CHECKS:
        why = check(history, rules)
        if why is not None:
            found[name] = why
    return found


def quiet_now(sample: Sample, rules: Rules = DEFAULT_RULES) -> bool:
    """True when no rule about now (all but the growth rules) can hold at `sample`,
    whatever came before it: the common case, told from one sample without a call per
    rule (a round judges a thousand jobs every 5 s). A property test holds it to
    `evaluate`."""
    most = sample.max_fds if sample.max_fds is not None else sample.open_fds
    return (sample.dstate == 0 and sample.zombies < rules.zombies
            and (sample.oom_score is None or sample.oom_score < rules.oom_score)
            and (most is None or not sample.fd_limit
                 or most < rules.fd_fraction * sample.fd_limit))


def _fds(history: Sequence[Sample], rules: Rules) -> str | None:
    """The fd limit is per process: a member's own count is what runs into it (nine
    workers of 100 fds under a limit of 1024 are fine, whatever their sum)."""
    last = history[-1]
    most = last.max_fds if last.max_fds is not None else last.open_fds
    if most is None or not last.fd_limit:
        return None
    if most >= rules.fd_fraction * last.fd_limit:
        return (f"{most} of {last.fd_limit} file descriptors open in one process "
                f"({100 * most / last.fd_limit:.0f}%)")
    return None


def _rss_growth(history: Sequence[Sample], rules: Rules) -> str | None:
    growth = _steady_growth(_window(history, rules.growth_window),
                            lambda s: float(s.rss_bytes), rules)
    if growth is None or growth < rules.rss_growth:
        return None
    return (f"RSS grew steadily by {100 * growth:.0f}% over "
            f"{_span(history, rules.growth_window):.0f}s")


def _thread_growth(history: Sequence[Sample], rules: Rules) -> str | None:
    window = _window(history, rules.growth_window)
    growth = _steady_growth(window, lambda s: float(s.threads), rules)
    if growth is None or growth < rules.thread_growth:
        return None
    if window[-1].threads - window[0].threads < rules.min_thread_increase:
        return None
    return (f"threads grew steadily from {window[0].threads} to {window[-1].threads} over "
            f"{_span(history, rules.growth_window):.0f}s")


def _dstate(history: Sequence[Sample], rules: Rules) -> str | None:
    """Some member in uninterruptible sleep in every sample of the last `dstate_seconds`
    (and the samples cover that long)."""
    if history[-1].dstate == 0:
        return None
    start = history[-1].at
    for sample in reversed(history):
        if sample.dstate == 0:
            return None
        start = sample.at
        if history[-1].at - start >= rules.dstate_seconds:
            wchan = f" (wchan {history[-1].wchan})" if history[-1].wchan not in ("", "0") else ""
            return (f"{history[-1].dstate} process(es) in uninterruptible sleep (D) for "
                    f"{history[-1].at - start:.0f}s{wchan}")
    return None


def _zombies(history: Sequence[Sample], rules: Rules) -> str | None:
    last = history[-1]
    if last.zombies >= rules.zombies:
        return f"{last.zombies} zombie processes not reaped"
    return None


def _oom_score(history: Sequence[Sample], rules: Rules) -> str | None:
    last = history[-1]
    if last.oom_score is not None and last.oom_score >= rules.oom_score:
        return f"oom_score {last.oom_score} (the kernel's first choice when memory runs out)"
    return None


_CHECKS: tuple[tuple[str, Callable[[Sequence[Sample], Rules], str | None]], ...] = (
    ("fds", _fds), ("rss-growth", _rss_growth), ("threads-growth", _thread_growth),
    ("d-state", _dstate), ("zombies", _zombies), ("oom-score", _oom_score))
_NOW_CHECKS = tuple((name, check) for name, check in _CHECKS if name not in GROWTH_RULES)


def _window(history: Sequence[Sample], seconds: float) -> Sequence[Sample]:
    """The samples of the newest `seconds`, of the newest process of the job only: a
    restart starts the series again (a new process's RSS is not growth)."""
    newest = history[-1].at
    window = [s for s in history if s.at >= newest - seconds]
    for i in range(len(window) - 1, 0, -1):
        if window[i].cpu_seconds < window[i - 1].cpu_seconds:  # CPU time went back: restart
            return window[i:]
    return window


def _span(history: Sequence[Sample], seconds: float) -> float:
    window = _window(history, seconds)
    return window[-1].at - window[0].at


def _steady_growth(window: Sequence[Sample], value: Callable[[Sample], float],
                   rules: Rules) -> float | None:
    """How much the fitted line rises over the window, relative to where it starts; None
    when the window is shorter than 90 % of `growth_window`, too sparse, or not a line."""
    if len(window) < 5 or window[-1].at - window[0].at < 0.9 * rules.growth_window:
        return None
    xs = [s.at - window[0].at for s in window]
    ys = [value(s) for s in window]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    syy = sum((y - mean_y) ** 2 for y in ys)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    if sxx == 0 or syy == 0:
        return None
    slope = sxy / sxx
    fit = sxy * sxy / (sxx * syy)
    start = mean_y - slope * mean_x
    if slope <= 0 or fit < rules.min_fit or start <= 0:
        return None
    return slope * xs[-1] / start
