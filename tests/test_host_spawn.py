"""Spawning our own children: logs, identity, exactly-once reaping, clear errors."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.environment import DEFAULT_PATH, minimal_env
from reconciler.host import procfs
from reconciler.host.identity import identity_of
from reconciler.host.pidfd import Pidfds
from reconciler.host.spawn import (
    GATE_ARGV0,
    JOB_ID_VAR,
    Children,
    SpawnError,
    _exec_words,
)
from reconciler.identity import Identity
from reconciler.observed import Exit
from reconciler.settings import Settings
from tests.helpers import cmdline, service_env, wait_for

SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]


@pytest.fixture
def children() -> Iterator[Children]:
    """Every child (and its session's group) is killed and reaped at teardown."""
    registry = Children()
    yield registry
    for pid in registry.pids():
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)

    def all_reaped() -> bool:
        registry.reap()
        return not registry.pids()

    wait_for(all_reaped, message="children reaped")
    registry.close()


def spawn(children: Children, tmp_path: Path, argv: list[str], **env: str) -> int:
    return children.spawn(argv, cwd=tmp_path, env=service_env(env),
                          log_path=tmp_path / "logs" / "svc" / "main.log").pid


def reaped(children: Children, pid: int) -> Exit:
    """Wait for `pid` to exit, through Children.wait, and return its reaped exit."""
    def collect() -> Exit | None:
        children.wait(0.5)
        return children.reap().get(pid)
    return wait_for(collect, message=f"exit of {pid}")


# --- environment -----------------------------------------------------------------------------


def test_minimal_env_inherits_only_the_basics() -> None:
    inherited = {"SECRET_TOKEN": "hunter2", "LC_TIME": "C", "HOME": "/root",
                 "PATH": "/opt/bin:/usr/bin"}
    env = minimal_env({"PYTHONUNBUFFERED": "1", "HOME": "/srv"}, inherited)
    assert "SECRET_TOKEN" not in env
    assert env["LC_TIME"] == "C"
    assert env["PATH"] == "/opt/bin:/usr/bin"
    assert env["HOME"] == "/srv"  # extra wins
    assert env["PYTHONUNBUFFERED"] == "1"
    allowed = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "PYTHONUNBUFFERED"}
    assert all(k in allowed or k.startswith("LC_") for k in env)


def test_minimal_env_default_path() -> None:
    assert minimal_env({}, {"HOME": "/root"})["PATH"] == DEFAULT_PATH


