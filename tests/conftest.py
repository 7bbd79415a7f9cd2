"""Isolation for every test: its own specs dir, state dir and free ports, and a sweep that
kills every process the test started (directly or through the reconciler), even on failure."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.settings import Settings
from tests.helpers import wait_for


@pytest.fixture
def specs_dir(tmp_path: Path) -> Path:
    path = tmp_path / "specs"
    path.mkdir()
    return path


@pytest.fixture
def settings(specs_dir: Path, state_dir: Path) -> Settings:
    # settle=0: tests write a spec and pass at once; the settle window has its own tests
    # (tests/test_spec_settle.py), which wait for it for real.
    return Settings(specs_dir=specs_dir, state_dir=state_dir, settle=0.0)


@pytest.fixture
def reconciler(settings: Settings) -> Iterator[Reconciler]:
    """An in-process reconciler on this test's dirs (its children are swept by state_dir)."""
    with Reconciler(settings) as rec:
        yield rec


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    _kill_processes_with_env("RECONCILER_STATE_DIR", str(path))


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _kill_processes_with_env(name: str, value: str) -> None:
    """SIGKILL every process (and its session) that the reconciler spawned for this test."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, 1):
            continue
        pid = int(entry)
        if _environ(pid).get(name) == value:
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


class Foreign:
    """Processes a test starts outside the reconciler; all killed at teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def listen_tcp(self, port: int) -> subprocess.Popen[bytes]:
        """A foreign python process listening on 127.0.0.1:port; returns once it listens."""
        code = ("import socket,time\n"
                "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                f"s.bind(('127.0.0.1',{port})); s.listen()\n"
                "while True: time.sleep(3600)\n")
        proc = self.start([sys.executable, "-c", code])
        wait_for(lambda: _port_listening(port), message=f"foreign listener on {port}")
        return proc

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:  # once reaped, its pid may be someone else's group
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _port_listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def foreign() -> Iterator[Foreign]:
    registry = Foreign()
    yield registry
    registry.cleanup()


@pytest.fixture
def free_port() -> Iterator[object]:
    """A factory of distinct free TCP ports on 127.0.0.1."""
    handed: set[int] = set()

    def factory() -> int:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in handed:
                handed.add(port)
                return port

    yield factory
