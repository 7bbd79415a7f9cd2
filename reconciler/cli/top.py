"""`reconcile top`: the live table of the running jobs' newest samples (DESIGN §8.4).

`top` only re-reads the store (the daemon samples, never this command), reopening it at every
refresh: a read-only store opened without a live write-ahead log reads a fixed snapshot.
The live screen is curses: `curses.wrapper` restores the terminal when the loop ends in any
way (q, an error, Ctrl-C), and SIGTERM/SIGHUP are turned into an ordinary exit so they do
too. When stdin or stdout is not a terminal the table is printed once, without escape codes.
"""

from __future__ import annotations

import curses
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType

from reconciler.cli.resources import TopRow, cpu_rate, top_lines
from reconciler.settings import Settings
from reconciler.state.reader import open_reader

KEYS = {ord("c"): "cpu", ord("C"): "cpu", ord("m"): "rss", ord("M"): "rss"}
QUIT_KEYS = (ord("q"), ord("Q"))


def read_top(settings: Settings) -> list[TopRow]:
    """A row per running job (a job record with a pid) that has a sample: a stopped job's
    last sample stays in the window for an hour, but it is not running."""
    with open_reader(settings) as store:
        running = {job.id: job for job in store.jobs() if job.pid}
        rules: dict[str, list[str]] = {}
        for anomaly in store.anomalies():
            rules.setdefault(anomaly.job_id, []).append(anomaly.rule)
        rows = []
        for job_id, (sample, *older) in store.recent_samples(per_job=2).items():
            job = running.get(job_id)
            if job is None:
                continue
            before = older[0] if older else None
            rows.append(TopRow(sample, cpu_rate(before, sample) if before else None, job.pid,
                               tuple(sorted(rules.get(job_id, ())))))
    return rows


# --- the command ---------------------------------------------------------------------------


def run_top(settings: Settings, key: str, interval: float) -> int:
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        print("\n".join(top_lines(read_top(settings), key)))
        return 0
    try:
        with _exit_on_signals():
            curses.wrapper(_loop, settings, key, interval)
    except KeyboardInterrupt:  # Ctrl-C: curses.wrapper has restored the terminal already
        pass
    return 0


class _Stop(Exception):
    """SIGTERM or SIGHUP during `top`: unwinds through `curses.wrapper`, which restores the
    terminal, like q."""


@contextmanager
def _exit_on_signals() -> Iterator[None]:
    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except _Stop:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _loop(screen: curses.window, settings: Settings, key: str, interval: float) -> None:
    """Draw, wait for a key until the next refresh is due, repeat. A key redraws at once
    (a new sort order) without re-reading; the store is read once per interval."""
    with suppress(curses.error):  # a terminal that cannot hide the cursor
        curses.curs_set(0)
    rows = read_top(settings)
    due = time.monotonic() + interval
    while True:
        _draw(screen, [*top_lines(rows, key), "", "c: sort by CPU · m: by RSS · q: quit"])
        screen.timeout(max(int((due - time.monotonic()) * 1000), 0))
        pressed = screen.getch()
        if pressed in QUIT_KEYS:
            return
        key = KEYS.get(pressed, key)
        if time.monotonic() >= due:
            rows = read_top(settings)
            due = time.monotonic() + interval


def _draw(screen: curses.window, lines: list[str]) -> None:
    height, width = screen.getmaxyx()
    screen.erase()
    for y, line in enumerate(lines[:height]):
        attr = curses.A_BOLD if y == 0 else curses.A_REVERSE if y == 2 else curses.A_NORMAL
        with suppress(curses.error):  # a screen too small for the line: it shows less
            screen.addnstr(y, 0, line, max(width - 1, 0), attr)
    screen.refresh()
