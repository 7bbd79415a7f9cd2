"""Starting processes, and keeping the handles only a parent has.

Every job runs in its own session (`start_new_session`), so it survives the controller and
can be stopped as a whole by its session id. Only the parent can collect a child's exit
status, exactly once; `Children` is the single owner of our `Popen` objects so that nothing
else reaps them (reaping twice reports a wrong status).

A child is *gated*: it starts as `/bin/sh` waiting for one line on a pipe, and runs the real
command only after the parent has written down that it is ours (the enrollment, the pidfile)
and opened the gate. If the controller dies before that, the kernel closes the pipe, the
shell reads end-of-file and exits without ever running the command, so a controller killed
mid-spawn can never leave behind a live process that nothing proves is ours (for a singleton
that would be a second instance).

A string command that only execs a program (`cmd: "exec prog args"`, literal words) is
exec'ed by the gate's shell itself rather than by a second /bin/sh: two execs per start
instead of three, most of a start's CPU (docs/benchmarks.md, "cold start, second round").
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from reconciler.environment import DEFAULT_PATH
from reconciler.files import PRIVATE_FILE, make_private_dirs
from reconciler.host import procfs
from reconciler.host.limits import LimitError, apply_rlimits, child_fd_limit
from reconciler.host.pidfd import SYSTEM, NoPidfd, Pidfds
from reconciler.identity import Identity
from reconciler.observed import Exit
from reconciler.timing import NO_PIDFD_POLL_SECONDS

# Waits for the parent's go on stdin; end-of-file (the parent died) means never run "$@".
# $1 is the soft open-file limit the command gets (host/limits.py); empty when the spec sets
# `limits.nofile`, which the parent sets with prlimit while the gate waits and which must
# win: the shell may run its `ulimit` after the parent's prlimit.
_GATE = ('[ -z "$1" ] || ulimit -S -n "$1" 2>/dev/null; shift; '
         'read -r _ || exit 125; exec "$@" </dev/null')
GATE_ARGV0 = "reconciler-gate"
# Inherited by every process of a job, across forks, setsid and exec: how a job's members are
# found again after they leave its session (host/members.py). Set last, so a spec's env
# cannot forge or hide it.
JOB_ID_VAR = "RECONCILER_JOB_ID"


class SpawnError(Exception):
    """The process could not be started; the message says why, for the job's status."""


@dataclass(slots=True)
class _Child:
    popen: subprocess.Popen[bytes]
    identity: Identity
    pidfd: int | None  # readable once the child exits; None where the kernel lacks pidfds


def _open_log(log_path: str) -> int:
    """Append-only and never through a symlink: the log lives in a directory a service
    could write to, and we open it as root."""
    try:
        make_private_dirs(os.path.dirname(os.path.abspath(log_path)))
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(log_path, flags, PRIVATE_FILE)
    except OSError as err:
        reason = "is a symlink" if err.errno == errno.ELOOP else err.strerror
        raise SpawnError(f"cannot open log {log_path}: {reason}") from err


def _check_executable(argv0: str, cwd: str | None, env: Mapping[str, str]) -> None:
    """The gate's shell, not us, execs the command, so an exec failure would only show as
    exit 127 in the log. Look it up first, as exec will, to report it as a spawn error."""
    if "/" in argv0:
        path = os.path.join(cwd or os.getcwd(), argv0)
        if not os.path.exists(path):
            raise SpawnError(f"command not found: {argv0}")
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            raise SpawnError(f"permission denied: {argv0}")
    elif not _on_path(argv0, _search_path(env, cwd)):
        raise SpawnError(f"command not found: {argv0}")


# Where `shutil.which` last found a program, by (name, search path). A start looks at that
# one file again (two syscalls) instead of walking the PATH (two or three per entry: the
# benchmark's `sleep` is in the 9th entry of the PATH its services inherit: ~20 syscalls).
# The answer is the same: while the file found is still an executable file, exec finds it
# or one earlier on the PATH; once it is not, the PATH is walked again. Misses are never
# remembered, so a program installed since is found at its next start.
_FOUND: dict[tuple[str, str], str] = {}
_FOUND_MOST = 4096  # distinct (program, PATH, cwd): the specs' count, unless someone churns


