"""Paths the reconciler cleans up or writes are never followed or removed unless they are
provably ours to touch: socket cleanup unlinks only a stale socket file (never a regular
file, directory or symlink), and a pidfile path that is a symlink is never followed, neither
to read a pid nor to write one."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.host.identity import identity_of
from reconciler.host.pidfile import read_pidfile, remove_pidfile, write_pidfile
from reconciler.host.sockets import remove_stale_socket
from reconciler.settings import Settings
from tests.conftest import Foreign
from tests.helpers import socket_state, wait_for
from tests.security.common import PY, SLEEPER, write_spec


def stale_socket(path: Path) -> Path:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    return path


def _regular(tmp: Path) -> Path:
    path = tmp / "victim"
    path.write_text("precious\n")
    return path


def _directory(tmp: Path) -> Path:
    path = tmp / "victim"
    path.mkdir()
    (path / "inside").write_text("precious\n")
    return path


def _link_to_stale_socket(tmp: Path) -> Path:
    target = stale_socket(tmp / "real.sock")
    path = tmp / "victim"
    path.symlink_to(target)
    return path


def _link_to_file(tmp: Path) -> Path:
    target = tmp / "real.txt"
    target.write_text("precious\n")
    path = tmp / "victim"
    path.symlink_to(target)
    return path


def _dangling_link(tmp: Path) -> Path:
    path = tmp / "victim"
    path.symlink_to(tmp / "nowhere.sock")
    return path


def _fifo(tmp: Path) -> Path:
    path = tmp / "victim"
    os.mkfifo(path)
    return path


MAKERS: dict[str, Callable[[Path], Path]] = {
    "regular-file": _regular, "directory": _directory, "symlink-to-stale-socket":
    _link_to_stale_socket, "symlink-to-file": _link_to_file, "dangling-symlink": _dangling_link,
    "fifo": _fifo,
}


def snapshot(tmp: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry under `tmp`: (inode, mode, content or link target)."""
    found = {}
    for root, dirs, files in os.walk(tmp):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if os.path.islink(path):
                extra = "-> " + os.readlink(path)
            elif os.path.isfile(path) and not name.endswith("fifo"):
                extra = Path(path).read_text() if st.st_size < 4096 and not _is_fifo(st) else ""
            else:
                extra = ""
            found[os.path.relpath(path, tmp)] = (st.st_ino, st.st_mode, extra)
    return found


def _is_fifo(st: os.stat_result) -> bool:
    import stat
    return stat.S_ISFIFO(st.st_mode)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_remove_stale_socket_never_removes_anything_but_a_stale_socket(
        tmp_path: Path, kind: str) -> None:
    path = MAKERS[kind](tmp_path)
    before = snapshot(tmp_path)
    assert remove_stale_socket(str(path)) is False
    assert snapshot(tmp_path) == before
    assert socket_state(str(path)).kind in ("not-socket", "absent")


def test_remove_stale_socket_removes_a_stale_socket_and_spares_a_live_one(
        tmp_path: Path) -> None:
    stale = stale_socket(tmp_path / "stale.sock")
    live_path = tmp_path / "live.sock"
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(live_path))
    live.listen()
    try:
        assert remove_stale_socket(str(stale)) is True and not stale.exists()
        assert remove_stale_socket(str(live_path)) is False and live_path.exists()
    finally:
        live.close()


