"""The specs dir's revision from real git repositories made with the `git` command."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.host import procfs
from reconciler.host.gitrev import UNKNOWN, Revision, RevisionReader, revision_of
from tests.helpers import cmdline, wait_for

pytestmark = pytest.mark.skipif(shutil.which("git") is None,
                                reason="the git command is not installed (.ci/run installs it)")


def git(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_GLOBAL=os.devnull,
               GIT_CONFIG_NOSYSTEM="1")
    done = subprocess.run(["git", "-C", str(repo), *args], env=env, check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(path: Path, branch: str = "main") -> Path:
    """A repository with `specs/web.yaml` committed once; returns its specs dir."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", branch)
    specs = path / "specs"
    specs.mkdir()
    (specs / "web.yaml").write_text("name: web\n")
    commit(path, "first")
    return specs


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def test_a_branch_gives_branch_at_sha1(tmp_path: Path) -> None:
    specs = make_repo(tmp_path / "repo", branch="release/2026")
    sha = git(tmp_path / "repo", "rev-parse", "HEAD")
    assert revision_of(specs) == Revision(f"release/2026@sha1:{sha}", dirty=False)


def test_detached_head_gives_sha1_only(tmp_path: Path) -> None:
    specs = make_repo(tmp_path / "repo")
    git(tmp_path / "repo", "checkout", "-q", "--detach")
    sha = git(tmp_path / "repo", "rev-parse", "HEAD")
    assert revision_of(specs) == Revision(f"sha1:{sha}")


def test_an_edit_or_a_new_file_in_the_specs_dir_is_dirty(tmp_path: Path) -> None:
    specs = make_repo(tmp_path / "repo")
    (specs / "web.yaml").write_text("name: web2\n")
    assert revision_of(specs).dirty
    git(tmp_path / "repo", "checkout", "-q", "--", ".")
    assert not revision_of(specs).dirty
    (specs / "new.yaml").write_text("name: new\n")
    assert revision_of(specs).dirty


def test_changes_outside_the_specs_dir_do_not_make_it_dirty(tmp_path: Path) -> None:
    specs = make_repo(tmp_path / "repo")
    (tmp_path / "repo" / "README").write_text("elsewhere\n")
    assert not revision_of(specs).dirty


def test_a_commit_that_touches_no_spec_file_is_seen(tmp_path: Path) -> None:
    specs = make_repo(tmp_path / "repo")
    before = revision_of(specs).revision
    (tmp_path / "repo" / "README").write_text("docs only\n")
    sha = commit(tmp_path / "repo", "docs")
    assert before != revision_of(specs).revision == f"main@sha1:{sha}"


def test_a_git_sync_symlink_flip_gives_the_new_worktree(tmp_path: Path) -> None:
    """git-sync: `<root>/specs-link -> worktrees/<sha>` (detached), replaced atomically."""
    origin = tmp_path / "origin"
    make_repo(origin)
    first = git(origin, "rev-parse", "HEAD")
    second = commit(origin, "second")
    link = tmp_path / "current"
    for sha in (first, second):
        worktree = tmp_path / "worktrees" / sha
        git(origin, "worktree", "add", "-q", "--detach", str(worktree), sha)
        staged = tmp_path / "current.new"
        staged.symlink_to(worktree)
        os.replace(staged, link)  # the flip: one rename over the old link
        assert revision_of(link / "specs") == Revision(f"sha1:{sha}")


