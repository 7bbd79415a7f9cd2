"""Job log paths, rotation and tail on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler import logs


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = logs.log_path(tmp_path / "logs", "web", "api")
    path.parent.mkdir(parents=True)
    return path


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_log_and_previous_paths(tmp_path: Path) -> None:
    path = logs.log_path(tmp_path, "web", "api")
    assert path == tmp_path / "web" / "api.log"
    assert logs.previous_path(path) == tmp_path / "web" / "api.log.1"
    assert logs.previous_path(path, 3) == tmp_path / "web" / "api.log.3"
    with pytest.raises(ValueError):
        logs.previous_path(path, 0)


@pytest.mark.parametrize(("service", "action"), [("..", "api"), ("web", "a/b"), ("", "x")])
def test_log_path_refuses_escaping_names(tmp_path: Path, service: str, action: str) -> None:
    with pytest.raises(ValueError):
        logs.log_path(tmp_path, service, action)


def test_rotation_keep_2_over_4_runs(log: Path) -> None:
    for run in range(1, 5):
        log.write_text(f"run {run}\n")
        logs.rotate(log, keep=2)
    log.write_text("run 5\n")
    assert names(log.parent) == ["api.log", "api.log.1", "api.log.2"]
    assert log.read_text() == "run 5\n"
    assert logs.previous_path(log, 1).read_text() == "run 4\n"
    assert logs.previous_path(log, 2).read_text() == "run 3\n"


def test_rotate_missing_log_is_fine(log: Path) -> None:
    logs.rotate(log, keep=3)
    assert names(log.parent) == []
    logs.rotate(log.parent / "nowhere" / "x.log", keep=3)


def test_rotate_keep_0_removes_current_and_history(log: Path) -> None:
    logs.previous_path(log, 1).write_text("old\n")
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
    assert logs.previous_path(log).read_text() == "run 6\n"


def test_rotate_with_gaps_keeps_numbers_as_ages(log: Path) -> None:
    """.log.N always means "N runs ago": a gap shifts along instead of being filled."""
    logs.previous_path(log, 2).write_text("older\n")
    log.write_text("current\n")
    logs.rotate(log, keep=3)
    assert names(log.parent) == ["api.log.1", "api.log.3"]
    assert logs.previous_path(log, 1).read_text() == "current\n"
    assert logs.previous_path(log, 3).read_text() == "older\n"


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
    logs.previous_path(log, 1).symlink_to(precious)
    log.write_text("current\n")
    logs.rotate(log, keep=1)
    assert precious.read_text() == "do not touch\n"
    assert logs.previous_path(log).read_text() == "current\n"


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
