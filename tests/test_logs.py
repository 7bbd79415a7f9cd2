"""Job log paths, rotation and tail on real files."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler import logpaths, logs
from tests.conftest import Foreign
from tests.helpers import wait_for


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = logpaths.log_path(tmp_path / "logs", "web", "api")
    path.parent.mkdir(parents=True)
    return path


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_log_and_previous_paths(tmp_path: Path) -> None:
    path = logpaths.log_path(tmp_path, "web", "api")
    assert path == tmp_path / "web" / "api.log"
    assert logpaths.previous_path(path) == tmp_path / "web" / "api.log.1"
    assert logpaths.previous_path(path, 3) == tmp_path / "web" / "api.log.3"
    with pytest.raises(ValueError):
        logpaths.previous_path(path, 0)


@pytest.mark.parametrize(("service", "action"), [("..", "api"), ("web", "a/b"), ("", "x")])
def test_log_path_refuses_escaping_names(tmp_path: Path, service: str, action: str) -> None:
    with pytest.raises(ValueError):
        logpaths.log_path(tmp_path, service, action)


def test_rotation_keep_2_over_4_runs(log: Path) -> None:
    for run in range(1, 5):
        log.write_text(f"run {run}\n")
        logs.rotate(log, keep=2)
    log.write_text("run 5\n")
    assert names(log.parent) == ["api.log", "api.log.1", "api.log.2"]
    assert log.read_text() == "run 5\n"
    assert logpaths.previous_path(log, 1).read_text() == "run 4\n"
    assert logpaths.previous_path(log, 2).read_text() == "run 3\n"


def test_rotate_missing_log_is_fine(log: Path) -> None:
    logs.rotate(log, keep=3)
    assert names(log.parent) == []
    logs.rotate(log.parent / "nowhere" / "x.log", keep=3)


def test_rotate_keep_0_removes_current_and_history(log: Path) -> None:
    logpaths.previous_path(log, 1).write_text("old\n")
    log.write_text("current\n")
    logs.rotate(log, keep=0)
    assert names(log.parent) == []


def test_lowering_keep_trims_old_runs(log: Path) -> None:
    for run in range(1, 6):
        log.write_text(f"run {run}\n")
        logs.rotate(log, keep=5)
    assert len(names(log.parent)) == 5
    log.write_text("run 6\n")
    logs.rotate(log, keep=1)
    assert names(log.parent) == ["api.log.1"]
    assert logpaths.previous_path(log).read_text() == "run 6\n"


def test_rotate_with_gaps_keeps_numbers_as_ages(log: Path) -> None:
    """.log.N always means "N runs ago": a gap shifts along instead of being filled."""
    logpaths.previous_path(log, 2).write_text("older\n")
    log.write_text("current\n")
    logs.rotate(log, keep=3)
    assert names(log.parent) == ["api.log.1", "api.log.3"]
    assert logpaths.previous_path(log, 1).read_text() == "current\n"
    assert logpaths.previous_path(log, 3).read_text() == "older\n"


def test_rotate_never_follows_a_symlink(log: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("do not touch\n")
    log.symlink_to(precious)
    for keep in (2, 0):
        logs.rotate(log, keep=keep)
        assert log.is_symlink()
        assert precious.read_text() == "do not touch\n"
    assert names(log.parent) == ["api.log"]


def test_rotate_moves_symlinked_history_as_links_not_targets(log: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("do not touch\n")
    logpaths.previous_path(log, 1).symlink_to(precious)
    log.write_text("current\n")
    logs.rotate(log, keep=1)
    assert precious.read_text() == "do not touch\n"
    assert logpaths.previous_path(log).read_text() == "current\n"


def test_rotate_rejects_negative_keep(log: Path) -> None:
    with pytest.raises(ValueError):
        logs.rotate(log, keep=-1)


def test_tail_small_file(log: Path) -> None:
    log.write_text("a\nb\nc\n")
    assert logs.tail(log, 2) == ["b", "c"]
    assert logs.tail(log, 10) == ["a", "b", "c"]
    assert logs.tail(log, 0) == []


def test_tail_last_line_without_newline(log: Path) -> None:
    log.write_text("a\nb\nc")
    assert logs.tail(log, 2) == ["b", "c"]


def test_tail_missing_and_empty(log: Path) -> None:
    assert logs.tail(log, 5) == []
    log.write_text("")
    assert logs.tail(log, 5) == []


def test_tail_big_file_across_blocks(log: Path) -> None:
    lines = [f"line {i} " + "é" * (i % 97) for i in range(50_000)]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert logs.tail(log, 3) == lines[-3:]
    assert logs.tail(log, 5000) == lines[-5000:]
    assert logs.tail(log, 100_000) == lines


def test_tail_keeps_blank_lines(log: Path) -> None:
    log.write_text("a\n\n\nb\n")
    assert logs.tail(log, 3) == ["", "", "b"]


def test_tail_refuses_symlink(log: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    log.symlink_to(secret)
    with pytest.raises(OSError):
        logs.tail(log, 5)


# --- cap_size: bounding the log of a live process -------------------------------------------

def test_cap_size_leaves_a_small_log_alone(log: Path) -> None:
    log.write_text("short\n")
    assert logs.cap_size(log, max_size=100, keep=3) is False
    assert names(log.parent) == ["api.log"]
    assert log.read_text() == "short\n"


def test_cap_size_missing_log(log: Path) -> None:
    assert logs.cap_size(log, max_size=0, keep=3) is False
    assert names(log.parent) == []


def test_cap_size_rotates_when_over_and_shifts_history(log: Path) -> None:
    logpaths.previous_path(log, 1).write_text("older run\n")
    logpaths.previous_path(log, 2).write_text("oldest run\n")
    log.write_text("x" * 50 + "y" * 50 + "\n")
    assert logs.cap_size(log, max_size=100, keep=2) is True
    assert names(log.parent) == ["api.log", "api.log.1", "api.log.2"]
    assert log.read_text() == ""
    assert logpaths.previous_path(log, 1).read_text() == "x" * 49 + "y" * 50 + "\n"  # the last 100
    assert logpaths.previous_path(log, 2).read_text() == "older run\n"
    assert logpaths.previous_path(log).stat().st_mode & 0o777 == 0o600  # logs may hold secrets


def test_cap_size_keep_0_only_truncates(log: Path) -> None:
    logpaths.previous_path(log, 1).write_text("old\n")
    log.write_text("x" * 200)
    assert logs.cap_size(log, max_size=100, keep=0) is True
    assert names(log.parent) == ["api.log"]
    assert log.read_text() == ""


def test_cap_size_append_writer_continues_at_the_new_end(log: Path) -> None:
    """The child's O_APPEND fd survives copytruncate: its next line starts the live file,
    with no hole of NUL bytes where the old content was."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"before\n" * 14)
        assert logs.cap_size(log, max_size=91, keep=1) is True  # 13 of the 14 lines
        os.write(fd, b"after\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"after\n"
    assert logpaths.previous_path(log).read_bytes() == b"before\n" * 13


def test_cap_size_with_a_real_child_writing(log: Path, foreign: Foreign) -> None:
    # One write(2) per line: print() may split a line into two writes (it does when
    # PYTHONUNBUFFERED is set), and a cap between them would leave a bare "\n" at offset 0.
    code = ("import os, time\n"
            "for i in range(100000):\n"
            "    os.write(1, f'line {i}\\n'.encode()); time.sleep(0.001)\n")
    log.touch(mode=0o600)
    foreign.start(["/bin/sh", "-c", 'exec "$0" -c "$1" >> "$2"', sys.executable, code, str(log)])
    wait_for(lambda: log.stat().st_size > 2000, message="the child to write")
    assert logs.cap_size(log, max_size=1000, keep=1) is True
    wait_for(lambda: len(logs.tail(log, 5)) == 5, message="the child to keep writing")
    content = log.read_bytes()
    assert b"\0" not in content  # no NUL hole: O_APPEND wrote at offset 0
    assert content.startswith(b"line ")
    previous = logpaths.previous_path(log).read_bytes()
    assert 0 < len(previous) <= 1000  # the last lines, whole lines only
    assert previous.startswith(b"line ") and previous.endswith(b"\n")


def test_cap_size_never_follows_a_symlink(log: Path, tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("do not touch\n" * 100)
    log.symlink_to(precious)
    assert logs.cap_size(log, max_size=10, keep=2) is False
    assert log.is_symlink()
    assert precious.read_text() == "do not touch\n" * 100
    assert names(log.parent) == ["api.log"]


# --- follow: new lines as they come, across rotation and truncation --------------------------

class Follower:
    """Runs logs.follow in a thread and collects what it yields."""

    def __init__(self, path: Path) -> None:
        self.lines: list[str] = []
        self._stop = threading.Event()
        lines = logs.follow(path, poll=0.01, stop=self._stop.is_set)  # "now" starts here
        self._thread = threading.Thread(target=self._run, args=(lines,), daemon=True)
        self._thread.start()

    def _run(self, lines: Iterator[str]) -> None:
        for line in lines:
            self.lines.append(line)

    def sees(self, *expected: str) -> None:
        wait_for(lambda: self.lines[-len(expected):] == list(expected),
                 message=f"follow to yield {expected}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()


@pytest.fixture
def following() -> Iterator[Callable[[Path], Follower]]:
    made: list[Follower] = []

    def start(path: Path) -> Follower:
        made.append(Follower(path))
        return made[-1]

    yield start
    for follower in made:
        follower.stop()


def append(path: Path, text: str) -> None:
    with path.open("a") as handle:
        handle.write(text)


def test_follow_yields_only_new_lines(log: Path,
                                      following: Callable[[Path], Follower]) -> None:
    log.write_text("old 1\nold 2\n")
    follower = following(log)
    append(log, "new 1\n")
    follower.sees("new 1")
    append(log, "half")
    append(log, " a line\nnew 3\n")
    follower.sees("new 1", "half a line", "new 3")
    assert "old 1" not in follower.lines


def test_follow_waits_for_a_log_that_does_not_exist_yet(
        log: Path, following: Callable[[Path], Follower]) -> None:
    follower = following(log)
    append(log, "first\n")
    follower.sees("first")


def test_follow_survives_rotation(log: Path, following: Callable[[Path], Follower]) -> None:
    log.write_text("")
    follower = following(log)
    append(log, "run 1\n")
    follower.sees("run 1")
    with log.open("a") as old_writer:  # a writer still holding the old file
        logs.rotate(log, keep=2)
        old_writer.write("run 1 last words\n")
        old_writer.flush()
        append(log, "run 2\n")
        follower.sees("run 1", "run 1 last words", "run 2")
    append(log, "run 2 more\n")
    follower.sees("run 2", "run 2 more")


def test_follow_keeps_last_words_written_between_its_read_and_the_rotation(log: Path) -> None:
    """The old writer's last line can land after the follower found the old file drained and
    before it saw the new one: it must still be read from the old file, not dropped. The
    interleaving is forced (the writer acts inside the follower's replacement check), on
    real files; it happened on its own under load (test_follow_survives_rotation, stop 23)."""
    log.write_text("before the follower\n")  # not empty, so rotate renames it

    class WriterBetweenReadAndCheck(logs._Follower):
        def _replaced(self) -> bool:
            if not logpaths.previous_path(log, 1).exists():
                with log.open("a") as old_writer:
                    logs.rotate(log, keep=2)
                    old_writer.write("last words\n")
                append(log, "new run\n")
            return super()._replaced()

    reader = WriterBetweenReadAndCheck(log)
    try:
        seen: list[str] = []
        for _ in range(4):
            seen += reader.step()[0]
        assert seen == ["last words", "new run"]
        assert logpaths.previous_path(log, 1).read_text() == "before the follower\nlast words\n"
    finally:
        reader.close()


def test_follow_survives_truncation(log: Path, following: Callable[[Path], Follower]) -> None:
    log.write_text("")
    follower = following(log)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"a long line before the cap\n")
        follower.sees("a long line before the cap")
        assert logs.cap_size(log, max_size=1, keep=1) is True
        os.write(fd, b"short\n")  # shorter than our offset, so the shrink is visible
        follower.sees("a long line before the cap", "short")
    finally:
        os.close(fd)


def test_follow_stops_when_asked(log: Path) -> None:
    log.write_text("")
    stop = threading.Event()
    lines = logs.follow(log, poll=0.01, stop=stop.is_set)
    stop.set()
    assert list(lines) == []


# --- bounded work and bounded history ---------------------------------------------------------

def test_rotate_and_cap_with_a_huge_keep_do_not_loop_per_number(log: Path) -> None:
    """keep=10**12 used to loop 10**12 times (days at 100 % CPU): work now follows the
    files present. Run on a thread so a regression fails the test instead of hanging it."""
    logpaths.previous_path(log, 1).write_text("older\n")
    log.write_text("x" * 300)
    done = threading.Event()

    def work() -> None:
        logs.rotate(log, 10**12)
        log.write_text("y" * 300)
        logs.cap_size(log, max_size=100, keep=10**12)
        done.set()

    threading.Thread(target=work, daemon=True).start()
    assert done.wait(10), "rotate/cap_size still looping"
    assert names(log.parent) == ["api.log", "api.log.1", "api.log.2", "api.log.3"]
    assert logpaths.previous_path(log, 3).read_text() == "older\n"


def test_rotate_of_a_huge_log_keeps_only_its_last_max_size_bytes(log: Path) -> None:
    """At respawn, a live log the capper could not keep small is not renamed whole into the
    history: `.log.1` gets its last `max_size` bytes (whole lines) and nothing more."""
    log.write_bytes(b"old line\n" * 1000)  # 9000 bytes
    logs.rotate(log, keep=2, max_size=95)
    previous = logpaths.previous_path(log, 1).read_bytes()
    assert previous == b"old line\n" * 10  # 90 of the last 95 bytes: whole lines only
    assert log.read_bytes() == b""


def test_rotate_of_a_small_log_is_a_rename(log: Path) -> None:
    log.write_bytes(b"small\n")
    inode = log.stat().st_ino
    logs.rotate(log, keep=2, max_size=1000)
    assert logpaths.previous_path(log, 1).stat().st_ino == inode
    assert not log.exists()


def test_cap_size_truncates_before_shifting_the_history(log: Path) -> None:
    """Only the copy of the tail stands between the decision and the truncate: shifting the
    history (renames, and the unlink of the oldest run, which frees `max_size` of blocks)
    comes after it. Seen here through a history entry that cannot be removed: the live log
    is still bounded, the error still reported, and no temp file is left behind."""
    logpaths.previous_path(log, 1).write_text("older run\n")
    blocker = logpaths.previous_path(log, 2)
    blocker.mkdir()
    (blocker / "inside").write_text("")
    log.write_text("x" * 200)
    with pytest.raises(OSError):
        logs.cap_size(log, max_size=100, keep=2)  # unlink of the oldest run: EISDIR
    assert log.read_text() == ""
    assert names(log.parent) == ["api.log", "api.log.1", "api.log.2"]
    assert logpaths.previous_path(log, 1).read_text() == "older run\n"


def test_an_empty_live_log_does_not_push_out_history(tmp_path: Path) -> None:
    """Starts that fail before their command writes a line (retries of a spawn error) must
    not rotate the previous run's log out of the history."""
    path = logpaths.log_path(tmp_path, "web", "api")
    path.parent.mkdir(parents=True)
    path.write_text("the previous generation's output\n")
    logs.rotate(path, keep=2)
    for _ in range(3):
        path.write_text("")  # opened by a start that then failed
        logs.rotate(path, keep=2)
    assert logpaths.previous_path(path).read_text() == "the previous generation's output\n"
