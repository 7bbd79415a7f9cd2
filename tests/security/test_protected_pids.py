"""PID ≤ 1, the controller itself and its ancestors are never signalled, whatever a record,
a pidfile or a port holder says.

In-process checks replace the kernel calls that deliver signals with recorders (so a
regression cannot take the test runner or its parents down); the end-to-end check runs the
controller in a sacrificial child process whose parent is sacrificial too, with real
signals."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.host import procs
from reconciler.host.identity import identity_of
from reconciler.host.procfs import read_boot_id, read_stat
from reconciler.identity import Identity
from reconciler.settings import Settings
from tests.conftest import Foreign
from tests.helpers import wait_for
from tests.security.common import PY, SLEEPER, run_cli, write_spec

REPO = str(Path(__file__).resolve().parents[2])


class Recorder:
    """Stands in for pidfd_send_signal / kill: records the target pid, delivers nothing."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent: list[tuple[int, int]] = []
        self._fds: dict[int, int] = {}
        real_open = os.pidfd_open

        def pidfd_open(pid: int, flags: int = 0) -> int:
            fd = real_open(pid, flags)
            self._fds[fd] = pid
            return fd

        def pidfd_send_signal(fd: int, sig: int, *args: object) -> None:
            self.sent.append((self._fds.get(fd, -999), sig))

        def kill(pid: int, sig: int) -> None:
            self.sent.append((pid, sig))

        monkeypatch.setattr(os, "pidfd_open", pidfd_open)
        monkeypatch.setattr(signal, "pidfd_send_signal", pidfd_send_signal)
        monkeypatch.setattr(os, "kill", kill)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    yield Recorder(monkeypatch)


def ancestors() -> list[int]:
    chain, pid = [], os.getppid()
    while pid > 1:
        chain.append(pid)
        stat = read_stat(pid)
        if stat is None:
            break
        pid = stat.ppid
    return chain


def protected_identities() -> list[Identity]:
    boot = read_boot_id()
    found = [Identity(boot, pid, 0) for pid in (1, 0, -1, -2)]
    for pid in (1, os.getpid(), *ancestors()):
        ident = identity_of(pid)
        if ident is not None:
            found.append(ident)
    return found


def test_recorder_sees_an_ordinary_signal(recorder: Recorder, foreign: Foreign) -> None:
    """Control: the recorder does catch a signal the code may send."""
    proc = foreign.start(SLEEPER)
    ident = wait_for(lambda: identity_of(proc.pid), message="sleeper running")
    assert procs.signal_identity(ident, signal.SIGTERM) is True
    assert recorder.sent == [(proc.pid, signal.SIGTERM)]


def test_signal_identity_refuses_protected_pids(recorder: Recorder) -> None:
    for ident in protected_identities():
        assert procs.signal_identity(ident, signal.SIGTERM) is False, ident
        assert procs.signal_identity(ident, signal.SIGKILL) is False, ident
    assert recorder.sent == []


def test_stop_process_refuses_protected_pids(recorder: Recorder) -> None:
    for ident in protected_identities():
        result = procs.stop_process(ident, signal.SIGTERM, 0.05)
        assert result.signalled == [] and result.killed == [], ident
        assert ident.pid in result.refused
    assert recorder.sent == []


def test_stop_session_refuses_our_session_and_our_ancestors(recorder: Recorder) -> None:
    boot = read_boot_id()
    leaders = [*protected_identities()]
    own_sid = os.getsid(0)
    stat = read_stat(own_sid) if own_sid > 1 else None
    if stat is not None:
        leaders.append(Identity(boot, own_sid, stat.starttime))
    for leader in leaders:
        result = procs.stop_session(leader, signal.SIGTERM, 0.05)
        assert result.signalled == [] and result.killed == [], leader
    assert recorder.sent == []