def test_not_a_repository_is_unknown_and_says_how_to_name_it(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    found = revision_of(plain)
    assert found.revision == UNKNOWN and not found.dirty
    assert found.error is not None and "--revision" in found.error


def test_a_label_names_the_revision_without_git(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert revision_of(plain, "build-42") == Revision("build-42")
    specs = make_repo(tmp_path / "repo")
    assert revision_of(specs, "v1.2.3").revision == "v1.2.3"  # the label wins over git


def test_a_broken_head_is_unknown_with_the_reason(tmp_path: Path) -> None:
    specs = make_repo(tmp_path / "repo")
    (tmp_path / "repo" / ".git" / "HEAD").write_text("garbage\n")
    found = revision_of(specs)
    assert found.revision == UNKNOWN
    assert found.error and "not a git repository" in found.error


def test_an_unborn_branch_is_unknown_with_the_reason(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    found = revision_of(repo)
    assert found.revision == UNKNOWN
    assert found.error and "HEAD" in found.error


def test_a_git_that_does_not_answer_in_time_is_unknown(tmp_path: Path) -> None:
    specs = make_repo(tmp_path / "repo")
    found = revision_of(specs, timeout=0.0)  # every command times out at once
    assert found.revision == UNKNOWN
    assert found.error and "longer than" in found.error


def test_a_vanished_specs_dir_is_unknown(tmp_path: Path) -> None:
    found = revision_of(tmp_path / "gone")
    assert found.revision == UNKNOWN and found.error is not None


class Counting:
    """`revision_of`, counting how often the reader asks git."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, specs_dir: Path) -> Revision:
        self.calls += 1
        return revision_of(specs_dir)


def test_the_reader_asks_git_again_only_when_something_changed(tmp_path: Path) -> None:
    """A pass (and so every respawn) must not pay two git commands when nothing changed, but a
    commit touching no spec file, an edit, a new branch or a git-sync flip is seen at once."""
    repo = tmp_path / "repo"
    specs = make_repo(repo)
    ask = Counting()
    reader = RevisionReader(ask=ask)
    first = reader.read(specs)
    assert reader.read(specs) == first and ask.calls == 1  # nothing changed: no git
    (repo / "README").write_text("docs only\n")
    sha = commit(repo, "docs")  # no spec file touched: HEAD's ref moved
    assert reader.read(specs) == Revision(f"main@sha1:{sha}") and ask.calls == 2
    (specs / "web.yaml").write_text("name: web\ndescription: edited\n")
    assert reader.read(specs).dirty and ask.calls == 3  # an edit in the specs dir
    git(repo, "checkout", "-q", "-b", "feature")
    assert reader.read(specs).revision == f"feature@sha1:{sha}"  # HEAD names another ref


def test_the_reader_asks_again_after_max_age_whatever_the_stats_say(tmp_path: Path) -> None:
    specs = make_repo(tmp_path / "repo")
    now = [0.0]
    ask = Counting()
    reader = RevisionReader(ask=ask, max_age=30.0, clock=lambda: now[0])
    reader.read(specs)
    now[0] = 29.0
    reader.read(specs)
    assert ask.calls == 1
    now[0] = 30.0
    reader.read(specs)
    assert ask.calls == 2


def test_the_reader_follows_a_git_sync_flip(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    make_repo(origin)
    first = git(origin, "rev-parse", "HEAD")
    second = commit(origin, "second")
    link, reader = tmp_path / "current", RevisionReader()
    for sha in (first, second):
        worktree = tmp_path / "worktrees" / sha
        git(origin, "worktree", "add", "-q", "--detach", str(worktree), sha)
        staged = tmp_path / "current.new"
        staged.symlink_to(worktree)
        os.replace(staged, link)
        assert reader.read(link / "specs") == Revision(f"sha1:{sha}")


def test_a_git_that_hangs_is_killed_with_what_it_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout kills git's whole process group: nothing it started is left behind."""
    specs = make_repo(tmp_path / "repo")
    fake = tmp_path / "bin"
    fake.mkdir()
    marker = f"{os.getpid()}.4242"
    (fake / "git").write_text(f"#!/bin/sh\nsleep {marker} &\nwait\n")
    (fake / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    found = revision_of(specs, timeout=0.5)
    assert found.revision == UNKNOWN and found.error and "longer than" in found.error

    def left() -> list[int]:
        return [pid for pid in procfs.iter_pids() if cmdline(pid) == ("sleep", marker)]
    wait_for(lambda: left() == [], message="git's child killed with it")