def test_remove_stale_socket_spares_a_regular_file_that_replaced_the_socket(
        tmp_path: Path) -> None:
    """A socket file replaced by a regular file of the same name is never removed."""
    path = stale_socket(tmp_path / "s.sock")
    path.unlink()
    path.write_text("precious\n")
    assert remove_stale_socket(str(path)) is False
    assert path.read_text() == "precious\n"


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_a_full_pass_declaring_the_path_as_a_socket_never_removes_it(
        settings: Settings, reconciler: Reconciler, tmp_path: Path, kind: str) -> None:
    area = tmp_path / "area"
    area.mkdir()
    path = MAKERS[kind](area)
    before = snapshot(area)
    write_spec(settings.specs_dir, "s.yaml", f"""\
    name: s
    actions:
      - name: server
        process: true
        sockets: [{json.dumps(str(path))}]
        kill_others: true
        cmd: {json.dumps(SLEEPER)}
    """)
    result = reconciler.reconcile()
    assert not any(s.verb == "cleanup" and s.path == str(path) for s in result.plan.steps)
    assert snapshot(area) == before
    [job] = [j for j in result.jobs if j.action == "server"]
    assert job.phase == "blocked", (job.phase, job.reason)
    assert "not a socket" in job.reason or "not removed" in job.reason
    again = reconciler.reconcile()  # and the retries do not change their mind
    assert snapshot(area) == before and again.jobs


# --- pidfiles ------------------------------------------------------------------------------


def test_read_pidfile_never_follows_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text(f"{os.getpid()}\n")
    link = tmp_path / "x.pid"
    link.symlink_to(target)
    assert read_pidfile(link) is None


def test_write_pidfile_replaces_the_symlink_and_leaves_its_target_untouched(
        tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("do not overwrite\n")
    os.chmod(target, 0o644)
    before = os.stat(target)
    link = tmp_path / "x.pid"
    link.symlink_to(target)
    write_pidfile(link, 4242)
    assert not link.is_symlink() and link.read_text() == "4242\n"
    assert target.read_text() == "do not overwrite\n"
    assert os.stat(target).st_mode == before.st_mode


def test_remove_pidfile_never_removes_through_or_the_symlink(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("4242\n")
    link = tmp_path / "x.pid"
    link.symlink_to(target)
    assert remove_pidfile(link, 4242) is False
    assert link.is_symlink() and target.read_text() == "4242\n"


def test_singleton_with_a_symlinked_pidfile_neither_follows_nor_kills(
        settings: Settings, reconciler: Reconciler, foreign: Foreign, tmp_path: Path) -> None:
    """The symlink leads to a file naming a live twin of the action's own command: following
    it would stop that process. It must survive, and the link's target must stay as it was."""
    twin = foreign.start(SLEEPER)
    wait_for(lambda: identity_of(twin.pid), message="twin running")
    target = tmp_path / "elsewhere.pid"
    target.write_text(f"{twin.pid}\n")
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    link = settings.run_dir / "one.main.pid"
    link.symlink_to(target)
    write_spec(settings.specs_dir, "one.yaml", f"""\
    name: one
    actions:
      - {{name: main, process: true, singleton: true, cmd: {json.dumps(SLEEPER)},
          stop: {{timeout: 1s}}}}
    """)
    result = reconciler.converge(wait=20)
    assert result.converged
    assert not any(s.verb == "kill" for s in result.plan.steps)
    assert twin.poll() is None and identity_of(twin.pid) is not None
    assert target.read_text() == f"{twin.pid}\n"
    [job] = [j for j in result.jobs if j.action == "main"]
    assert not link.is_symlink() and link.read_text() == f"{job.pid}\n"


def test_declared_pidfile_symlink_to_a_system_file_is_not_written_through(
        settings: Settings, reconciler: Reconciler, tmp_path: Path) -> None:
    target = tmp_path / "passwd-like"
    target.write_text("root:x:0:0::/root:/bin/sh\n")
    link = tmp_path / "run" / "svc.pid"
    link.parent.mkdir()
    link.symlink_to(target)
    write_spec(settings.specs_dir, "p.yaml", f"""\
    name: p
    actions:
      - {{name: main, process: true, pidfile: {json.dumps(str(link))},
          cmd: {json.dumps([PY, "-c", "import time; time.sleep(3600)"])}}}
    """)
    assert reconciler.converge(wait=20).converged
    assert target.read_text() == "root:x:0:0::/root:/bin/sh\n"
    assert not link.is_symlink()
