"""Health probes: is a running job actually serving?

A probe is a single, bounded attempt; `HealthMonitor` decides how often to ask and counts the
failures that matter. Probes only talk to loopback or unix sockets we were told about, and an
`exec` probe runs with the job's environment, never in a shell unless it asked for one.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reconciler.spec.model import ExecHealth, Health, HttpHealth, TcpHealth, UnixHealth

if TYPE_CHECKING:
    from urllib.request import OpenerDirector

log = logging.getLogger(__name__)



def probe(health: Health, *, cwd: str | None = None, env: dict[str, str] | None = None) -> bool:
    """One probe attempt, bounded by `health.timeout`. Never raises."""
    return probe_reason(health, cwd=cwd, env=env) is None


def probe_reason(health: Health, *, cwd: str | None = None,
                 env: dict[str, str] | None = None) -> str | None:
    """One probe attempt: None when healthy, else a short reason for `status` ("connection
    refused", "HTTP 500", "exit 1", "timeout"). Never raises: a probe that cannot even be
    attempted is a failed probe, not a controller crash."""
    try:
        if isinstance(health, TcpHealth):
            return _tcp(health.tcp, health.timeout)
        if isinstance(health, UnixHealth):
            return _unix(health.unix, health.timeout)
        if isinstance(health, HttpHealth):
            return _http(health.http, health.timeout)
        if isinstance(health, ExecHealth):
            return _exec(health.exec, health.timeout, cwd, env)
    except Exception as exc:  # any failure is a reason, not a crash
        return _describe(exc)
    return f"unknown probe type {type(health).__name__}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, subprocess.TimeoutExpired)):
        return "timeout"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _tcp(port: int, timeout: float) -> str | None:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout):
        return None


def _unix(path: str, timeout: float) -> str | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        return None


def _http(url: str, timeout: float) -> str | None:
    # Imported here: urllib.request (http.client, email, ssl) is a tenth of the controller's
    # start-up, and only http probes need it.
    import urllib.error

    try:
        with _no_proxy_opener().open(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return _describe(exc.reason) if isinstance(exc.reason, BaseException) \
            else str(exc.reason)
    return None if 200 <= status < 300 else f"HTTP {status}"


@functools.cache
def _no_proxy_opener() -> OpenerDirector:
    """An HTTP probe targets the job itself: an http_proxy in the controller's environment
    must never route it elsewhere (or make a healthy job look dead because the proxy is
    down)."""
    import urllib.request

    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _exec(cmd: list[str] | str, timeout: float, cwd: str | None,
          env: dict[str, str] | None) -> str | None:
    """Run in its own session so a timed-out probe is killed with everything it started:
    a hung `curl` under `sh -c` must not pile up one orphan per interval."""
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else cmd
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        return f"cannot run {argv[0]}: {_describe(exc)}"
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # pid is unreaped, so the group id is ours
        proc.wait()
        return "timeout"
    if code == 0:
        return None
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


@dataclass(frozen=True)
class ProbeTarget:
    job_id: str
    health: Health  # the spec's probe, paths already resolved
    cwd: str | None
    env: dict[str, str] | None
    started_at: float  # time.time() when the job's process started (start_period counts here)


@dataclass(frozen=True)
class HealthState:
    ready: bool  # passed at least once since the target was (re)synced
    consecutive_failures: int  # since the last success; counted only after ready/start_period
    last_error: str | None  # reason of the latest failed probe; None after a success


@dataclass(eq=False)
class _Entry:
    """Mutable per-job bookkeeping; compared by identity so a result that comes back for a
    target that was re-synced meanwhile (new process) is recognised and dropped."""

    target: ProbeTarget
    due: float  # time.monotonic() of the next probe
    ready: bool = False
    failures: int = 0
    last_error: str | None = None


class HealthMonitor:
    """Probes every running job with a health check on its own interval, off the controller's
    thread, and calls on_change() when a job becomes ready or reaches its failure threshold,
    so the controller runs a pass exactly when it matters.

    Scheduling uses the monotonic clock (a wall-clock jump must not stall or burst probes);
    `clock` is only compared with `ProbeTarget.started_at` for `start_period`. on_change runs
    on a probe worker thread and must be cheap (set an event, poke the controller).
    """

    def __init__(self, on_change: Callable[[], None], *, max_workers: int = 4,
                 clock: Callable[[], float] = time.time) -> None:
        self._on_change = on_change
        self._clock = clock
        self._max_workers = max_workers
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._busy: set[str] = set()  # job ids with a probe in flight, even a superseded one
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="health-probe")
            self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Returns without waiting for probes in flight: each is bounded by its own timeout
        and its result is discarded. (The interpreter still joins pool threads at exit, so a
        process exit can take up to the longest probe timeout.)"""
        with self._cond:
            self._stopping = True
            thread, pool = self._thread, self._pool
            self._thread = self._pool = None
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def sync(self, targets: Iterable[ProbeTarget]) -> None:
        """Probe exactly these. Same job and same started_at keeps its state (a health edit
        restarts nothing, so it resets nothing); a new process starts from scratch."""
        now = time.monotonic()
        with self._cond:
            fresh: dict[str, _Entry] = {}
            for target in targets:
                old = self._entries.get(target.job_id)
                if old is not None and old.target.started_at == target.started_at:
                    old.target = target
                    old.due = min(old.due, now + target.health.interval)
                    fresh[target.job_id] = old
                else:
                    fresh[target.job_id] = _Entry(target=target, due=now)
            self._entries = fresh
            self._cond.notify_all()

    def states(self) -> dict[str, HealthState]:
        with self._cond:
            return {job_id: HealthState(e.ready, e.failures, e.last_error)
                    for job_id, e in self._entries.items()}

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                for job_id, entry in self._entries.items():
                    if job_id not in self._busy and entry.due <= now:
                        self._submit(entry, now)
                self._cond.wait(self._next_wait(now))

    def _submit(self, entry: _Entry, now: float) -> None:
        assert self._pool is not None
        self._busy.add(entry.target.job_id)
        entry.due = now + entry.target.health.interval  # the interval counts from probe start
        try:
            self._pool.submit(self._probe_once, entry)
        except RuntimeError:  # pool shut down under us: stop() is on its way
            self._busy.discard(entry.target.job_id)

    def _next_wait(self, now: float) -> float | None:
        dues = [e.due for job_id, e in self._entries.items() if job_id not in self._busy]
        return max(0.0, min(dues) - now) if dues else None

    def _probe_once(self, entry: _Entry) -> None:
        """A result for an entry that was replaced meanwhile (the job respawned) or dropped
        describes a process that no longer matters: it is discarded."""
        target = entry.target
        changed = False
        try:
            reason = probe_reason(target.health, cwd=target.cwd, env=target.env)
            with self._cond:
                current = self._entries.get(target.job_id) is entry and not self._stopping
                changed = current and self._record(entry, reason)
        finally:
            with self._cond:
                self._busy.discard(target.job_id)
                self._cond.notify_all()
        if changed:
            self._notify()

    def _record(self, entry: _Entry, reason: str | None) -> bool:
        """Apply one result; True when the controller must look (ready, or threshold hit)."""
        entry.last_error = reason
        if reason is None:
            entry.failures = 0
            became_ready, entry.ready = not entry.ready, True
            return became_ready
        if not entry.ready or self._in_start_period(entry.target):
            return False  # a slow starter is "starting", not unhealthy
        entry.failures += 1
        return entry.failures == entry.target.health.failures

    def _in_start_period(self, target: ProbeTarget) -> bool:
        return self._clock() < target.started_at + target.health.start_period

    def _notify(self) -> None:
        try:
            self._on_change()
        except Exception:
            log.exception("health on_change callback failed")

