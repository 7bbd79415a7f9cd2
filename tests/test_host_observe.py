"""observe(): one read-only snapshot, which reaps our own children first."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

from reconciler.host import procfs
from reconciler.host.identity import identity_of
from reconciler.host.observe import observe
from reconciler.host.pidfile import write_pidfile
from reconciler.host.spawn import Children
from reconciler.observed import Exit, PidfileState
from tests.conftest import Foreign
from tests.helpers import service_env, wait_for


def test_empty_observation() -> None:
    observed = observe()
    assert observed.boot_id == procfs.read_boot_id()
    assert (observed.procs, observed.sockets, observed.ports, observed.pidfiles,
            observed.exits) == ({}, {}, {}, {}, {})


def test_own_dead_children_are_reaped_with_their_exit_code(tmp_path: Path) -> None:
    children = Children()
    identity = children.spawn([sys.executable, "-c", "raise SystemExit(5)"], cwd=tmp_path,
                              env=service_env({}), log_path=tmp_path / "main.log")
    wait_for(lambda: children.wait(0.5), message="child exited")
    observed = observe(pids=[identity.pid], children=children)
    assert observed.exits == {identity.pid: Exit(identity, 5)}
    assert identity.pid not in observed.procs
    assert observed.alive(identity) is None
    assert observe(pids=[identity.pid], children=children).exits == {}  # exactly once
    children.close()


def test_pids_and_pidfiles(foreign: Foreign, tmp_path: Path) -> None:
    proc = foreign.start([sys.executable, "-c", "import time; time.sleep(600)"])
    identity = wait_for(lambda: identity_of(proc.pid), message="sleeper running")
    live, garbage, dead = tmp_path / "live.pid", tmp_path / "garbage.pid", tmp_path / "dead.pid"
    write_pidfile(live, proc.pid)
    garbage.write_text("not a pid")
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    dead.write_text(f"{dead_pid}\n")

    observed = observe(pids=[proc.pid, dead_pid],
                       pidfiles=[str(live), str(garbage), str(dead), str(tmp_path / "none")])

    assert observed.alive(identity) is not None
    assert set(observed.procs) == {proc.pid}
    assert observed.pidfiles[str(live)] == PidfileState(str(live), proc.pid,
                                                        observed.procs[proc.pid])
    assert observed.pidfiles[str(garbage)] == PidfileState(str(garbage), None, None)
    assert observed.pidfiles[str(dead)] == PidfileState(str(dead), dead_pid, None)
    assert observed.pidfiles[str(tmp_path / "none")].pid is None


def test_holders_are_in_procs_and_nothing_is_changed(
        foreign: Foreign, free_port: Callable[[], int], tmp_path: Path) -> None:
    port = free_port()
    proc = foreign.listen_tcp(port)
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(stale))

    observed = observe(sockets=[str(stale)], ports=[port], candidates=[proc.pid])

    assert observed.ports[port].listening
    assert [h.pid for h in observed.ports[port].holders] == [proc.pid]
    assert observed.procs[proc.pid] == observed.ports[port].holders[0]
    assert observed.sockets[str(stale)].kind == "stale"
    assert stale.exists()  # observing never cleans up
