"""PID <= 1, the controller itself and its ancestors are never signalled, whatever a record,
a pidfile or a port holder says.

In-process checks pass a recording `Pidfds` (the seam everything that signals takes) that
records the target of each signal and delivers nothing, so a regression cannot take the test
runner or its parents down; each check runs both with pidfds and on the verify-then-kill
path of a kernel without them. The end-to-end check runs the controller in a sacrificial
child process whose parent is sacrificial too, with real signals."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import pytest

from reconciler.host import procs
from reconciler.host.identity import identity_of
from reconciler.host.members import job_processes
from reconciler.host.pidfd import Pidfds
from reconciler.host.procfs import read_boot_id, read_stat
from reconciler.identity import Identity
from reconciler.settings import Settings
from tests.conftest import Foreign
from tests.helpers import wait_for
from tests.security.common import PY, SLEEPER, run_cli, write_spec

REPO = str(Path(__file__).resolve().parents[2])


class Recorder(Pidfds):
    """Stands in for pidfd_send_signal / kill: records the target pid, delivers nothing.
    With `pidfds=False` it is a kernel without pidfds (ENOSYS), so the kill path is used."""

    def __init__(self, *, pidfds: bool) -> None:
        super().__init__(self._open)
        self._pidfds = pidfds
        self.sent: list[tuple[int, int]] = []
        self._fds: dict[int, int] = {}

    def _open(self, pid: int) -> int:
        if not self._pidfds:
            raise OSError(errno.ENOSYS, "pidfd_open not implemented")
        fd = os.pidfd_open(pid)
        self._fds[fd] = pid
        return fd

    def send_signal(self, fd: int, sig: int) -> None:
        self.sent.append((self._fds.get(fd, -999), sig))

    def kill(self, pid: int, sig: int) -> None:
        self.sent.append((pid, sig))


@pytest.fixture(params=[True, False], ids=["pidfd", "no-pidfd"])
def recorder(request: pytest.FixtureRequest) -> Recorder:
    return Recorder(pidfds=request.param)


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
    assert procs.signal_identity(ident, signal.SIGTERM, pidfds=recorder) is True
    assert recorder.sent == [(proc.pid, signal.SIGTERM)]


def test_signal_identity_refuses_protected_pids(recorder: Recorder) -> None:
    for ident in protected_identities():
        assert procs.signal_identity(ident, signal.SIGTERM, pidfds=recorder) is False, ident
        assert procs.signal_identity(ident, signal.SIGKILL, pidfds=recorder) is False, ident
    assert recorder.sent == []


def test_signal_process_refuses_protected_pids(recorder: Recorder) -> None:
    for ident in protected_identities():
        result = procs.signal_process(ident, signal.SIGTERM, pidfds=recorder)
        assert result.signalled == [], ident
        assert ident.pid in result.refused
    assert recorder.sent == []


def test_signal_job_refuses_protected_leaders_and_members(recorder: Recorder) -> None:
    protected = protected_identities()
    for leader in protected:
        result = procs.signal_job(leader, protected, signal.SIGTERM, pidfds=recorder)
        assert result.signalled == [], leader
    assert recorder.sent == []


def test_our_session_and_our_ancestors_are_never_a_job_session() -> None:
    """A job's members are found by its session only while that session is provably still
    the job's: never our own session, nor one led by a protected pid."""
    boot = read_boot_id()
    leaders = [*protected_identities()]
    own_sid = os.getsid(0)
    stat = read_stat(own_sid) if own_sid > 1 else None
    if stat is not None:
        leaders.append(Identity(boot, own_sid, stat.starttime))
    for leader in leaders:
        assert not procs.session_still_ours(leader), leader
        assert job_processes({"job": leader}) == {}, leader


def test_a_job_that_lists_the_controller_gets_it_refused(recorder: Recorder,
                                                         foreign: Foreign) -> None:
    """A job whose members (somehow) include the controller: the others are signalled, the
    controller is not."""
    proc = foreign.start(SLEEPER)
    leader = wait_for(lambda: identity_of(proc.pid), message="leader running")
    me = identity_of(os.getpid())
    assert me is not None
    result = procs.signal_job(leader, [leader, me], signal.SIGTERM, pidfds=recorder)
    assert result.refused == [os.getpid()]
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