def _on_path(program: str, search_path: str) -> bool:
    """Whether exec will find `program` on `search_path` (see `_FOUND`). Thread-safe: a
    lost race only costs a walk of the PATH."""
    key = (program, search_path)
    found = _FOUND.get(key)
    if found is not None and os.access(found, os.X_OK) and not os.path.isdir(found):
        return True  # shutil.which's own test of a candidate
    found = shutil.which(program, path=search_path)
    if found is None:
        _FOUND.pop(key, None)
        return False
    if len(_FOUND) >= _FOUND_MOST:
        _FOUND.clear()
    _FOUND[key] = found
    return True


def _search_path(env: Mapping[str, str], cwd: str | None) -> str:
    """The service's PATH as exec will search it: from the service's working directory, so a
    relative entry (`bin`) or an empty one (the current directory) means one under `cwd`,
    not under ours."""
    base = cwd or os.getcwd()
    entries = env.get("PATH", DEFAULT_PATH).split(os.pathsep)
    return os.pathsep.join(e if os.path.isabs(e) else os.path.join(base, e) for e in entries)


# What /bin/sh runs without looking it up on PATH (POSIX special and regular builtins, and the
# reserved words): a string command starting with one of these is left to the shell.
_SHELL_WORDS = frozenset((
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in",
    "then", "until", "while", "function", "select", "time",
    ".", ":", "[", "alias", "bg", "break", "cd", "command", "continue", "echo", "eval", "exec",
    "exit", "export", "false", "fc", "fg", "getopts", "hash", "jobs", "kill", "local",
    "printf", "pwd", "read", "readonly", "return", "set", "shift", "test", "times", "trap",
    "true", "type", "ulimit", "umask", "unalias", "unset", "wait",
    # bash's and dash's own (when /bin/sh is one of them)
    "bind", "builtin", "caller", "chdir", "compgen", "complete", "coproc", "declare", "dirs",
    "disown", "enable", "help", "history", "let", "logout", "mapfile", "popd", "pushd",
    "readarray", "shopt", "source", "suspend", "typeset"))
# Operators and expansions that may make the shell run something other than (or more than)
# the first word: then the string is left to the shell, as it always was.
_SHELL_SYNTAX = frozenset("|&;<>()$`\\\n")
_NOT_PLAIN = frozenset("=*?[~#{!")  # in the first word: an assignment, a glob, a comment...
_SHLEX_BLANKS = " \t\r\n"  # what shlex splits on


def _shell_program(argv: Sequence[str]) -> str | None:
    """The program a string `cmd:` (run as `/bin/sh -c "<string>"`) starts, when the
    string is a plain `program arg...`; None for anything the shell must interpret."""
    if len(argv) != 3 or list(argv[:2]) != ["/bin/sh", "-c"]:
        return None
    script = argv[2]
    if any(char in _SHELL_SYNTAX for char in script):
        return None
    if _first_word(script) in _SHELL_WORDS:  # `exec prog ...`: no need to tokenize it all
        return None
    try:
        words = shlex.split(script)
    except ValueError:  # unbalanced quotes: the shell reports that itself
        return None
    if not words or words[0] in _SHELL_WORDS or any(c in _NOT_PLAIN for c in words[0]):
        return None
    return words[0]


# Characters after which `exec prog arg...` may mean something other than those words: any
# operator or expansion, quoting by backslash, a glob, a tilde, a comment, brace expansion
# (bash), and a carriage return (a word character to the shell, a blank to shlex).
_NOT_LITERAL = _SHELL_SYNTAX | frozenset("*?[]~#{}!\r")


def _exec_words(argv: Sequence[str]) -> list[str] | None:
    """For a string command `/bin/sh -c "exec prog arg..."` made only of literal words, those
    words (`prog arg...`), which the gate's shell execs itself: the same shell doing the same
    `exec` with the same words, environment, directory and limits, one exec of /bin/sh per
    start fewer (docs/benchmarks.md, "cold start, second round"). None for anything else,
    which the gate runs as given."""
    if len(argv) != 3 or list(argv[:2]) != ["/bin/sh", "-c"]:
        return None
    script = argv[2]
    if _first_word(script) != "exec" or any(char in _NOT_LITERAL for char in script):
        return None
    if "'" in script or '"' in script:
        try:
            words = shlex.split(script)
        except ValueError:  # unbalanced quotes: the shell reports that itself
            return None
    else:  # no quotes, escapes or newlines: words are what blanks separate (shlex's 40 µs)
        words = [word for word in script.replace("\t", " ").split(" ") if word]
    if len(words) < 2 or words[0] != "exec" or words[1].startswith("-") or "=" in words[1]:
        return None  # `exec` alone, bash's `exec -a name`, an assignment-looking program
    return words[1:]


