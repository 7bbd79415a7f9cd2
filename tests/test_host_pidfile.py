"""Pidfiles: atomic writes, never following symlinks, careful removal."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from reconciler.host.pidfile import read_pidfile, remove_pidfile, write_pidfile


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
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "api.pid"
    path.symlink_to(victim)
    write_pidfile(path, 1234)
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink()
    assert read_pidfile(path) == 1234


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
