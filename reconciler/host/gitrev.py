"""The git revision of the specs dir: which commit a pass applies, and whether the tree is dirty.

GitOps operators (and Flux/Argo CD) name what runs by the commit it came from: here
`<branch>@sha1:<40 hex>`, or `sha1:<40 hex>` on a detached HEAD (git-sync checks out detached
worktrees). An operator without git names it with `--revision LABEL` / `RECONCILER_REVISION`,
which wins over git and runs no git at all.

Why the `git` command and not reading `.git` by hand: a specs dir lives in a plain clone, in a
linked worktree (`.git` is a file pointing elsewhere), behind git-sync's symlink, with packed
refs, reftables, `safe.directory` rules and submodules; git answers all of them the way the
operator's own `git log` does, and "dirty" needs the index anyway. Each pass runs at most two
short commands (`rev-parse`, `status`), each bounded by `GIT_TIMEOUT_SECONDS`.

A commit that touches no spec file changes no file the watcher sees, and must still show at
the next pass. `RevisionReader` therefore asks git again whenever git's own state (HEAD, the
branch's ref, packed refs, the index) or the specs dir's entries changed, judged by a few
stats (microseconds), and at least every `MAX_AGE_SECONDS` (a change git's files do not show,
e.g. an edit in a subdirectory of the specs dir, is seen within that). Two git commands cost
about 6 ms, which every respawn would otherwise pay.

Never fails and never stalls a pass: any error (git missing, a broken HEAD, an unborn branch,
"dubious ownership", a timeout) gives `revision="unknown"` with the reason in `error`. So does
a specs dir that is not inside any git work tree (no `.git` in it or above it: no git command
runs then), as issue 10 asks: `info` says why, and names the flag that fixes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

from reconciler.files import FileVersion, file_version
from reconciler.host import pidfd
from reconciler.text import printable

GIT_TIMEOUT_SECONDS = 2.0
MAX_AGE_SECONDS = 30.0
UNKNOWN = "unknown"
NOT_IN_GIT = ("the specs dir is not in a git work tree; --revision or RECONCILER_REVISION "
              "names its revision")
_SHA1 = re.compile(r"[0-9a-f]{40}")
# What git reads from the environment that could point it at another repository (a daemon
# started from a git hook inherits GIT_DIR) or make it prompt; none of it is ours to pass on.
_GIT_ENV_PREFIX = "GIT_"


@dataclass(frozen=True, slots=True)
class Revision:
    """What the specs dir is, as a revision: `unknown` with `error` saying why when neither git
    nor a label can name it. None only before any pass looked (`NO_REVISION`)."""

    revision: str | None
    dirty: bool = False
    error: str | None = None


NO_REVISION = Revision(None)


def revision_of(specs_dir: Path, label: str | None = None, *,
                timeout: float = GIT_TIMEOUT_SECONDS) -> Revision:
    """The revision of `specs_dir`: `label` if given, else from git (see module doc)."""
    if label:
        return Revision(label)
    try:
        # git-sync flips a symlink to a new worktree: resolve it once, so both commands ask
        # the same checkout even if the link flips between them
        real = Path(os.path.realpath(specs_dir))
        if not real.is_dir():
            return _unknown(f"{specs_dir} is not a directory")
        if not _inside_git(real):
            return _unknown(NOT_IN_GIT)
        # options of rev-parse apply to the arguments after them: the sha, then the branch
        # name ("HEAD" when detached)
        head = _git(real, timeout, "rev-parse", "HEAD", "--abbrev-ref", "HEAD").split()
        if len(head) != 2 or not _SHA1.fullmatch(head[0]):
            return _unknown(f"git rev-parse gave {' '.join(head)!r}")
        sha, branch = head
        status = _git(real, timeout, "status", "--porcelain", "--ignore-submodules", "--", ".")
    except _GitFailed as err:
        return _unknown(str(err))
    except OSError as err:  # realpath or stat of a vanished dir, or no git binary
        return _unknown(f"cannot run git: {err.strerror or err}")
    revision = f"sha1:{sha}" if branch == "HEAD" else f"{branch}@sha1:{sha}"
    return Revision(revision, dirty=bool(status.strip()))


class RevisionReader:
    """`revision_of`, asked again only when something it depends on may have changed (see the
    module docstring). One per controller: it remembers the last answer."""

    def __init__(self, *, max_age: float = MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 ask: Callable[[Path], Revision] | None = None) -> None:
        self.max_age = max_age
        self.clock = clock
        self._ask = ask or (lambda specs_dir: revision_of(specs_dir))
        self._key: Hashable = None
        self._at = -max_age
        self._last = NO_REVISION

    def read(self, specs_dir: Path, label: str | None = None) -> Revision:
        if label:
            return Revision(label)
        key = _fingerprint(specs_dir)
        now = self.clock()
        if key is None or key != self._key or now - self._at >= self.max_age:
            self._last = self._ask(specs_dir)
            self._key, self._at = key, now
        return self._last


def _fingerprint(specs_dir: Path) -> Hashable:
    """What changes when the revision or the dirty flag may: the resolved specs dir, the
    stats of git's HEAD, the ref it names, packed refs and the index, and the specs dir's
    entries. None when it cannot be told (then git is asked)."""
    try:
        real = Path(os.path.realpath(specs_dir))
        gitdir = _gitdir(real)
        if gitdir is None:
            return (real, None)
        common = _commondir(gitdir)
        head = (gitdir / "HEAD").read_text(errors="replace").strip()
        ref = common / head[5:].strip() if head.startswith("ref:") else None
        files = [gitdir / "HEAD", gitdir / "index", common / "packed-refs"]
        files += [ref] if ref is not None else []
        with os.scandir(real) as entries:
            listing = sorted((e.name, _version(e.path)) for e in entries)
        return (real, head, tuple(_version(f) for f in files), tuple(listing))
    except OSError:
        return None


def _version(path: str | Path) -> FileVersion | None:
    return file_version(path, follow_symlinks=False)  # a link's own change counts


def _gitdir(directory: Path) -> Path | None:
    """The git dir of the work tree holding `directory`: `.git` itself, or where a linked
    worktree's `.git` file points."""
    for parent in (directory, *directory.parents):
        dot_git = parent / ".git"
        if dot_git.is_dir():
            return dot_git
        if dot_git.is_file():
            text = dot_git.read_text(errors="replace").strip()
            if text.startswith("gitdir:"):
                return (parent / text[7:].strip()).resolve()
            return None
    return None


