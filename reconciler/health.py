"""Health probes: is a running job actually serving?

A probe is a single, bounded attempt; `HealthMonitor` decides how often to ask and counts the
failures that matter. Probes only talk to loopback or unix sockets we were told about, and an
`exec` probe runs with the job's environment, never in a shell unless it asked for one.

Bounds (docs/operations.md, "Health probes"): `health.timeout` is a deadline for the whole
probe (name lookup, connect, request, response, or the command's whole run), never a limit
per socket operation, so a server that trickles a byte at a time cannot hold a probe longer
than that. An HTTP probe reads at most `MAX_HEAD_BYTES` of the response (status line and
headers; the body is never read).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from reconciler.spec.model import ExecHealth, Health, HttpHealth, TcpHealth, UnixHealth

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # status line + headers; a probe never reads a body
MAX_REDIRECTS = 4  # followed within the same deadline, to http:// URLs only
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? +(\d{3})(?: |$)")
_UNSAFE_IN_REQUEST = re.compile(r"[\x00-\x20\x7f]")


class _Failed(Exception):
    """A probe that got an answer, just not a healthy one; the message is the reason."""


def probe(health: Health, *, cwd: str | None = None, env: dict[str, str] | None = None,
          deadline: float | None = None) -> bool:
    """One probe attempt, bounded by `health.timeout` (and `deadline`). Never raises."""
    return probe_reason(health, cwd=cwd, env=env, deadline=deadline) is None


def probe_reason(health: Health, *, cwd: str | None = None, env: dict[str, str] | None = None,
                 deadline: float | None = None) -> str | None:
    """One probe attempt: None when healthy, else a short reason for `status` ("connection
    refused", "HTTP 500", "exit 1", "timeout"). Never raises: a probe that cannot even be
    attempted is a failed probe, not a controller crash.

    It ends by `health.timeout` from now, or by `deadline` (a time.monotonic() value) when
    that is sooner: a caller with its own deadline (`--once --wait`) is never held past it.
    """
    end = time.monotonic() + health.timeout
    if deadline is not None:
        end = min(end, deadline)
    try:
        if isinstance(health, TcpHealth):
            return _tcp(health.tcp, end)
        if isinstance(health, UnixHealth):
            return _unix(health.unix, end)
        if isinstance(health, HttpHealth):
            return _http(health.http, end)
        if isinstance(health, ExecHealth):
            return _exec(health.exec, end, cwd, env)
    except Exception as exc:  # any failure is a reason, not a crash
        return _describe(exc)
    return f"unknown probe type {type(health).__name__}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (TimeoutError, subprocess.TimeoutExpired)):
        return "timeout"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def _remaining(end: float) -> float:
    """Time left before `end`, for the next socket operation; TimeoutError once it is up."""
    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError("probe deadline passed")
    return left


def _tcp(port: int, end: float) -> str | None:
    with socket.create_connection(("127.0.0.1", port), timeout=_remaining(end)):
        return None


def _unix(path: str, end: float) -> str | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(_remaining(end))
        sock.connect(path)
        return None


# --- http ------------------------------------------------------------------------------------

def _http(url: str, end: float) -> str | None:
    """GET over a plain socket rather than urllib: urllib's timeout applies to each recv, so
    a server sending a byte every 0.3 s kept a 1 s probe alive forever. Redirects to http://
    URLs are followed (as urllib did), all within the same deadline. Proxies never apply: the
    probe targets the job itself."""
    for _ in range(MAX_REDIRECTS + 1):
        status, location = _http_get(url, end)
        if status in _REDIRECTS and location is not None:
            following = urljoin(url, location)
            if urlsplit(following).scheme == "http":
                url = following
                continue
        return None if 200 <= status < 300 else f"HTTP {status}"
    return "too many redirects"


def _http_get(url: str, end: float) -> tuple[int, str | None]:
    """One GET: the status and, for a redirect, its Location. Reads at most MAX_HEAD_BYTES."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    authority = parts.netloc.rpartition("@")[2]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not host or _UNSAFE_IN_REQUEST.search(target + authority):
        raise _Failed(f"invalid URL {url!r}")
    request = (f"GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n"
               "User-Agent: reconciler-health\r\nAccept: */*\r\n\r\n").encode("latin-1")
    with _connect(host, port, end) as sock:
        sock.settimeout(_remaining(end))
        sock.sendall(request)  # bounded as a whole by the timeout (Python >= 3.5)
        head = _read_head(sock, end)
    return _parse_head(head)


def _connect(host: str, port: int, end: float) -> socket.socket:
    error: OSError = ConnectionError("no address")
    for family, kind, proto, _name, address in _resolve(host, port, end):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(_remaining(end))
            sock.connect(address)
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            error = exc
    raise error


_AddrInfo = list[tuple[socket.AddressFamily, socket.SocketKind, int, str,
                       tuple[str, int] | tuple[str, int, int, int]]]


def _resolve(host: str, port: int, end: float) -> _AddrInfo:
    """Addresses for host, within the deadline. An IP literal needs no lookup; a name is
    looked up on a helper thread, because getaddrinfo cannot be interrupted and a hung DNS
    server would otherwise hold the probe for the resolver's own timeouts (tens of seconds).
    A lookup still running at the deadline is abandoned (the thread ends with the resolver)."""
    with contextlib.suppress(socket.gaierror):
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST)
    answer: list[_AddrInfo | OSError] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            answer.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name="health-resolve", daemon=True).start()
    if not done.wait(_remaining(end)):
        raise TimeoutError(f"timeout resolving {host}")
    if isinstance(answer[0], OSError):
        raise answer[0]
    return answer[0]