def _first_word(script: str) -> str:
    """The first word as shlex splits it when it is unquoted (shlex's whitespace only)."""
    words = script.lstrip(_SHLEX_BLANKS)
    end = next((i for i, char in enumerate(words) if char in _SHLEX_BLANKS), len(words))
    return words[:end]


def _spawn_error(err: OSError, argv: Sequence[str], cwd: str | None) -> SpawnError:
    """Turn the child's exec/chdir failure (re-raised in the parent by subprocess) into
    words an operator can act on."""
    in_cwd = cwd is not None and err.filename == cwd
    if in_cwd and isinstance(err, FileNotFoundError):
        return SpawnError(f"working directory missing: {cwd}")
    if in_cwd and isinstance(err, NotADirectoryError):
        return SpawnError(f"working directory is not a directory: {cwd}")
    if in_cwd:
        return SpawnError(f"cannot enter working directory {cwd}: {err.strerror}")
    if isinstance(err, FileNotFoundError):
        return SpawnError(f"command not found: {argv[0]}")
    if isinstance(err, PermissionError):
        return SpawnError(f"permission denied: {argv[0]}")
    return SpawnError(f"cannot execute {argv[0]}: {err.strerror or err}")


class _Gate:
    """The parent's end of a child's gate. Closing it without `open()` makes the child exit
    unrun (125), exactly as if the controller had died."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def open(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # the child is already gone
            os.write(self.fd, b"go\n")

    def close(self) -> None:
        os.close(self.fd)


class Children:
    """Registry of the processes WE started and have not reaped yet. Thread-safe."""

    def __init__(self, *, pidfds: Pidfds = SYSTEM) -> None:
        self._pidfds = pidfds
        self._children: dict[int, _Child] = {}
        self._lock = threading.Lock()
        # For `reap`: the pidfds of all children in one epoll object (it answers with the
        # ready ones only, where poll() looks at every fd), and the children that have none
        # (kernel without pidfds) and must each be asked with waitpid.
        self._poller = select.epoll()
        self._by_fd: dict[int, int] = {}
        self._without_pidfd: set[int] = set()

    def spawn(self, argv: Sequence[str], *, cwd: str | os.PathLike[str] | None,
              env: Mapping[str, str], log_path: str | os.PathLike[str],
              enroll: Callable[[Identity], None] | None = None,
              job_id: str | None = None,
              rlimits: Sequence[tuple[str, int]] = ()) -> Identity:
        """Start `argv` in a new session with stdout+stderr appended to `log_path`, and
        `RECONCILER_JOB_ID=job_id` in its environment when a job id is given.

        `rlimits` ((spec key, value) of a spec's `limits:`, host/limits.py) are set on the
        gated child before anything else: one that cannot be set is a SpawnError naming it,
        and the command never runs.

        `enroll(identity)` runs after the process exists and before it runs `argv` (see the
        module docstring); if it raises, the command never runs and the error propagates.
        Returns once the gate is open (or raises SpawnError)."""
        argv = [os.fspath(a) for a in argv]
        env = dict(env)
        if job_id is not None:
            if not job_id or "\0" in job_id:
                raise SpawnError(f"invalid job id {job_id!r}")
            env[JOB_ID_VAR] = job_id
        cwd_str = os.fspath(cwd) if cwd is not None else None
        if not argv:
            raise SpawnError("empty command")
        if cwd_str is not None and not os.path.isdir(cwd_str):
            raise SpawnError(f"working directory missing: {cwd_str}")
        _check_executable(argv[0], cwd_str, env)
        run_argv = _exec_words(argv) or argv
        program = run_argv[0] if run_argv is not argv else _shell_program(argv)
        if program is not None:  # as exec would fail for the list form, not as exit 127
            _check_executable(program, cwd_str, env)
        log_fd = _open_log(os.fspath(log_path))
        try:
            gate_read, gate_write = os.pipe()  # both close-on-exec; the child gets gate_read
        except OSError as err:  # EMFILE/ENFILE: a failed start to retry, not a failed pass
            os.close(log_fd)
            raise SpawnError(f"cannot create the spawn gate: {err.strerror}") from err
        try:
            own_nofile = any(key == "nofile" for key, _ in rlimits)
            fd_soft = "" if own_nofile else str(child_fd_limit())
            gate_argv = ["/bin/sh", "-c", _GATE, GATE_ARGV0, fd_soft]
            popen = subprocess.Popen([*gate_argv, *run_argv], cwd=cwd_str,
                                     env=env, stdin=gate_read, stdout=log_fd,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     close_fds=True)
        except OSError as err:
            os.close(gate_write)
            raise _spawn_error(err, ["/bin/sh"], cwd_str) from err
        finally:
            os.close(log_fd)
            os.close(gate_read)
        with contextlib.closing(_Gate(gate_write)) as gate:
            identity = self._register(popen)
            try:
                apply_rlimits(popen.pid, rlimits)
            except LimitError as err:
                raise SpawnError(str(err)) from err
            if enroll is not None:
                enroll(identity)
            gate.open()
        return identity

    def _register(self, popen: subprocess.Popen[bytes]) -> Identity:
        """Open the child's pidfd, then read its identity: one /proc read per spawn, and the
        identity is read after the pidfd exists, which is what makes a pidfd trustworthy.
        Our unreaped child's pid cannot be recycled meanwhile, and its /proc entry exists
        even if it already exited (a zombie's stat still has its start time)."""
        try:
            pidfd = self._pidfds.open(popen.pid)
        except NoPidfd:
            pidfd = None
        stat = procfs.read_stat(popen.pid)
        if stat is None:  # someone else reaped it (SIGCHLD ignored?): we cannot track it
            if pidfd is not None:
                os.close(pidfd)
            popen.poll()
            raise SpawnError(f"{popen.args!r} exited and was reaped before it could be tracked")
        identity = Identity(procfs.read_boot_id(), popen.pid, stat.starttime)
        if pidfd is not None:  # opened before the read: it names `identity`, so it is shared
            pidfd = self._pidfds.share(identity, pidfd)
        with self._lock:
            self._children[popen.pid] = _Child(popen, identity, pidfd)
            if pidfd is None:
                self._without_pidfd.add(popen.pid)
            else:
                self._poller.register(pidfd, select.EPOLLIN)
                self._by_fd[pidfd] = popen.pid
        return identity

    def reap(self) -> dict[int, Exit]:
        """Collect every own child that has exited, each exactly once; never blocks.
        (If something else reaped a child first, subprocess reports returncode 0.)"""
        exits: dict[int, Exit] = {}
        with self._lock:
            for pid in self._maybe_exited():
                child = self._children[pid]
                code = child.popen.poll()
                if code is None:
                    continue
                exits[pid] = Exit(child.identity, code)
                self._drop(pid)
        return exits

    def _maybe_exited(self) -> list[int]:
        """Children whose pidfd is readable, and those without one: one epoll_wait instead
        of a waitpid per child (a thousand syscalls a pass at a thousand jobs)."""
        ready = [self._by_fd[fd] for fd, _events in self._poller.poll(0, max(1, len(self._by_fd)))]
        return [*ready, *self._without_pidfd]

    def _drop(self, pid: int) -> None:
        child = self._children.pop(pid, None)
        self._without_pidfd.discard(pid)
        if child is not None and child.pidfd is not None:
            self._poller.unregister(child.pidfd)
            del self._by_fd[child.pidfd]
            self._pidfds.release(child.identity)

    def pids(self) -> frozenset[int]:
        """The children not reaped yet (what a teardown must still kill)."""
        with self._lock:
            return frozenset(self._children)

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds until some own child has exited (it is not reaped
        here: `reap` does that). True if one has; with no children this just waits, so a
        polling loop does not spin."""
        with self._lock:
            children = list(self._children.values())
        if any(c.pidfd is None for c in children):
            return self._wait_polling(children, timeout)
        poller = select.poll()
        for fd in (c.pidfd for c in children if c.pidfd is not None):  # all are, checked above
            poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, math.ceil(timeout * 1000))))

    @staticmethod
    def _wait_polling(children: list[_Child], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            for child in children:
                with contextlib.suppress(ChildProcessError):
                    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT  # look, do not reap
                    if os.waitid(os.P_PID, child.popen.pid, flags) is not None:
                        return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(remaining, NO_PIDFD_POLL_SECONDS))

    def close(self) -> None:
        """Release the pidfds; the children themselves keep running in their sessions."""
        with self._lock:
            for pid in list(self._children):
                self._drop(pid)