def _commondir(gitdir: Path) -> Path:
    """Where refs live: a linked worktree's git dir names the main one in `commondir`."""
    try:
        return (gitdir / (gitdir / "commondir").read_text().strip()).resolve()
    except OSError:
        return gitdir


def _unknown(reason: str) -> Revision:
    return Revision(UNKNOWN, error=printable(reason))


def _inside_git(directory: Path) -> bool:
    """A `.git` (dir, or file of a linked worktree) in the dir or above: only then is git
    asked. Cheaper than a failing `git` per pass for every operator who does not use git."""
    return any(os.path.lexists(parent / ".git") for parent in (directory, *directory.parents))


class _GitFailed(Exception):
    """A git command that failed, timed out or could not start; the text says which."""


def _git(directory: Path, timeout: float, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_GIT_ENV_PREFIX)}
    # C messages (parseable, stable); no prompt; `status` takes no index.lock, so a pass never
    # competes with git-sync or an operator's git for the lock
    env.update(LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
    # -c core.fsmonitor=false: never run a hook a checkout's owner configured (we may be root)
    command = ["git", "-c", "core.fsmonitor=false", "-C", str(directory), *args]
    try:
        # its own process group, so a timeout kills whatever git started too (a credential
        # helper, an fsmonitor), not only git
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", env=env,
                                start_new_session=True)
    except FileNotFoundError:
        raise _GitFailed("git is not installed (or not on PATH)") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            pidfd.SYSTEM.kill_own_group(proc.pid, signal.SIGKILL)  # not reaped yet: ours
        proc.communicate()
        raise _GitFailed(f"git {args[0]} took longer than {timeout:g}s") from None
    if proc.returncode != 0:
        message = err.strip().splitlines()
        raise _GitFailed(f"git {args[0]}: {message[0] if message else f'exit {proc.returncode}'}")
    return out
