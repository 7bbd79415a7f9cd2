"""Enrollment files: atomic durable writes, forgiving reads."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from reconciler.identity import Identity
from reconciler.state.enrollment import (
    Enrollments,
    enroll,
    enrollment_path,
    read_enrollments,
    sweep_stale_temps,
    unenroll,
)
from reconciler.state.records import Enrollment


def make(job_id: str = "job-1", pid: int = 4242) -> Enrollment:
    return Enrollment(job_id=job_id, service="web", action="api", generation="g1",
                      identity=Identity("boot-id", pid, 123456),
                      cmdline=("python3", "-m", "http.server", "8080"), enrolled_at=1234.5)


@pytest.fixture
def run_dir(state_dir: Path) -> Path:
    return state_dir / "run"


def test_enroll_writes_and_reads_back(run_dir: Path) -> None:
    path = enroll(run_dir, make())
    assert path == run_dir / "job-1.enroll.json"
    assert read_enrollments(run_dir) == {"job-1": make()}


def test_enroll_creates_private_dir_and_file(run_dir: Path) -> None:
    path = enroll(run_dir, make())
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_enroll_replaces_atomically_and_leaves_no_temp(run_dir: Path) -> None:
    enroll(run_dir, make(pid=1))
    first_inode = (run_dir / "job-1.enroll.json").stat().st_ino
    enroll(run_dir, make(pid=2))
    assert read_enrollments(run_dir)["job-1"].identity.pid == 2
    assert (run_dir / "job-1.enroll.json").stat().st_ino != first_inode  # renamed over
    assert os.listdir(run_dir) == ["job-1.enroll.json"]


def test_stale_temp_from_a_crashed_write_is_ignored_then_swept(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    stale = run_dir / ".job-1.enroll.json.deadbeef.tmp"
    stale.write_text('{"job_id": "job-1", "iden')
    assert read_enrollments(run_dir) == {}
    enroll(run_dir, make())
    sweep_stale_temps(run_dir)
    assert not stale.exists()
    assert [p.name for p in run_dir.iterdir()] == ["job-1.enroll.json"]


def test_missing_dir_reads_as_empty(tmp_path: Path) -> None:
    assert read_enrollments(tmp_path / "nope") == {}


@pytest.mark.parametrize("content", [
    "",
    '{"job_id": "bad", "service"',
    "[1, 2]",
    '{"job_id": "bad"}',
    '{"format": 1, "job_id": "bad", "service": "s", "action": "a", "generation": "g",'
    ' "identity": {"boot_id": "b", "pid": "12", "starttime_ticks": 1},'
    ' "cmdline": [], "enrolled_at": 1}',
])
def test_corrupt_file_is_skipped_and_logged(run_dir: Path, content: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    enroll(run_dir, make("good"))
    (run_dir / "bad.enroll.json").write_text(content)
    with caplog.at_level(logging.WARNING):
        assert read_enrollments(run_dir) == {"good": make("good")}
    assert "bad.enroll.json" in caplog.text


def test_binary_garbage_is_skipped(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "x.enroll.json").write_bytes(b"\xff\xfe\x00garbage")
    assert read_enrollments(run_dir) == {}


def test_file_naming_another_job_is_skipped(run_dir: Path) -> None:
    path = enroll(run_dir, make("job-1"))
    path.rename(run_dir / "job-2.enroll.json")
    assert read_enrollments(run_dir) == {}


def test_symlinked_enrollment_is_not_followed(run_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    enroll(elsewhere, make())
    run_dir.mkdir(parents=True)
    (run_dir / "job-1.enroll.json").symlink_to(elsewhere / "job-1.enroll.json")
    assert read_enrollments(run_dir) == {}


def test_unenroll_removes_and_tolerates_missing(run_dir: Path) -> None:
    enroll(run_dir, make("a"))
    enroll(run_dir, make("b"))
    unenroll(run_dir, "a")
    assert set(read_enrollments(run_dir)) == {"b"}
    unenroll(run_dir, "a")
    unenroll(run_dir / "never-created", "x")


@pytest.mark.parametrize("job_id", ["", ".", "..", "../escape", "a/b"])
def test_job_ids_that_escape_the_dir_are_refused(run_dir: Path, job_id: str) -> None:
    with pytest.raises(ValueError):
        enroll(run_dir, make(job_id))
    with pytest.raises(ValueError):
        enrollment_path(run_dir, job_id)


def test_file_format_is_plain_json(run_dir: Path) -> None:
    data = json.loads(enroll(run_dir, make()).read_text())
    assert data["identity"] == {"boot_id": "boot-id", "pid": 4242, "starttime_ticks": 123456}
    assert data["cmdline"] == ["python3", "-m", "http.server", "8080"]
    assert data["format"] == 1


# --- Enrollments: read once, then kept current by the lock holder ----------------------------


def _book_read_before_a_rewrite_of_a_and_a_removal_of_b(run_dir: Path) -> Enrollments:
    """Enrollments that read "a" and "b", then the files changed under it: "a" rewritten
    (pid 7), "b" removed."""
    enroll(run_dir, make("a"))
    enroll(run_dir, make("b"))
    book = Enrollments(run_dir)
    assert set(book.current()) == {"a", "b"}
    enroll(run_dir, make("a", pid=7))
    unenroll(run_dir, "b")
    return book


def test_enrollments_are_read_once_then_refreshed_per_job(run_dir: Path) -> None:
    book = _book_read_before_a_rewrite_of_a_and_a_removal_of_b(run_dir)
    enroll(run_dir, make("c"))
    assert book.current()["a"].identity.pid == 4242  # nothing re-read without being told
    book.refresh(["a", "b"])
    assert book.current() == {"a": make("a", pid=7)}  # c: written by someone else
    book.invalidate()
    assert set(book.current()) == {"a", "c"}


def test_refresh_before_the_first_read_reads_nothing(run_dir: Path) -> None:
    book = Enrollments(run_dir)
    enroll(run_dir, make("a"))
    book.refresh(["a"])
    assert book.current() == {"a": make("a")}


def test_refresh_takes_what_was_written_whole_without_reading_it_back(run_dir: Path) -> None:
    book = _book_read_before_a_rewrite_of_a_and_a_removal_of_b(run_dir)
    # what the writer says it wrote is taken as is (here it differs from the file: the proof
    # that nothing was read); the jobs it does not vouch for are read from disk as before
    book.refresh(["a", "b"], {"a": make("a", pid=8)})
    assert book.current() == {"a": make("a", pid=8)}