def _read_head(sock: socket.socket, end: float) -> bytes:
    """Until the blank line after the headers, EOF or MAX_HEAD_BYTES, whichever is first;
    each recv waits at most for what is left of the deadline."""
    buf = bytearray()
    while len(buf) < MAX_HEAD_BYTES:
        sock.settimeout(_remaining(end))
        chunk = sock.recv(MAX_HEAD_BYTES - len(buf))
        if not chunk:
            break
        start = max(0, len(buf) - 3)  # the terminator may straddle two reads
        buf += chunk
        if buf.find(b"\r\n\r\n", start) >= 0 or buf.find(b"\n\n", start) >= 0:
            break
    return bytes(buf)


def _parse_head(head: bytes) -> tuple[int, str | None]:
    if not head:
        raise _Failed("connection closed without a response")
    lines = head.split(b"\n")
    if len(lines) < 2:  # cut off before the status line ended: not an answer
        raise _Failed("incomplete HTTP response")
    match = _STATUS_LINE.match(lines[0].rstrip(b"\r"))
    if match is None:
        raise _Failed("malformed HTTP response")
    status = int(match[1])
    if status not in _REDIRECTS:
        return status, None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"location":
            return status, value.strip().decode("latin-1")
    return status, None


# --- exec ------------------------------------------------------------------------------------

def _exec(cmd: list[str] | str, end: float, cwd: str | None,
          env: dict[str, str] | None) -> str | None:
    """Run in its own session, and when it ends (exit or timeout) SIGKILL what is left of that
    session's process group before reaping the leader: a hung `curl` under `sh -c`, or a
    command that backgrounds something, must not pile up one orphan per interval."""
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else cmd
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as exc:
        return f"cannot run {argv[0]}: {_describe(exc)}"
    exited = False
    try:
        exited = _wait_unreaped(proc.pid, end)
    finally:
        # The leader is alive or an unreaped zombie: its pid, and so the group id, is still
        # ours and cannot name anybody else's group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    if not exited:
        return "timeout"
    if code == 0:
        return None
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