def test_session_sweep_skips_a_protected_member(recorder: Recorder, foreign: Foreign,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A session of ours that (somehow) contains the controller: the others are signalled,
    the controller is not. Simulated by treating the sleeper's session as containing us."""
    proc = foreign.start(SLEEPER)
    leader = wait_for(lambda: identity_of(proc.pid), message="leader running")
    me = identity_of(os.getpid())
    assert me is not None
    real_members = procs.session_members

    def members(sid: int) -> list[object]:
        found = list(real_members(sid))
        mine = procs.proc_info(os.getpid())
        return [*found, mine] if sid == leader.pid and mine is not None else found

    monkeypatch.setattr(procs, "session_members", members)
    result = procs.stop_session(leader, signal.SIGTERM, 0.05)
    assert os.getpid() in result.refused
    assert all(pid != os.getpid() for pid, _ in recorder.sent)
    assert (proc.pid, signal.SIGTERM) in recorder.sent


CHILD = r"""
import json, os, socket, sys, time
from pathlib import Path
d = os.environ.get("SACRIFICE_DIR")
if not d:
    time.sleep(3600); raise SystemExit
sys.path.insert(0, os.environ["REPO"])
from reconciler.controller import Reconciler
from reconciler.settings import Settings
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["C_PORT"]))); s.listen()
settings = Settings(Path(os.environ["SPECS"]), Path(os.environ["STATE"]))
settings.state_dir.mkdir(mode=0o700)  # a state dir must be private
run = settings.run_dir; run.mkdir(mode=0o700)
(run / "parent.twin.pid").write_text(f"{os.getppid()}\n")
(run / "me.twin.pid").write_text(f"{os.getpid()}\n")
with Reconciler(settings) as r:
    res = r.reconcile()
steps = [[st.verb, getattr(getattr(st, "target", None), "pid", None), st.describe()]
         for st in res.plan.steps]
Path(d, "result.tmp").write_text(json.dumps({"pid": os.getpid(), "steps": steps}))
os.replace(Path(d, "result.tmp"), Path(d, "result.json"))
"""

PARENT = r"""
import os, socket, subprocess, sys, time
d = os.environ.get("SACRIFICE_DIR")
if d:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ["P_PORT"]))); s.listen()
    rc = subprocess.call([sys.executable, "-c", os.environ["CHILD_CODE"]])
    open(os.path.join(d, "child_rc.tmp"), "w").write(str(rc))
    os.replace(os.path.join(d, "child_rc.tmp"), os.path.join(d, "child_rc"))
time.sleep(3600)
"""


def test_a_pass_never_kills_the_controller_or_its_parent_as_foreign_holders(
        specs_dir: Path, state_dir: Path, tmp_path: Path, foreign: Foreign,
        free_port: object) -> None:
    """The controller (C) holds a port that a kill_others action declares and is named by a
    singleton's pidfile with its own command line; its parent (P) likewise. The plan wants
    them stopped; execution must refuse, with real signals."""
    c_port, p_port = free_port(), free_port()  # type: ignore[operator]
    parent_argv, child_argv = [PY, "-c", PARENT], [PY, "-c", CHILD]
    for service, port, argv in (("me", c_port, child_argv), ("parent", p_port, parent_argv)):
        write_spec(specs_dir, f"{service}.yaml", f"""\
        name: {service}
        actions:
          - name: port
            process: true
            kill_others: true
            tcp_ports: [{port}]
            cmd: {json.dumps(SLEEPER)}
            stop: {{timeout: 200ms}}
          - name: twin
            process: true
            singleton: true
            cmd: {json.dumps(argv)}
            stop: {{timeout: 200ms}}
        """)
    box = tmp_path / "box"
    box.mkdir()
    env = {**os.environ, "SACRIFICE_DIR": str(box), "REPO": REPO, "CHILD_CODE": CHILD,
           "C_PORT": str(c_port), "P_PORT": str(p_port), "SPECS": str(specs_dir),
           "STATE": str(state_dir)}
    parent = foreign.start(parent_argv, env=env)
    wait_for(lambda: (box / "child_rc").exists(), timeout=60, message="sacrificial pass done")
    assert (box / "child_rc").read_text() == "0", "the controller process was killed"
    assert parent.poll() is None, "the controller's parent was killed"
    result = json.loads((box / "result.json").read_text())
    kills = {pid for verb, pid, _ in result["steps"] if verb == "kill"}
    assert {result["pid"], parent.pid} <= kills, result["steps"]  # the path was exercised
    settings = Settings(specs_dir=specs_dir, state_dir=state_dir)
    code, out, _ = run_cli(settings, "events", "-o", "json", "-n", "1000")
    assert code == 0
    killed = [e for e in json.loads(out) if e["kind"] == "kill"]
    assert all(e["detail"].get("pid") not in (result["pid"], parent.pid) or
               (not e["detail"].get("signalled") and not e["detail"].get("killed"))
               for e in killed), killed
