"""Pidfiles: atomic writes, never following symlinks, careful removal."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from reconciler.host.pidfile import (
    PidfileRefused,
    read_pidfile,
    remove_pidfile,
    write_pidfile,
)


def test_write_then_read(tmp_path: Path) -> None:
    path = tmp_path / "run" / "nested" / "api.pid"
    write_pidfile(path, 4070)
    assert read_pidfile(path) == 4070
    assert path.read_text() == "4070\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["api.pid"]  # no temp file left behind


def test_write_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "api.pid"
    write_pidfile(path, 1)
    write_pidfile(str(path), 2)
    assert read_pidfile(path) == 2
    assert os.listdir(tmp_path) == ["api.pid"]


def test_write_is_atomic_for_concurrent_readers(tmp_path: Path) -> None:
    """A reader never sees a missing, empty or half-written file during rewrites."""
    path = tmp_path / "api.pid"
    write_pidfile(path, 100000)
    seen: set[int | None] = set()
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.add(read_pidfile(path))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            write_pidfile(path, 100000 + i % 2)
    finally:
        done.set()
        thread.join()
    assert seen <= {100000, 100001}


def test_symlink_at_path_is_replaced_not_followed(tmp_path: Path) -> None:
    """The link itself is replaced by the rename; its target (here one that does not look
    like a pidfile) is never opened for writing."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "api.pid"
    path.symlink_to(victim)
    write_pidfile(path, 1234)
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink()
    assert read_pidfile(path) == 1234


@pytest.mark.parametrize("content", [
    b"root:x:0:0:root:/root:/bin/bash\n", b"12abc\n", b"-5\n", b"1 2\n", b"\xff\n",
    b"1" * 65, b"123\n" + b" " * 70,
])
def test_existing_file_that_is_not_a_pidfile_is_never_overwritten(tmp_path: Path,
                                                                   content: bytes) -> None:
    path = tmp_path / "passwd"
    path.write_bytes(content)
    with pytest.raises(PidfileRefused, match="something other than a pid"):
        write_pidfile(path, 1234)
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["passwd"]


def test_absolute_path_to_a_system_like_file_is_refused(tmp_path: Path) -> None:
    """`pidfile: /etc/passwd` (here a copy with the same kind of content, absolute path)."""
    passwd = (tmp_path / "etc" / "passwd").absolute()
    passwd.parent.mkdir()
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/sbin/nologin\n")
    before = passwd.read_bytes()
    with pytest.raises(PidfileRefused):
        write_pidfile(str(passwd), 4242)
    assert passwd.read_bytes() == before


@pytest.mark.parametrize("content", [b"", b"\n", b"  42 \n", b"0\n", b"99999999999\n"])
def test_existing_pidfile_or_empty_file_is_overwritten(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "api.pid"
    path.write_bytes(content)
    write_pidfile(path, 1234)
    assert read_pidfile(path) == 1234


def test_directory_fifo_at_path_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "dir.pid"
    directory.mkdir()
    with pytest.raises(PidfileRefused, match="directory"):
        write_pidfile(directory, 1)
    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    with pytest.raises(PidfileRefused, match="FIFO"):  # and does not hang on the open
        write_pidfile(fifo, 1)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_unreadable_existing_file_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    path = tmp_path / "api.pid"
    path.write_text("secret\n")
    path.chmod(0)
    with pytest.raises(PidfileRefused, match="cannot read"):
        write_pidfile(path, 1)
    path.chmod(0o600)
    assert path.read_text() == "secret\n"


def test_parent_is_a_file_is_a_clean_oserror(tmp_path: Path) -> None:
    parent = tmp_path / "run"
    parent.write_text("not a dir\n")
    with pytest.raises(OSError) as raised:
        write_pidfile(parent / "api.pid", 1)
    assert not isinstance(raised.value, PidfileRefused)
    assert parent.read_text() == "not a dir\n"


def test_read_only_directory_is_a_clean_oserror(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    run = tmp_path / "run"
    run.mkdir()
    (run / "api.pid").write_text("7\n")
    run.chmod(0o500)
    try:
        with pytest.raises(PermissionError):
            write_pidfile(run / "api.pid", 1)
        with pytest.raises(PermissionError):
            write_pidfile(run / "sub" / "api.pid", 1)
    finally:
        run.chmod(0o700)
    assert os.listdir(run) == ["api.pid"]
    assert read_pidfile(run / "api.pid") == 7


def test_nul_in_path_is_a_clean_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_pidfile(f"{tmp_path}/a\0b.pid", 1)


def test_symlink_is_never_read(tmp_path: Path) -> None:
    target = tmp_path / "real.pid"
    target.write_text("1234\n")
    link = tmp_path / "link.pid"
    link.symlink_to(target)
    assert read_pidfile(target) == 1234
    assert read_pidfile(link) is None


@pytest.mark.parametrize("content", [
    "", "\n", "abc", "12abc", "-5", "0", "1.5", "0x10", "1 2", "99999999999999", "١٢٣",
])
def test_garbage_is_none(tmp_path: Path, content: str) -> None:
    path = tmp_path / "api.pid"
    path.write_text(content)
    assert read_pidfile(path) is None


def test_whitespace_around_pid_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "api.pid"
    path.write_text("  42 \n")
    assert read_pidfile(path) == 42


def test_missing_dir_and_fifo_are_none(tmp_path: Path) -> None:
    assert read_pidfile(tmp_path / "missing.pid") is None
    assert read_pidfile(tmp_path) is None  # a directory
    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    assert read_pidfile(fifo) is None  # and does not block waiting for a writer


def test_remove_only_if_it_names_the_pid(tmp_path: Path) -> None:
    path = tmp_path / "api.pid"
    write_pidfile(path, 10)
    assert remove_pidfile(path, 11) is False
    assert path.exists()
    assert remove_pidfile(path, 10) is True
    assert not path.exists()
    assert remove_pidfile(path, 10) is False  # already gone


def test_remove_never_touches_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "real.pid"
    target.write_text("10\n")
    link = tmp_path / "link.pid"
    link.symlink_to(target)
    assert remove_pidfile(link, 10) is False
    assert link.is_symlink() and target.read_text() == "10\n"
