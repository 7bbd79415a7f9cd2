"""Isolation for every test: its own specs dir, state dir and free ports, and a sweep that
kills every process the test started (directly or through the reconciler), even on failure."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.host import procfs
from reconciler.settings import REFUSE_DEFAULT_STATE_DIR, Settings
from tests.helpers import wait_for
from tests.probe_peers import Listeners, Trickler


@pytest.fixture(scope="session", autouse=True)
def refuse_the_real_state_dir() -> Iterator[None]:
    """For the whole session, `Settings` refuse the real default state dir (see
    reconciler/settings.py). An environment variable rather than a patch, so the CLI
    subprocesses tests start are guarded too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(REFUSE_DEFAULT_STATE_DIR, "1")
        yield


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


FOREIGN_MARKER = "RECONCILER_TEST_FOREIGN"


def kill_marked(name: str, value: str, timeout: float = 10.0) -> None:
    """SIGKILL every process whose initial environment has name=value, until none is left
    (a process may fork between our scan and its kill). Each is signalled through a pidfd
    opened BEFORE its environment is checked again: if the pid was recycled after the scan,
    the pidfd names the newcomer, whose environment then lacks the marker, so it is spared."""
    def none_left() -> bool:
        excluded = {1, os.getpid(), os.getppid()}
        found = False
        for pid in procfs.iter_pids():
            if pid in excluded or procfs.read_environ_var(pid, name) != value:
                continue
            found = True
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue  # gone
            try:
                if procfs.read_environ_var(pid, name) == value:
                    with contextlib.suppress(OSError):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            finally:
                os.close(pidfd)
        return not found  # a zombie has no environ: it is not found, and needs no kill
    wait_for(none_left, timeout=timeout, message=f"processes with {name}={value} killed")


class Foreign:
    """Processes a test starts outside the reconciler; all killed at teardown, with
    everything they started (children, daemons that left the session), found by a marker
    variable each of them inherits."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.marker = f"{os.getpid()}-{secrets.token_hex(8)}"

    def start(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        given = kwargs.pop("env", None)
        base: Mapping[str, str] = os.environ if given is None else given  # type: ignore[assignment]
        # First, so a bounded environ read finds it even behind a huge environment.
        env = {FOREIGN_MARKER: self.marker, **base}
        proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, **kwargs)  # type: ignore[call-overload]
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
        """Each leader leads its own session and group (pgid = sid = its pid). While it is
        unreaped its pid cannot be reused, so killpg(pid) is safe. Once a test has reaped
        it, the group may live on (a `sleep &` the shell left behind): the number then stays
        reserved only while some member exists, and as soon as the last one exits it may be
        handed to a new process that could make it a stranger's group id, so killpg(pid)
        could hit that stranger. Members that left the group (setsid, double fork) are not
        in it at all. Both cases are found instead by the marker every process we started
        inherited, and killed one by one through pidfds after re-checking the marker."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
        kill_marked(FOREIGN_MARKER, self.marker)
        for proc in self.procs:
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


@pytest.fixture
def listener() -> Iterator[Listeners]:
    """In-process TCP listeners on 127.0.0.1, closed at teardown."""
    listeners = Listeners()
    yield listeners
    listeners.close()


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    """A Trickler, closed at teardown."""
    server = Trickler()
    yield server
    server.close()