def _wait_unreaped(pid: int, end: float) -> bool:
    """Wait until our child `pid` has exited, without reaping it; False at `end`."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # no pidfds (old kernel, seccomp): ask waitid a hundred times a second
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.01, left))
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(max(0, math.ceil((end - time.monotonic()) * 1000))))
    finally:
        os.close(pidfd)


@dataclass(frozen=True)
class ProbeTarget:
    job_id: str
    health: Health  # the spec's probe, paths already resolved
    cwd: str | None
    env: dict[str, str] | None
    started_at: float  # time.time() when the job's process started (start_period counts here)


def probe_all(targets: Sequence[ProbeTarget], deadline: float) -> dict[str, str | None]:
    """Probe every target at once (`reconcile --once`): a thread per probe that needs one
    (idle threads are reused), each probe bounded by its own timeout and by `deadline`, so
    the whole call ends by the deadline whatever the targets do. Job id -> reason/None."""
    if not targets:
        return {}
    with ThreadPoolExecutor(len(targets), thread_name_prefix="health-once") as pool:
        futures = {t.job_id: pool.submit(probe_reason, t.health, cwd=t.cwd, env=t.env,
                                         deadline=deadline) for t in targets}
    return {job_id: future.result() for job_id, future in futures.items()}


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

    A slow probe never delays another job's. Each job has at most one probe in flight
    (`_busy`), and the workers are elastic: `base_workers` serve the usual quick probes (a
    burst of a thousand due at once does not make a thousand threads), and every probe that
    has run for `STUCK_AFTER` counts as stuck and gets a worker added in its place while
    probes wait, so at most STUCK_AFTER after every base worker got stuck, a due probe has a
    worker again. Workers above the base leave after `IDLE_EXIT_SECONDS` without work. With a
    fixed pool of four, four trickling endpoints held every worker for good.
    """

    STUCK_AFTER = 0.02  # seconds: a loopback connect takes well under a millisecond
    IDLE_EXIT_SECONDS = 10.0

    def __init__(self, on_change: Callable[[], None], *, base_workers: int = 4,
                 clock: Callable[[], float] = time.time) -> None:
        self._on_change = on_change
        self._clock = clock
        self._base_workers = base_workers
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the scheduler: entries, dues, results
        self._work = threading.Condition(lock)  # idle workers wait here for queued probes
        self._entries: dict[str, _Entry] = {}
        self._busy: set[str] = set()  # job ids with a probe queued or in flight
        self._queue: deque[_Entry] = deque()
        self._running_since: dict[str, float] = {}  # job id -> monotonic start of its probe
        self._workers = 0
        self._idle = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Returns without waiting for probes in flight: each is bounded by its own timeout
        and its result is discarded. Workers are daemon threads: they never hold up the
        interpreter's exit."""
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            for entry in self._queue:
                self._busy.discard(entry.target.job_id)
            self._queue.clear()
            self._cond.notify_all()
            self._work.notify_all()
        if thread is not None:
            thread.join()

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
                self._add_workers(now)
                self._cond.wait(self._next_wait(now))

    def _submit(self, entry: _Entry, now: float) -> None:
        self._busy.add(entry.target.job_id)
        entry.due = now + entry.target.health.interval  # the interval counts from probe start
        self._queue.append(entry)
        self._work.notify()

    def _add_workers(self, now: float) -> None:
        """Keep `base_workers` that are not stuck, as long as probes wait for a worker."""
        stuck = sum(1 for since in self._running_since.values()
                    if now - since >= self.STUCK_AFTER)
        while len(self._queue) > self._idle and self._workers < stuck + self._base_workers:
            self._workers += 1
            threading.Thread(target=self._worker, name="health-probe", daemon=True).start()

    def _next_wait(self, now: float) -> float | None:
        """Until the next probe is due or, while probes wait, a running one counts as stuck."""
        times = [e.due for job_id, e in self._entries.items() if job_id not in self._busy]
        if self._queue:
            times += [since + self.STUCK_AFTER for since in self._running_since.values()
                      if since + self.STUCK_AFTER > now]
        return max(0.0, min(times) - now) if times else None

    def _worker(self) -> None:
        while True:
            with self._cond:
                entry = self._take()
                if entry is None:
                    self._workers -= 1
                    return
            self._probe_once(entry)

    def _take(self) -> _Entry | None:
        """The next queued probe (lock held); None when this worker should end."""
        while not self._queue:
            if self._stopping:
                return None
            self._idle += 1
            notified = self._work.wait(self.IDLE_EXIT_SECONDS)
            self._idle -= 1
            if not notified and not self._queue and self._workers > self._base_workers:
                return None
        entry = self._queue.popleft()
        self._running_since[entry.target.job_id] = time.monotonic()
        if self._queue:
            self._cond.notify()  # the scheduler must see when this probe becomes stuck
        return entry

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
                self._running_since.pop(target.job_id, None)
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

