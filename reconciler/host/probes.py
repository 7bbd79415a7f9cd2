"""Health probe mechanics: one bounded attempt to ask a job "are you serving?".

This is the host side of health checking: it opens sockets, resolves names, runs the `exec`
probe's command and kills what that command leaves behind. *When* to probe and what a result
means (ready, failures in a row, start_period) is scheduling, in `reconciler.health`.

Probes only talk to loopback or unix sockets we were told about, and an `exec` probe runs
with the job's environment, never in a shell unless it asked for one.

Bounds (docs/operations.md, "Health probes"): `health.timeout` is a deadline for the whole
probe (name lookup, connect, request, response, or the command's whole run), never a limit
per socket operation, so a server that trickles a byte at a time cannot hold a probe longer
than that. An HTTP probe reads at most `MAX_HEAD_BYTES` of the response (status line and
headers; the body is never read).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import assert_never
from urllib.parse import urljoin, urlsplit

from reconciler.host import pidfd
from reconciler.spec.model import ExecHealth, Health, HttpHealth, TcpHealth, UnixHealth
from reconciler.timing import NO_PIDFD_POLL_SECONDS

MAX_HEAD_BYTES = 16 * 1024  # status line + headers; a probe never reads a body
MAX_REDIRECTS = 4  # followed within the same deadline, to http:// URLs only
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? +(\d{3})(?: |$)")
_UNSAFE_IN_REQUEST = re.compile(r"[\x00-\x20\x7f]")


class _Failed(Exception):
    """A probe that got an answer, just not a healthy one; the message is the reason."""


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
        match health:
            case TcpHealth():
                return _tcp(health.tcp, end)
            case UnixHealth():
                return _unix(health.unix, end)
            case HttpHealth():
                return _http(health.http, end)
            case ExecHealth():
                return _exec(health.exec, end, cwd, env)
            case _:  # a new probe kind without a case here is a type error, not a failed probe
                assert_never(health)
    except Exception as exc:  # any failure is a reason, not a crash
        return _describe(exc)


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
        head = read_head(sock, end)
    return parse_head(head)


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


# What getaddrinfo returns, read-only: (family, type, proto, canonname, sockaddr).
_AddrInfo = Sequence[tuple[socket.AddressFamily, socket.SocketKind, int, str,
                           tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]]]


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


def read_head(sock: socket.socket, end: float) -> bytes:
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


def parse_head(head: bytes) -> tuple[int, str | None]:
    """The status and, for a redirect, its Location; _Failed for what is not an HTTP answer."""
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
            pidfd.SYSTEM.kill_own_group(proc.pid, signal.SIGKILL)
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
    fd = pidfd.SYSTEM.try_open(pid)
    if fd is None:  # no pidfds (old kernel, seccomp): ask waitid again and again
        while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(NO_PIDFD_POLL_SECONDS, left))
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, math.ceil((end - time.monotonic()) * 1000))))
    finally:
        os.close(fd)
