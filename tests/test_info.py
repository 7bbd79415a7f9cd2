"""What passes record of the source revision, `reconcile info` and the `status` header, with
real git repositories, real passes, a real daemon and real SQLite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from sqlite_utils import Database

from reconciler import __version__, cli
from reconciler.controller import Reconciler
from reconciler.info import read_info
from reconciler.settings import Settings, resolve
from reconciler.state.lock import DaemonLock, daemon_pid
from reconciler.state.records import ControllerFacts
from reconciler.state.store import MIGRATIONS, Store
from tests.helpers import wait_for
from tests.test_gitrev import commit, git

needs_git = pytest.mark.skipif(shutil.which("git") is None,
                               reason="the git command is not installed (.ci/run installs it)")

ONE_SHOT = """\
name: {name}
actions:
  - {{name: once, process: false, cmd: ["true"]}}
"""


def write(specs_dir: Path, name: str, text: str) -> None:
    path = specs_dir / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_text(textwrap.dedent(text))
    os.chmod(tmp, 0o644)
    tmp.rename(path)


def git_specs(settings: Settings) -> str:
    """Make the test's specs dir a repository with `web.yaml`; returns the first commit."""
    git(settings.specs_dir, "init", "-q", "-b", "main")
    write(settings.specs_dir, "web.yaml", ONE_SHOT.format(name="web"))
    return commit(settings.specs_dir, "web")


