"""Health probes: is a running job actually serving?

A probe is a single, bounded attempt; the caller decides how often to ask and how many
failures matter. Probes only talk to loopback or unix sockets we were told about, and an
`exec` probe runs with the job's environment, never in a shell unless it asked for one.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.error
import urllib.request

from reconciler.spec.model import ExecHealth, Health, HttpHealth, TcpHealth, UnixHealth


def probe(health: Health, *, cwd: str | None = None, env: dict[str, str] | None = None) -> bool:
    """One probe attempt, bounded by `health.timeout`. Never raises."""
    try:
        if isinstance(health, TcpHealth):
            return _tcp(health.tcp, health.timeout)
        if isinstance(health, UnixHealth):
            return _unix(health.unix, health.timeout)
        if isinstance(health, HttpHealth):
            return _http(health.http, health.timeout)
        if isinstance(health, ExecHealth):
            return _exec(health.exec, health.timeout, cwd, env)
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    return False


def _tcp(port: int, timeout: float) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout):
        return True


def _unix(path: str, timeout: float) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        return True


def _http(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except urllib.error.HTTPError:
        return False


def _exec(cmd: list[str] | str, timeout: float, cwd: str | None,
          env: dict[str, str] | None) -> bool:
    argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else cmd
    result = subprocess.run(argv, cwd=cwd, env=env, timeout=timeout, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return result.returncode == 0
