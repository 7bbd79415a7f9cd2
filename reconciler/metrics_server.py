"""The daemon's HTTP endpoint: `/metrics` (Prometheus) and `/healthz`.

A small `ThreadingHTTPServer` of our own rather than prometheus_client's
`start_http_server`, because `/healthz` must answer from the daemon's own state (the last
successful pass) and everything else must be a 404, not a second copy of the metrics.
`/metrics` is always the text format (0.0.4), which every Prometheus reads: the per-job
series are rendered by our own fast path (`metrics.JobSeries`), which writes no OpenMetrics.

The address is the operator's: loopback unless a non-loopback host is written out in
`--metrics-addr` (service names, revisions and exit codes are not for every network).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from reconciler.metrics import CONTENT_TYPE, Metrics
from reconciler.timing import THREAD_JOIN_SECONDS

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
# A scraper that opens a connection and sends nothing must not hold a thread for long.
REQUEST_TIMEOUT_SECONDS = 10.0
# Requests served at once (one thread each); more are closed at once: a Prometheus pair
# needs two, and a flood of idle connections must not become thousands of threads.
MAX_CONNECTIONS = 8


class AddressError(ValueError):
    """`--metrics-addr` names no address we may serve on."""


@dataclass(frozen=True, slots=True)
class MetricsAddress:
    """Where to serve: `host` as written (or the loopback default), the port, and `bind`,
    the address `host` resolved to when it was checked (served as is, never resolved again:
    a name that resolved to loopback for the check cannot bind elsewhere afterwards)."""

    host: str
    port: int
    bind: str = DEFAULT_HOST

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(text: str, *, explicit: bool) -> MetricsAddress:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` (the last two: 127.0.0.1).

    A host that resolves to anything but loopback is refused unless `explicit` (written in
    `--metrics-addr` itself, not taken from the environment): exposing the metrics to a
    network is a decision an operator makes on purpose, in the one place they can see it.
    """
    host, port_text = _split(text.strip())
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise AddressError(f"{text!r}: the port must be a number from 1 to 65535")
    host = host or DEFAULT_HOST
    found = resolve(host, int(port_text))
    if not explicit and not all(_loopback(a) for a in found):
        raise AddressError(f"{text!r} is not a loopback address: name it in --metrics-addr "
                           "itself to serve the metrics on a network")
    # a name with several addresses (localhost: ::1 and 127.0.0.1) is served on the first
    return MetricsAddress(host, int(port_text), found[0])


def _split(text: str) -> tuple[str, str]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise AddressError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
        return host, rest[1:]
    host, colon, port = text.rpartition(":")
    if ":" in host:
        raise AddressError(f"{text!r}: write an IPv6 address as [ADDRESS]:PORT")
    return (host, port) if colon else ("", text)


def resolve(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        raise AddressError(f"cannot resolve {host!r}: {err}") from None
    if not found:
        raise AddressError(f"cannot resolve {host!r}: no address")
    return [str(info[4][0]) for info in found]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """Serves `metrics` on `address` from its own threads until `stop()`. `healthy_within`
    is how recent the last successful pass must be for `/healthz` to say 200 (two resync
    intervals: a daemon that stopped passing is unhealthy well before anyone notices)."""

    def __init__(self, metrics: Metrics, address: MetricsAddress,
                 healthy_within: float) -> None:
        self.metrics = metrics
        self.healthy_within = healthy_within
        family = socket.AF_INET6 if ":" in address.bind else socket.AF_INET
        self._server = _Server((address.bind, address.port), self, family)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Also when never started (the daemon failed before its loop): `shutdown()` would
        then wait forever for a serve loop that never ran."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(THREAD_JOIN_SECONDS)
        self._server.server_close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung scraper never keeps the daemon from exiting

    def __init__(self, address: tuple[str, int], owner: MetricsServer,
                 family: socket.AddressFamily) -> None:
        self.owner = owner
        self.address_family = family  # read by the base's __init__ to create the socket
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per request, at most MAX_CONNECTIONS at once; beyond that the
        connection is closed unanswered (the scraper retries at its next interval)."""
        if not self._slots.acquire(blocking=False):
            log.debug("metrics: %s refused: %d requests in progress", client_address,
                      MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started: nothing else will release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver's own prints a traceback straight to stderr, past the log format,
        for every scraper that hangs up mid-reply (a Prometheus scrape timeout, a curl cut
        short): that is the client's business. Anything else is ours, logged once per
        request as an error."""
        err = sys.exc_info()[1]
        if isinstance(err, (ConnectionError, TimeoutError)):
            log.debug("metrics: %s hung up: %s", client_address, err)
        else:
            log.error("metrics: a request from %s failed", client_address, exc_info=err)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_SECONDS
    server_version = "reconciler"

    def do_GET(self) -> None:  # the name http.server dispatches to
        path = self.path.partition("?")[0]
        owner = self.server.owner
        if path == "/metrics":
            self._reply(200, owner.metrics.exposition(), CONTENT_TYPE)
        elif path == "/healthz":
            self._healthz(owner)
        else:
            self._reply(404, b"not found: try /metrics or /healthz\n")

    def _healthz(self, owner: MetricsServer) -> None:
        if owner.metrics.healthy(owner.healthy_within):
            self._reply(200, b"ok\n")
            return
        age = owner.metrics.seconds_since_success()
        why = ("no pass has succeeded yet" if age is None else
               f"the last successful pass was {age:.0f}s ago (more than "
               f"{owner.healthy_within:.0f}s)")
        self._reply(503, f"unhealthy: {why}\n".encode())

    def _reply(self, status: int, body: bytes,
               content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # `format`: the base's name
        """Every scrape would be a line on stderr: only a debug log shows them."""
        log.debug("metrics: %s %s", self.address_string(), format % args)