def run_cli(settings: Settings, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    code = cli.main([*args, "--specs", str(settings.specs_dir),
                     "--state-dir", str(settings.state_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def info_json(settings: Settings, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    value = json.loads(run_cli(settings, capsys, "info", "-o", "json"))
    assert isinstance(value, dict)
    return value


# --- a pass records the revision ----------------------------------------------------------


@needs_git
def test_a_pass_records_the_revision_on_itself_its_events_and_its_new_jobs(
        reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    sha = git_specs(reconciler.settings)
    result = reconciler.converge(wait=10)
    assert result.converged
    expected = f"main@sha1:{sha}"
    assert result.source.revision == expected and result.applied_revision == expected
    facts = reconciler.store.controller_facts()
    assert (facts.revision, facts.applied_revision, facts.dirty) == (expected, expected, False)
    assert facts.last_pass_ok is True and facts.last_pass_at is not None
    assert facts.last_pass_duration_ms is not None and facts.last_pass_duration_ms >= 0
    events = [e for _, e in reconciler.store.events(limit=None)]
    assert events and all(e.revision == expected for e in events)
    (job,) = reconciler.store.jobs()
    assert job.revision == expected
    shown = json.loads(run_cli(reconciler.settings, capsys, "events", "-o", "json"))
    assert {e["revision"] for e in shown} == {expected}
    (shown_job,) = json.loads(run_cli(reconciler.settings, capsys, "status", "-o", "json"))
    assert shown_job["revision"] == expected


@needs_git
def test_a_broken_file_keeps_the_applied_revision_until_every_file_loads(
        reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    settings = reconciler.settings
    good = f"main@sha1:{git_specs(settings)}"
    reconciler.converge(wait=10)
    write(settings.specs_dir, "web.yaml", "name: web\nactions: nope\n")
    broken = f"main@sha1:{commit(settings.specs_dir, 'break web')}"
    result = reconciler.reconcile()
    assert (result.source.revision, result.applied_revision) == (broken, good)
    info = info_json(settings, capsys)
    assert info["source"] == {"revision": broken, "applied_revision": good, "dirty": False,
                              "error": None}
    assert info["last_pass"]["ok"] is False  # type: ignore[index]  # JSON object
    (web,) = info["files"]  # type: ignore[misc]  # a JSON list
    assert web["file"] == "web.yaml" and web["state"] == "last-good" and "actions" in web["error"]
    header = run_cli(settings, capsys, "status").splitlines()[0]
    assert f"revision {broken[:len('main@sha1:') + 12]}" in header
    assert f"(applied {good[:len('main@sha1:') + 12]})" in header
    assert "1 file(s) not ok: web.yaml (last-good)" in header

    write(settings.specs_dir, "web.yaml", ONE_SHOT.format(name="web"))
    fixed = f"main@sha1:{commit(settings.specs_dir, 'fix web')}"
    result = reconciler.reconcile()
    assert (result.source.revision, result.applied_revision) == (fixed, fixed)


@needs_git
def test_a_job_keeps_the_revision_that_started_it_while_events_follow_the_new_one(
        reconciler: Reconciler) -> None:
    settings = reconciler.settings
    first = f"main@sha1:{git_specs(settings)}"
    reconciler.converge(wait=10)
    (settings.specs_dir / "README").write_text("docs only\n")
    docs = f"main@sha1:{commit(settings.specs_dir, 'docs')}"  # touches no spec file
    write(settings.specs_dir, "db.yaml", ONE_SHOT.format(name="db"))
    result = reconciler.converge(wait=10)
    assert result.source == replace(result.source, revision=docs, dirty=True)  # db.yaml new
    by_service = {j.service: j for j in reconciler.store.jobs()}
    assert by_service["web"].revision == first  # unchanged spec: same generation, same job
    assert by_service["db"].revision == docs
    last = reconciler.store.events(limit=1)[0][1]
    assert last.revision == docs


@needs_git
def test_a_broken_head_never_fails_a_pass_and_info_says_why(
        reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    settings = reconciler.settings
    git_specs(settings)
    applied = reconciler.converge(wait=10).applied_revision
    assert applied is not None and applied.startswith("main@sha1:")
    (settings.specs_dir / ".git" / "HEAD").write_text("garbage\n")
    assert reconciler.converge(wait=10).converged
    source = info_json(settings, capsys)["source"]
    assert source["revision"] == "unknown"  # type: ignore[index]  # JSON object
    assert source["applied_revision"] == applied  # type: ignore[index]  # not lost
    assert "not a git repository" in source["error"]  # type: ignore[index]
    assert "unknown" in run_cli(settings, capsys, "info")


def test_without_git_a_label_names_the_revision(settings: Settings,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    write(settings.specs_dir, "web.yaml", ONE_SHOT.format(name="web"))
    run_cli(settings, capsys, "--once", "--revision", "build-7")
    assert info_json(settings, capsys)["source"] == {
        "revision": "build-7", "applied_revision": "build-7", "dirty": False, "error": None}
    assert resolve("s", "st", env={"RECONCILER_REVISION": "ci-99"}).revision == "ci-99"
    assert resolve("s", "st", env={"RECONCILER_REVISION": "ci-99"},
                   revision="flag").revision == "flag"
    assert resolve("s", "st", env={}).revision is None


def test_without_git_or_label_the_revision_is_unknown_and_info_says_why(
        reconciler: Reconciler, capsys: pytest.CaptureFixture[str]) -> None:
    write(reconciler.settings.specs_dir, "web.yaml", ONE_SHOT.format(name="web"))
    result = reconciler.converge(wait=10)
    assert result.source.revision == "unknown" and result.applied_revision is None
    assert all(e.revision == "unknown" for _, e in reconciler.store.events(limit=None))
    source = info_json(reconciler.settings, capsys)["source"]
    assert isinstance(source, dict) and "not in a git work tree" in str(source["error"])


# --- reconcile info -----------------------------------------------------------------------

INFO_KEYS = ["version", "specs_dir", "state_dir", "daemon", "last_pass", "source", "files",
             "labels", "unplaced"]  # DESIGN §8.2's keys in order; `unplaced` is an addition


def test_info_json_has_the_documented_shape(reconciler: Reconciler,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    settings = replace(reconciler.settings, revision="v1")
    with Reconciler(settings) as labelled:
        write(settings.specs_dir, "web.yaml", ONE_SHOT.format(name="web"))
        write(settings.specs_dir, "empty.yaml", "# nothing here\n")
        write(settings.specs_dir, "bad.yaml", "name: [\n")
        labelled.reconcile()
    info = info_json(settings, capsys)
    assert list(info) == INFO_KEYS
    assert info["version"] == __version__
    assert info["specs_dir"] == str(settings.specs_dir)
    assert info["state_dir"] == str(settings.state_dir)
    assert info["daemon"] is None
    last_pass = info["last_pass"]
    assert isinstance(last_pass, dict) and list(last_pass) == ["at", "ok", "duration_ms"]
    assert isinstance(last_pass["at"], float) and last_pass["ok"] is False
    assert isinstance(last_pass["duration_ms"], int)
    source = info["source"]
    assert isinstance(source, dict)
    assert list(source)[:3] == ["revision", "applied_revision", "dirty"]
    assert source["revision"] == "v1" and source["applied_revision"] is None
    files = info["files"]
    assert isinstance(files, list)
    assert all(list(f) == ["file", "state", "error"] for f in files)
    states = {f["file"]: f["state"] for f in files}
    assert states == {"bad.yaml": "refused", "empty.yaml": "empty", "web.yaml": "ok"}
    labels = info["labels"]
    assert isinstance(labels, dict) and {"hostname", "os", "arch"} <= set(labels)
    assert info["unplaced"] == {}


def test_info_says_which_services_are_not_placed_here_and_why(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write(settings.specs_dir, "db.yaml",
          "name: db\nplacement: {labels: {role: db}}\nactions: [{name: m, cmd: [\"true\"]}]\n")
    write(settings.specs_dir, "web.yaml", ONE_SHOT.format(name="web"))
    assert info_json(settings, capsys)["unplaced"] == {}  # no pass yet: nothing known
    run_cli(settings, capsys, "--once")
    info = info_json(settings, capsys)  # as the last pass placed, without loading the specs
    unplaced = info["unplaced"]
    assert isinstance(unplaced, dict) and list(unplaced) == ["db"] and "role" in unplaced["db"]


def test_info_on_a_fresh_state_dir_creates_nothing(settings: Settings,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    info = info_json(settings, capsys)
    assert not settings.state_dir.exists()
    assert info["daemon"] is None and info["files"] == []
    assert info["last_pass"] == {"at": None, "ok": None, "duration_ms": None}
    text = run_cli(settings, capsys, "info")
    assert "daemon:           down" in text and "last pass:        never" in text
    header = run_cli(settings, capsys, "status").splitlines()[0]
    assert header.startswith("daemon down · last pass never · revision -")


def test_info_works_on_a_read_only_state_dir(reconciler: Reconciler,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    settings = reconciler.settings
    write(settings.specs_dir, "web.yaml", ONE_SHOT.format(name="web"))
    reconciler.converge(wait=10)
    reconciler.close()
    before = sorted(os.listdir(settings.state_dir))
    os.chmod(settings.state_dir, 0o500)
    try:
        assert info_json(settings, capsys)["last_pass"]["ok"] is True  # type: ignore[index]
    finally:
        os.chmod(settings.state_dir, 0o700)
    assert sorted(os.listdir(settings.state_dir)) == before


def test_status_json_stays_a_list_of_jobs(reconciler: Reconciler,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    write(reconciler.settings.specs_dir, "web.yaml", ONE_SHOT.format(name="web"))
    reconciler.converge(wait=10)
    jobs = json.loads(run_cli(reconciler.settings, capsys, "status", "-o", "json"))
    assert isinstance(jobs, list) and jobs[0]["service"] == "web"


# --- the daemon -----------------------------------------------------------------------------


def test_a_daemon_is_up_only_while_it_holds_its_lock(settings: Settings) -> None:
    settings.state_dir.mkdir(mode=0o700)
    assert daemon_pid(settings.daemon_lock_path) is None  # no lock file at all
    with DaemonLock(settings.daemon_lock_path):
        assert daemon_pid(settings.daemon_lock_path) == os.getpid()
    settings.daemon_lock_path.write_text(f"{os.getpid()}\n")  # a crashed daemon's leftover
    assert daemon_pid(settings.daemon_lock_path) is None


def test_info_names_the_running_daemon(settings: Settings, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    write(settings.specs_dir, "web.yaml", ONE_SHOT.format(name="web"))
    with (tmp_path / "daemon.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "--specs", str(settings.specs_dir),
             "--state-dir", str(settings.state_dir), "--revision", "d1"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
    try:
        wait_for(lambda: read_info(settings).facts.last_pass_at is not None, timeout=30)
        info = info_json(settings, capsys)
        daemon = info["daemon"]
        assert isinstance(daemon, dict) and list(daemon) == ["pid", "started_at"]
        assert daemon["pid"] == proc.pid and isinstance(daemon["started_at"], float)
        assert f"daemon up (pid {proc.pid}" in run_cli(settings, capsys, "status")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert info_json(settings, capsys)["daemon"] is None


# --- old databases ----------------------------------------------------------------------------


def test_a_database_from_before_revisions_opens_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = Database(path)
    MIGRATIONS.apply(old, stop_before="m004_revision")
    old.table("jobs").insert({"id": "old-1", "service": "web", "action": "api",
                              "generation": "g0", "phase": "running", "process": 1,
                              "restart_count": 3, "consecutive_failures": 0, "reason": "",
                              "blocked_by": "[]", "spec": "{}"})
    old.table("events").insert({"at": 1.0, "job_id": "old-1", "service": "web",
                                "action": "api", "kind": "spawned", "reason": "r",
                                "detail": "{}"})
    old.close()
    with Store.open_readonly(path) as reader:  # a reader of the old schema: no facts yet
        assert reader.controller_facts() == ControllerFacts()
        assert reader.events()[0][1].revision is None
    with Store.open(path) as store:
        job = store.job("old-1")
        assert job is not None and job.restart_count == 3 and job.revision is None
        (_, event), = store.events()
        assert (event.kind, event.revision) == ("spawned", None)
        assert store.controller_facts() == ControllerFacts()
        store.save_pass_facts(at=2.0, ok=True, duration_ms=5, revision="r1",
                              applied_revision="r1", dirty=True, revision_error=None)
        store.save_daemon(123, 1.5)
        assert store.controller_facts() == ControllerFacts(
            last_pass_at=2.0, last_pass_ok=True, last_pass_duration_ms=5, revision="r1",
            applied_revision="r1", dirty=True, daemon_pid=123, daemon_started_at=1.5)
        store.upsert_jobs([replace(job, revision="r1")])
        assert store.job("old-1") == replace(job, revision="r1")


def test_a_hostile_or_huge_revision_label_is_refused(settings: Settings,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """It would reach terminals raw and be stored on every event and job."""
    for label in ("r\x1b[2Jev", "x" * 201):
        capsys.readouterr()
        code = cli.main(["--revision", label, "--once", "--specs", str(settings.specs_dir),
                         "--state-dir", str(settings.state_dir)])
        assert code == 2 and "revision label" in capsys.readouterr().err
