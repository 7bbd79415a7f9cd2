"""Unix sockets: stale ones are detected and removed, live ones and non-sockets never are."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from reconciler.host.sockets import inspect_unix_sockets, remove_stale_socket
from tests.conftest import Foreign
from tests.helpers import socket_state, wait_for


def stale_socket(path: Path) -> Path:
    """A socket file whose listener is gone (closed without unlinking, like after a crash)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        sock.listen()
    return path


def listen_unix(foreign: Foreign, path: Path, kind: str = "SOCK_STREAM",
                cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A foreign process bound to `path`; returned once the socket answers."""
    code = ("import socket, sys, time\n"
            f"s = socket.socket(socket.AF_UNIX, socket.{kind})\n"
            "s.bind(sys.argv[1])\n"
            + ("s.listen()\n" if kind == "SOCK_STREAM" else "")
            + "time.sleep(600)\n")
    bind_path = os.path.relpath(path, cwd) if cwd else str(path)
    proc = foreign.start([sys.executable, "-c", code, bind_path], cwd=cwd)
    wait_for(lambda: socket_state(str(path)).kind == "listening",
             message=f"listener on {path}")
    return proc


def test_absent(tmp_path: Path) -> None:
    state = socket_state(str(tmp_path / "none.sock"))
    assert (state.kind, state.holders) == ("absent", ())
    assert socket_state(str(tmp_path / "no" / "dir.sock")).kind == "absent"
    assert remove_stale_socket(str(tmp_path / "none.sock")) is False


def test_stale_socket_is_detected_and_removed(tmp_path: Path) -> None:
    path = stale_socket(tmp_path / "stale.sock")
    assert socket_state(str(path)).kind == "stale"
    assert remove_stale_socket(str(path)) is True
    assert not path.exists()
    assert remove_stale_socket(str(path)) is False


def test_listening_socket_found_with_its_holder(tmp_path: Path, foreign: Foreign) -> None:
    path = tmp_path / "api.sock"
    pid = listen_unix(foreign, path).pid
    for candidates in ((), (pid,)):  # found by the full scan and among candidates
        state = socket_state(str(path), candidates)
        assert state.kind == "listening"
        assert [h.pid for h in state.holders] == [pid]
        assert state.holders[0].cmdline[0] == sys.executable
    assert remove_stale_socket(str(path)) is False
    assert path.exists()


def test_listening_socket_of_this_process(tmp_path: Path) -> None:
    path = tmp_path / "own.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        sock.listen()
        state = socket_state(str(path))
        assert state.kind == "listening"
        assert [h.pid for h in state.holders] == [os.getpid()]


def test_datagram_socket_counts_as_listening(tmp_path: Path, foreign: Foreign) -> None:
    path = tmp_path / "dgram.sock"
    pid = listen_unix(foreign, path, kind="SOCK_DGRAM").pid
    assert [h.pid for h in socket_state(str(path)).holders] == [pid]
    assert remove_stale_socket(str(path)) is False


def test_socket_becomes_stale_when_its_holder_dies(tmp_path: Path, foreign: Foreign) -> None:
    path = tmp_path / "api.sock"
    holder = listen_unix(foreign, path)
    holder.kill()
    holder.wait()
    assert wait_for(lambda: socket_state(str(path)).kind == "stale")
    assert remove_stale_socket(str(path)) is True


def test_long_path_beyond_sun_path(tmp_path: Path, foreign: Foreign) -> None:
    """Longer than the 108 bytes of sun_path: still probed (bound via a relative path)."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "api.sock"
    assert len(str(path)) > 108
    holder = listen_unix(foreign, path, cwd=deep)
    state = socket_state(str(path))
    assert state.kind == "listening"  # bound via a relative path: holder may be unknown
    holder.kill()
    holder.wait()
    wait_for(lambda: socket_state(str(path)).kind == "stale")
    assert remove_stale_socket(str(path)) is True


def test_regular_file_dir_and_symlink_are_never_removed(tmp_path: Path) -> None:
    regular = tmp_path / "file.sock"
    regular.write_text("data")
    directory = tmp_path / "dir.sock"
    directory.mkdir()
    target = stale_socket(tmp_path / "target.sock")
    link = tmp_path / "link.sock"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.sock"
    dangling.symlink_to(tmp_path / "nowhere")
    for path in (regular, directory, link, dangling):
        assert socket_state(str(path)).kind == "not-socket"
        assert remove_stale_socket(str(path)) is False
        assert path.is_symlink() or path.exists()
    assert regular.read_text() == "data"
    assert target.exists()  # the stale socket behind the symlink is untouched too


def test_several_paths_in_one_call(tmp_path: Path, foreign: Foreign) -> None:
    live = tmp_path / "live.sock"
    pid = listen_unix(foreign, live).pid
    stale = stale_socket(tmp_path / "stale.sock")
    states = inspect_unix_sockets([str(live), str(stale), str(tmp_path / "x.sock")])
    assert {p: s.kind for p, s in states.items()} == {
        str(live): "listening", str(stale): "stale", str(tmp_path / "x.sock"): "absent"}
    assert [h.pid for h in states[str(live)].holders] == [pid]