def test_settings_capture_what_services_inherit(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    """Resolving specs reads no globals: what services inherit is captured with the
    settings, and only the harmless part of it."""
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("LC_TIME", "C")
    captured = dict(Settings(specs_dir=tmp_path, state_dir=tmp_path / "state").inherited_env)
    assert captured["LC_TIME"] == "C" and "SECRET_TOKEN" not in captured


def test_child_gets_exactly_the_minimal_env(children: Children, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    pid = spawn(children, tmp_path, SLEEP, APP_MODE="test")
    wait_for(lambda: cmdline(pid) == tuple(SLEEP), message="the command runs")
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    environ = dict(item.split(b"=", 1) for item in raw.split(b"\0") if item)
    # the gate shell exports PWD (its working directory) to the command, as any shell does
    assert {k.decode(): v.decode() for k, v in environ.items()} == {
        **service_env({"APP_MODE": "test"}), "PWD": str(tmp_path)}


def test_job_id_is_in_the_environment_and_cannot_be_forged(children: Children,
                                                             tmp_path: Path) -> None:
    """The spec's env cannot set or hide the job id: spawn sets it last."""
    env = service_env({"RECONCILER_JOB_ID": "forged", "APP": "1"})
    pid = children.spawn(SLEEP, cwd=tmp_path, env=env, log_path=tmp_path / "main.log",
                         job_id="api.main.1").pid
    wait_for(lambda: cmdline(pid) == tuple(SLEEP), message="the command runs")
    assert procfs.read_environ_var(pid, JOB_ID_VAR) == "api.main.1"
    assert env["RECONCILER_JOB_ID"] == "forged"  # the caller's mapping is not modified


def test_no_job_id_no_variable(children: Children, tmp_path: Path) -> None:
    pid = spawn(children, tmp_path, SLEEP, APP="1")
    wait_for(lambda: cmdline(pid) == tuple(SLEEP), message="the command runs")
    assert procfs.read_environ_var(pid, JOB_ID_VAR) is None


@pytest.mark.parametrize("job_id", ["", "a\0b"])
def test_invalid_job_id_is_a_spawn_error(children: Children, tmp_path: Path,
                                         job_id: str) -> None:
    with pytest.raises(SpawnError, match="invalid job id"):
        children.spawn(SLEEP, cwd=tmp_path, env=service_env({}),
                       log_path=tmp_path / "main.log", job_id=job_id)
    assert not children.pids()


# --- spawning --------------------------------------------------------------------------------


def test_spawn_identity_session_and_stdin(children: Children, tmp_path: Path) -> None:
    identity = children.spawn(SLEEP, cwd=tmp_path, env=service_env({}),
                              log_path=tmp_path / "main.log")
    assert identity == identity_of(identity.pid)
    assert identity.boot_id == procfs.read_boot_id()
    assert children.pids() == {identity.pid}
    stat_ = procfs.read_stat(identity.pid)
    assert stat_ is not None and stat_.session == identity.pid and stat_.ppid == os.getpid()
    # the gate opened: the command itself runs (same pid, same identity), stdin /dev/null
    wait_for(lambda: cmdline(identity.pid) == tuple(SLEEP), message="exec")
    assert identity_of(identity.pid) == identity
    assert os.readlink(f"/proc/{identity.pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{identity.pid}/cwd") == str(tmp_path)


def test_spawn_appends_stdout_and_stderr_to_the_log(children: Children, tmp_path: Path) -> None:
    code = "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr)"
    log = tmp_path / "logs" / "svc" / "main.log"
    for _ in range(2):
        pid = spawn(children, tmp_path, [sys.executable, "-c", code])
        assert reaped(children, pid).returncode == 0
    assert log.read_text().splitlines() == ["to stdout", "to stderr"] * 2
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_spawn_refuses_a_symlinked_log(children: Children, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    log = tmp_path / "main.log"
    log.symlink_to(victim)
    with pytest.raises(SpawnError, match="symlink"):
        children.spawn(SLEEP, cwd=tmp_path, env=service_env({}), log_path=log)
    assert victim.read_text() == "precious"


def test_exit_code_is_reaped_exactly_once(children: Children, tmp_path: Path) -> None:
    identity = children.spawn([sys.executable, "-c", "raise SystemExit(3)"], cwd=tmp_path,
                              env=service_env({}), log_path=tmp_path / "main.log")
    assert reaped(children, identity.pid) == Exit(identity, 3)
    assert children.reap() == {}
    assert identity.pid not in children.pids()
    assert procfs.read_stat(identity.pid) is None  # no zombie left behind


def test_killed_child_reports_the_signal(children: Children, tmp_path: Path) -> None:
    pid = spawn(children, tmp_path, SLEEP)
    os.kill(pid, signal.SIGKILL)
    assert reaped(children, pid).returncode == -signal.SIGKILL


class _FdsRunOut(Pidfds):
    """A kernel with pidfds that cannot open one more (EMFILE) once `exhausted` is set."""

    def __init__(self) -> None:
        super().__init__(self._open)
        self.exhausted = False

    def _open(self, pid: int) -> int:
        if self.exhausted and pid != os.getpid():
            raise OSError(errno.EMFILE, "Too many open files")
        return os.pidfd_open(pid)


def test_reap_only_collects_the_exited_and_works_without_pidfds(tmp_path: Path) -> None:
    """reap() asks the kernel once (a poll over pidfds) which children exited; children the
    kernel gave no pidfd (no fds left, old kernels, seccomp) are each asked with waitpid."""
    pidfds = _FdsRunOut()
    children = Children(pidfds=pidfds)
    try:
        running = spawn(children, tmp_path, SLEEP)
        exiting = spawn(children, tmp_path, [sys.executable, "-c", "raise SystemExit(4)"])
        pidfds.exhausted = True
        unwatched = spawn(children, tmp_path, SLEEP)
        assert reaped(children, exiting).returncode == 4
        os.kill(unwatched, signal.SIGKILL)
        assert reaped(children, unwatched).returncode == -signal.SIGKILL
        assert children.pids() == {running} and children.reap() == {}
    finally:
        for pid in children.pids():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not (children.reap() or children.pids()), message="children reaped")
        children.close()


def test_wait_wakes_on_exit_and_times_out_otherwise(children: Children, tmp_path: Path) -> None:
    assert children.wait(0.01) is False  # no children: just waits
    pid = spawn(children, tmp_path, SLEEP)
    assert children.wait(0.05) is False
    os.kill(pid, signal.SIGTERM)
    assert children.wait(10) is True
    assert children.wait(0) is True  # not reaped yet: still reported
    assert pid in children.reap()


# --- errors ----------------------------------------------------------------------------------


def test_missing_command(children: Children, tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="command not found: no-such-command-xyz"):
        spawn(children, tmp_path, ["no-such-command-xyz"])
    with pytest.raises(SpawnError, match="command not found"):
        spawn(children, tmp_path, [str(tmp_path / "missing")])
    assert children.pids() == frozenset()


def test_a_string_command_whose_program_is_missing_fails_like_the_list_form(
        children: Children, tmp_path: Path) -> None:
    """`cmd: "prog args"` runs as /bin/sh -c; a missing `prog` is a spawn error, as for
    `cmd: [prog, args]`, not a shell that exits 127 again and again."""
    for script in ("no-such-command-xyz --port=8080", "  no-such-command-xyz",
                   "'no-such-command-xyz' 'an arg'", "./missing arg",
                   "\texecutable-xyz\targ"):
        with pytest.raises(SpawnError, match="command not found"):
            spawn(children, tmp_path, ["/bin/sh", "-c", script])
    assert children.pids() == frozenset()


@pytest.mark.parametrize("script", [
    "no-such-command-xyz || true",  # an operator: the shell decides
    "X=1 no-such-command-xyz; exit 0",
    "NO_SUCH=1",  # an assignment
    "exec true",  # a builtin
    "if true; then :; fi",  # a keyword
    "# only a comment",
    "true",
])
def test_a_string_command_the_shell_must_interpret_is_left_to_it(
        children: Children, tmp_path: Path, script: str) -> None:
    pid = spawn(children, tmp_path, ["/bin/sh", "-c", script])
    assert reaped(children, pid).returncode == 0


def test_a_string_command_is_looked_up_on_the_services_path(
        children: Children, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "only-here"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    with pytest.raises(SpawnError, match="command not found: only-here"):
        spawn(children, tmp_path, ["/bin/sh", "-c", "only-here --flag"])
    pid = spawn(children, tmp_path, ["/bin/sh", "-c", "only-here --flag"],
                PATH=f"{bin_dir}:{DEFAULT_PATH}")
    assert reaped(children, pid).returncode == 0


@pytest.mark.parametrize("argv", [["only-here", "x"], ["/bin/sh", "-c", "exec only-here x"]])
def test_where_a_program_was_found_is_looked_at_again_at_each_start(
        children: Children, tmp_path: Path, argv: list[str]) -> None:
    """A start remembers where the PATH walk found its program (host/spawn.py `_FOUND`),
    and the next start of the same program on the same PATH checks only that file. Removed
    from there, the program is not found (no stale answer); made not executable, too; a
    program installed after a miss is found at the next start (misses are not kept)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "only-here"
    path = f"{bin_dir}:{DEFAULT_PATH}"
    with pytest.raises(SpawnError, match="command not found: only-here"):
        spawn(children, tmp_path, argv, PATH=path)
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    for _ in range(2):  # found by the walk, then where it was found
        assert reaped(children, spawn(children, tmp_path, argv, PATH=path)).returncode == 0
    tool.chmod(0o644)
    with pytest.raises(SpawnError, match="command not found: only-here"):
        spawn(children, tmp_path, argv, PATH=path)
    tool.chmod(0o755)
    assert reaped(children, spawn(children, tmp_path, argv, PATH=path)).returncode == 0
    tool.unlink()
    with pytest.raises(SpawnError, match="command not found: only-here"):
        spawn(children, tmp_path, argv, PATH=path)


@pytest.mark.parametrize("argv", [["/bin/sh", "-c", "only-here --flag"], ["only-here", "x"]])
@pytest.mark.parametrize("path", ["bin:/usr/bin:/bin", "/usr/bin:/bin:"])
def test_relative_path_entries_are_searched_from_the_services_cwd(
        children: Children, tmp_path: Path, argv: list[str], path: str) -> None:
    """`PATH=bin:...` (or an empty entry, the current directory) means a directory under the
    service's cwd, as the shell's exec reads it, not under the controller's."""
    where = tmp_path / "bin" if path.startswith("bin") else tmp_path
    where.mkdir(exist_ok=True)
    tool = where / "only-here"
    tool.write_text("#!/bin/sh\nexit 0\n")
    tool.chmod(0o755)
    pid = spawn(children, tmp_path, argv, PATH=path)
    assert reaped(children, pid).returncode == 0


def test_missing_cwd(children: Children, tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="working directory missing"):
        children.spawn(SLEEP, cwd=tmp_path / "gone", env=service_env({}),
                       log_path=tmp_path / "main.log")


def test_permission_denied(children: Children, tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(SpawnError, match="permission denied"):
        spawn(children, tmp_path, [str(script)])


def test_empty_command(children: Children, tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="empty command"):
        spawn(children, tmp_path, [])


# --- the gate: the command runs only after the parent has enrolled it ------------------------


def test_enroll_runs_before_the_command(children: Children, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    seen: list[tuple[str, ...]] = []

    def enroll(identity: Identity) -> None:
        # the gate waits for us, so this holds however long we look
        seen.append(wait_for(lambda: cmdline(identity.pid), message="cmdline"))
        assert not marker.exists()

    identity = children.spawn(["/bin/sh", "-c", f"touch {marker}; exec sleep 600"],
                              cwd=tmp_path, env=service_env({}), log_path=tmp_path / "main.log",
                              enroll=enroll)
    assert seen[0][:2] == ("/bin/sh", "-c") and seen[0][3] == GATE_ARGV0  # still the gate
    wait_for(marker.exists, message="the command to run once the gate opened")
    wait_for(lambda: cmdline(identity.pid) == ("sleep", "600"), message="exec")


def test_the_gate_execs_an_exec_string_command_itself(children: Children,
                                                     tmp_path: Path) -> None:
    """`cmd: "exec prog args"`: the gate's shell execs `prog args` itself instead of a second
    /bin/sh that would only exec them (one exec per start fewer), and still only once the
    parent has enrolled it."""
    marker = tmp_path / "ran"
    seen: list[tuple[str, ...]] = []

    def enroll(identity: Identity) -> None:
        seen.append(wait_for(lambda: cmdline(identity.pid), message="cmdline"))
        assert not marker.exists()

    identity = children.spawn(["/bin/sh", "-c", f"exec touch {marker}"], cwd=tmp_path,
                              env=service_env({}), log_path=tmp_path / "main.log",
                              enroll=enroll)
    assert seen[0][3] == GATE_ARGV0 and seen[0][5:] == ("touch", str(marker))
    assert reaped(children, identity.pid).returncode == 0
    assert marker.exists()


@pytest.mark.parametrize("script", [
    "exec ./show 'a  b' \"c d\" e=f -x '' --port=80 a'b'\"c\"",
    " exec\t./show  a\tb\x0bc \xa0 --x=1 ",  # unquoted: only spaces and tabs separate words
])
def test_an_exec_string_command_gets_the_words_the_shell_would_give(
        children: Children, tmp_path: Path, script: str) -> None:
    show = tmp_path / "show"
    show.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    "open('argv.json', 'w').write(json.dumps(sys.argv[1:]))\n")
    show.chmod(0o755)
    subprocess.run(["/bin/sh", "-c", script], cwd=tmp_path, check=True, timeout=60)
    by_the_shell = (tmp_path / "argv.json").read_text()
    (tmp_path / "argv.json").unlink()
    identity = children.spawn(["/bin/sh", "-c", script], cwd=tmp_path, env=service_env({}),
                              log_path=tmp_path / "main.log")
    assert reaped(children, identity.pid).returncode == 0
    assert (tmp_path / "argv.json").read_text() == by_the_shell


# Pieces of exec strings the fast path takes: quotes (empty, adjacent, nested), blanks the
# shell does not split on (vertical tab, form feed, no-break space, NEL, LS), characters that
# are literal to dash (`%^@,:+=.-/`) and non-ASCII.
_EXEC_PIECES = ("a", "b", " ", "\t", "  ", "'", '"', "''", '""', "'x y'", '"x y"', "=", "%", "^",
                "@", ",", ":", "+", "-", ".", "/", "\x0b", "\x0c", "\xa0", "\x85", "\u2028",
                "é", "exec", "prog")


def test_the_exec_fast_path_takes_exactly_dash_s_words(tmp_path: Path) -> None:
    """Differential: for every generated `exec prog ...` string the fast path takes, /bin/sh
    itself runs `prog` with the very words `_exec_words` hands to the gate (a reviewer's
    guard on the claim in host/spawn.py; a seeded generator, so a failure replays)."""
    import json
    import random

    show = tmp_path / "prog"
    show.write_text("#!/bin/sh\nfor word; do printf '%s\\0' \"$word\"; done\n")
    show.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{DEFAULT_PATH}"}
    rng = random.Random(13)
    taken = 0
    for _ in range(400):
        tail = "".join(rng.choice(_EXEC_PIECES) for _ in range(rng.randint(0, 7)))
        script = f"{rng.choice(['', ' ', chr(9)])}exec prog{rng.choice([' ', chr(9)])}{tail}"
        words = _exec_words(["/bin/sh", "-c", script])
        if words is None or words[0] != "prog":
            continue
        taken += 1
        done = subprocess.run(["/bin/sh", "-c", script], env=env, cwd=tmp_path,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, (script, done.stderr)
        by_dash = done.stdout.decode().split("\0")[:-1]
        assert by_dash == words[1:], json.dumps(script)
    assert taken > 100  # the generator does reach the fast path


def test_an_exec_string_command_whose_program_is_missing_is_a_spawn_error(
        children: Children, tmp_path: Path) -> None:
    with pytest.raises(SpawnError, match="command not found: no-such-command-xyz"):
        spawn(children, tmp_path, ["/bin/sh", "-c", "exec no-such-command-xyz --flag"])
    assert children.pids() == frozenset()


@pytest.mark.parametrize("script", [
    "exec", "exec -a name sleep 1", "exec sleep *", "exec ls ~", "exec sleep 1 # note",
    "exec sleep $X", "exec sleep 1; true", "exec A=1 sleep 1", "exec sleep 'unbalanced",
    "exec echo {a,b}", "exec sleep\r1", "exec echo a\\ b", "exec echo [ab]", "exec sleep 1 &",
    "sleep 1", "true && exec sleep 1",
])
def test_an_exec_string_command_the_shell_must_interpret_is_left_to_it(script: str) -> None:
    assert _exec_words(["/bin/sh", "-c", script]) is None


def test_a_glob_in_an_exec_string_command_is_still_expanded(children: Children,
                                                           tmp_path: Path) -> None:
    (tmp_path / "only-file").write_text("")
    identity = spawn(children, tmp_path, ["/bin/sh", "-c", "exec echo only-*"])
    assert reaped(children, identity).returncode == 0
    assert (tmp_path / "logs" / "svc" / "main.log").read_text() == "only-file\n"


def test_a_failed_enrollment_never_runs_the_command(children: Children, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    pids: list[int] = []

    def enroll(identity: Identity) -> None:
        pids.append(identity.pid)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        children.spawn(["/bin/sh", "-c", f"touch {marker}"], cwd=tmp_path, env=service_env({}),
                       log_path=tmp_path / "main.log", enroll=enroll)
    assert reaped(children, pids[0]).returncode == 125
    assert not marker.exists()


def test_a_parent_killed_before_opening_the_gate_leaves_nothing_running(
        tmp_path: Path) -> None:
    """The controller's SIGKILL between spawn and enrollment, for real: a parent process
    spawns through the gate and is killed inside `enroll`. The child must exit unrun."""
    marker, pidfile = tmp_path / "ran", tmp_path / "child.pid"
    code = (
        "import os, signal, sys\n"
        "from reconciler.environment import minimal_env\n"
        "from reconciler.host.spawn import Children\n"
        "def enroll(identity):\n"
        f"    open({str(pidfile)!r}, 'w').write(str(identity.pid))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"Children().spawn(['/bin/sh', '-c', 'touch {marker}; exec sleep 600'],\n"
        f"                 cwd={str(tmp_path)!r}, env=minimal_env({{}}, os.environ),\n"
        f"                 log_path={str(tmp_path / 'main.log')!r}, enroll=enroll)\n")
    parent = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                            check=False, timeout=60)
    assert parent.returncode == -signal.SIGKILL
    child = int(pidfile.read_text())
    try:
        wait_for(lambda: identity_of(child) is None, message="the gated child to exit")
        assert not marker.exists()
    finally:
        with contextlib.suppress(OSError):
            os.killpg(child, signal.SIGKILL)


# --- open file limits --------------------------------------------------------------------------


def test_children_get_the_fd_limit_the_controller_was_started_with(tmp_path: Path) -> None:
    """The controller raises its own soft limit (it holds fds per process); a service
    starts with the soft limit the controller was given, as if started by hand."""
    code = (
        "import os, resource, sys\n"
        "soft, hard = 256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))\n"
        "from reconciler.host.limits import raise_fd_limit\n"
        "from reconciler.environment import minimal_env\n"
        "from reconciler.host.spawn import Children\n"
        "raise_fd_limit()\n"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0] > soft, flush=True)\n"
        f"Children().spawn(['/bin/sh', '-c', 'ulimit -S -n'], cwd={str(tmp_path)!r},\n"
        "                 env=minimal_env({}, os.environ),\n"
        f"                 log_path={str(tmp_path / 'main.log')!r})\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                          capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout == "True\n"
    wait_for(lambda: (tmp_path / "main.log").read_text() == "256\n", message="the child's limit")


def test_running_out_of_file_descriptors_is_a_spawn_error(children: Children,
                                                          tmp_path: Path) -> None:
    """EMFILE must fail that start (retried with backoff), not the whole pass."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hog: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        with contextlib.suppress(OSError):
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        os.close(hog.pop())  # room for the log file, none for the gate's pipe
        with pytest.raises(SpawnError, match="spawn gate"):
            spawn(children, tmp_path, SLEEP)
    finally:
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert children.pids() == frozenset()
