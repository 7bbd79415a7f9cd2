"""Crash sweeps with a memory (host/markers.py): a sweep reads only the environments of
processes it has not seen before and of candidates, and still finds what changed since."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.host import procfs
from reconciler.host.identity import identity_of
from reconciler.host.markers import HostMarkers
from reconciler.host.members import job_processes
from reconciler.host.spawn import JOB_ID_VAR
from reconciler.identity import Identity
from tests.helpers import cmdline, service_env, wait_for

# A job's main process: it forks C at once; C, told to on stdin, calls setsid() and forks
# D, and both stay. So C is seen in the job's session first and leaves it later, and D is
# a process the cache has never seen.
LEAVER = """
import os, sys, time
if os.fork() == 0:
    sys.stdin.read(1)
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1] + ".d", "w").write(str(os.getpid()))
    else:
        open(sys.argv[1] + ".c", "w").write(str(os.getpid()))
time.sleep(600)
"""
# Carries the job id; told to on stdin, it execs with an empty environment.
EXEC_CLEAN = """
import os, sys
sys.stdin.read(1)
os.execve("/bin/sleep", ["/bin/sleep", "600"], {})
"""


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test started itself (their children carry the test's state dir and
    are swept by its fixture)."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()


def start(started: list[subprocess.Popen[bytes]], state_dir: Path, argv: list[str],
          job_id: str | None) -> subprocess.Popen[bytes]:
    extra = {"RECONCILER_STATE_DIR": str(state_dir)}
    if job_id is not None:
        extra[JOB_ID_VAR] = job_id
    proc = subprocess.Popen(argv, env=service_env(extra), stdin=subprocess.PIPE,
                            start_new_session=True)
    started.append(proc)
    return proc


def ended_leader(started: list[subprocess.Popen[bytes]], state_dir: Path,
                 job_id: str) -> Identity:
    """The identity of a job's main process that has exited (and been reaped)."""
    proc = start(started, state_dir, ["/bin/sleep", "600"], job_id)
    leader = wait_for(lambda: identity_of(proc.pid), message="the main process to run")
    proc.kill()
    proc.wait()
    return leader


def test_a_process_that_leaves_the_session_after_a_sweep_saw_it_is_still_found(
        started: list[subprocess.Popen[bytes]], state_dir: Path, tmp_path: Path) -> None:
    job_id = f"markers-test-{os.getpid()}-leaver"
    markers = HostMarkers()
    out = str(tmp_path / "pid")
    main = start(started, state_dir, [sys.executable, "-c", LEAVER, out], job_id)
    leader = wait_for(lambda: identity_of(main.pid), message="the main process to run")

    def sweep() -> list[int]:
        found = job_processes({job_id: leader}, by_environ=[job_id], markers=markers)
        return [m.pid for m in found.get(job_id, ())]
    [child] = wait_for(sweep, message="the child in the job's session")  # cached: in it
    assert main.stdin is not None
    main.stdin.write(b"x")
    main.stdin.flush()
    wait_for(lambda: Path(out + ".c").exists() and Path(out + ".d").exists(),
             message="the child to leave the session and fork")
    daemon = int(Path(out + ".d").read_text())
    main.kill()
    main.wait()
    found = job_processes({job_id: leader}, by_environ=[job_id], markers=markers)
    assert sorted((m.pid, m.session) for m in found[job_id]) == sorted(
        [(child, child), (daemon, child)])


def test_a_process_started_with_the_job_id_after_a_sweep_is_found(
        started: list[subprocess.Popen[bytes]], state_dir: Path) -> None:
    job_id = f"markers-test-{os.getpid()}-late"
    markers = HostMarkers(relist_span=10**6)  # however busy the host: no listing for that
    leader = ended_leader(started, state_dir, job_id)
    unmarked = start(started, state_dir, ["/bin/sleep", "600"], None)
    wait_for(lambda: identity_of(unmarked.pid), message="the unmarked process to run")
    assert job_processes({job_id: leader}, by_environ=[job_id], markers=markers) == {}
    assert markers.reads > 0 and markers.listed  # it listed and read the host
    late = start(started, state_dir, ["/bin/sleep", "600"], job_id)
    wait_for(lambda: cmdline(late.pid)[:1] == ("/bin/sleep",), message="the late one to exec")
    found = job_processes({job_id: leader}, by_environ=[job_id], markers=markers)
    assert [m.pid for m in found[job_id]] == [late.pid]
    assert not markers.listed  # found among the pids handed out since, /proc not listed


# Carries the job id; told to on stdin, it starts a thread (whose id /proc also resolves).
THREADS = """
import sys, threading, time
def run():
    print(threading.get_native_id(), flush=True)
    time.sleep(600)
sys.stdin.read(1)
threading.Thread(target=run, daemon=True).start()
time.sleep(600)
"""


def test_a_thread_started_after_a_sweep_is_not_taken_for_a_process(
        started: list[subprocess.Popen[bytes]], state_dir: Path) -> None:
    job_id = f"markers-test-{os.getpid()}-thread"
    markers = HostMarkers(relist_span=10**6)
    leader = ended_leader(started, state_dir, job_id)
    member = subprocess.Popen([sys.executable, "-c", THREADS], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, start_new_session=True,
                              env=service_env({JOB_ID_VAR: job_id,
                                               "RECONCILER_STATE_DIR": str(state_dir)}))
    started.append(member)
    first = job_processes({job_id: leader}, by_environ=[job_id], markers=markers)
    assert [m.pid for m in first[job_id]] == [member.pid]
    assert member.stdin is not None and member.stdout is not None
    member.stdin.write(b"x")
    member.stdin.flush()
    thread = int(member.stdout.readline())
    assert thread != member.pid and os.path.exists(f"/proc/{thread}")
    again = job_processes({job_id: leader}, by_environ=[job_id], markers=markers)
    assert not markers.listed  # the thread's id was looked up alone: not a process
    assert [m.pid for m in again[job_id]] == [member.pid]


def test_a_wrapped_pid_counter_or_an_old_listing_makes_a_sweep_list_proc(
        started: list[subprocess.Popen[bytes]], state_dir: Path) -> None:
    """Pids above the last one handed out are new processes only until the counter wraps
    around; and a listing is what forgets ended processes: both list /proc again."""
    counter, now = [10**9], [0.0]
    markers = HostMarkers(relist_every=10.0, clock=lambda: now[0], last_pid=lambda: counter[0])
    leader = ended_leader(started, state_dir, f"markers-test-{os.getpid()}-wrap")
    sweep = lambda: job_processes({"x": leader}, by_environ=["x"], markers=markers)  # noqa: E731
    sweep()
    assert markers.listed
    sweep()
    assert not markers.listed  # nothing handed out, nothing looked up
    counter[0] = 5  # wrapped around
    sweep()
    assert markers.listed
    now[0] = 9.9
    sweep()
    assert not markers.listed
    now[0] = 10.0
    sweep()
    assert markers.listed


def test_a_member_that_execs_with_a_clean_environment_is_no_longer_one(
        started: list[subprocess.Popen[bytes]], state_dir: Path) -> None:
    job_id = f"markers-test-{os.getpid()}-exec"
    markers = HostMarkers()
    leader = ended_leader(started, state_dir, job_id)
    member = start(started, state_dir, [sys.executable, "-c", EXEC_CLEAN], job_id)

    def sweep() -> list[int]:
        found = job_processes({job_id: leader}, by_environ=[job_id], markers=markers)
        return [m.pid for m in found.get(job_id, ())]
    assert wait_for(sweep, message="the member found") == [member.pid]
    assert member.stdin is not None
    member.stdin.write(b"x")
    member.stdin.flush()
    wait_for(lambda: cmdline(member.pid)[:1] == ("/bin/sleep",), message="the exec")
    assert sweep() == []  # the cache said member; the read says no longer
    assert sweep() == []


# Starts with an empty environment (as a process inside execve() reads for a moment);
# told to on stdin, it execs with the job id.
EXEC_MARKED = """read line; exec /usr/bin/env {var}={job_id} RECONCILER_STATE_DIR={state} \
/bin/sleep 600"""


def test_a_process_whose_environment_read_empty_is_read_again_at_the_next_sweep(
        started: list[subprocess.Popen[bytes]], state_dir: Path) -> None:
    """A process caught inside exec() reads an empty environment (one read in ~40 right
    after Popen returns). Taken for "no job id", it was remembered so for the process's
    life: a member that left its session was never found. Here the process really has an
    empty environment first, then execs with the job id before the next sweep."""
    job_id = f"markers-test-{os.getpid()}-empty"
    markers = HostMarkers()
    leader = ended_leader(started, state_dir, job_id)
    script = EXEC_MARKED.format(var=JOB_ID_VAR, job_id=job_id, state=state_dir)
    proc = subprocess.Popen(["/bin/sh", "-c", script], env={}, stdin=subprocess.PIPE,
                            start_new_session=True)
    started.append(proc)
    wait_for(lambda: cmdline(proc.pid)[:1] == ("/bin/sh",), message="the shell to run")
    assert procfs.read_environ_var(proc.pid, JOB_ID_VAR, blank="blank") == "blank"
    assert job_processes({job_id: leader}, by_environ=[job_id], markers=markers) == {}
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    wait_for(lambda: cmdline(proc.pid)[:1] == ("/bin/sleep",), message="the exec")
    found = job_processes({job_id: leader}, by_environ=[job_id], markers=markers)
    assert [m.pid for m in found.get(job_id, ())] == [proc.pid]


def test_a_third_sweep_over_an_unchanged_host_reads_no_environment(
        started: list[subprocess.Popen[bytes]], state_dir: Path) -> None:
    """The cost claim. Other processes start on a shared host at any time, and each new one
    is read once (twice if it read empty: a zombie, a kernel thread, one caught inside exec):
    a sweep never reads more than it and the sweep before saw new, and one after two that
    saw nothing new (retried until the host is quiet for two sweeps) reads nothing."""
    job_id = f"markers-test-{os.getpid()}-cost"
    markers = HostMarkers()
    leader = ended_leader(started, state_dir, job_id)
    job_processes({job_id: leader}, by_environ=[job_id], markers=markers)
    assert markers.reads > 0 and markers.reads <= markers.new
    news = [markers.new]

    def quiet_sweep() -> bool:
        assert job_processes({job_id: leader}, by_environ=[job_id], markers=markers) == {}
        assert markers.reads <= markers.new + news[-1]
        news.append(markers.new)
        return news[-2:] == [0, 0]
    wait_for(quiet_sweep, message="two sweeps over an unchanged host")
    assert markers.reads == 0


def test_the_reconciler_shares_its_markers_with_the_executor_and_forgets_them(
        reconciler: Reconciler, started: list[subprocess.Popen[bytes]],
        state_dir: Path) -> None:
    assert reconciler.executor.markers is reconciler.markers
    leader = ended_leader(started, state_dir, "markers-test-forget")
    job_processes({"x": leader}, by_environ=["x"], markers=reconciler.markers)
    assert len(reconciler.markers) > 0
    reconciler.forget_caches()
    assert len(reconciler.markers) == 0


def test_protected_pids_are_never_candidates(
        started: list[subprocess.Popen[bytes]]) -> None:
    """Whatever session is swept, our own process (and pid 1, and our ancestors) is never
    listed; a child of ours in that session is."""
    child = subprocess.Popen(["/bin/sleep", "600"])
    started.append(child)
    me = os.getpid()
    pids = {pid for pid, _, _ in HostMarkers().candidates({os.getsid(0)}, (), (), {me})}
    assert child.pid in pids
    assert me not in pids and 1 not in pids


def test_a_recycled_pid_learnt_between_two_listings_is_still_known_after_the_second(
        started: list[subprocess.Popen[bytes]], state_dir: Path) -> None:
    """A listing saw another process at the pid (its inode); that one ended and the pid
    was handed out again (a wrapped counter, so it is above the last pid seen): the sweep
    after learns the new process by its lookup. The next listing no longer has the old
    inode, and must not forget the new process with it: it would never be a member again."""
    member = start(started, state_dir, ["/bin/sleep", "600"], None)
    wait_for(lambda: identity_of(member.pid), message="the process to run")
    earlier = 1 << 62  # the inode of the process that held the pid when /proc was listed
    listings = [0]

    def lister() -> dict[int, str]:
        listing = procfs.listing_by_inode()
        listings[0] += 1
        if listings[0] == 1:  # the first listing: before the pid was recycled
            listing = {i: n for i, n in listing.items() if n != str(member.pid)}
            listing[earlier] = str(member.pid)
        return listing
    counter, now = [member.pid - 1], [0.0]
    markers = HostMarkers(relist_span=10**6, clock=lambda: now[0], last_pid=lambda: counter[0],
                          lister=lister)

    def members() -> list[int]:
        return [pid for pid, _, _ in markers.candidates({member.pid}, (), (), ())]
    assert members() == [member.pid] and markers.listed
    counter[0] = member.pid  # handed out again since: looked up alone
    assert members() == [member.pid] and not markers.listed
    now[0] = 60.0
    assert members() == [member.pid] and markers.listed and listings[0] == 2


def test_a_process_not_in_proc_yet_when_it_was_listed_is_learnt_at_the_next_sweep(
        started: list[subprocess.Popen[bytes]], state_dir: Path) -> None:
    """/proc shows a process a moment after its pid is handed out (its fork is still under
    way). A listing taken in that moment misses it, and the sweeps after it look up only the
    pids handed out since: it must be looked for again, as a lookup that misses it is,
    not forgotten until the next listing (a stop would finish with it still running)."""
    member = start(started, state_dir, ["/bin/sleep", "600"], None)
    wait_for(lambda: identity_of(member.pid), message="the process to run")
    listings = [0]

    def lister() -> dict[int, str]:
        listing = procfs.listing_by_inode()
        listings[0] += 1
        if listings[0] == 1:  # its fork not done yet when /proc was read
            listing = {i: n for i, n in listing.items() if n != str(member.pid)}
        return listing
    counter, now = [member.pid + 3], [0.0]
    markers = HostMarkers(relist_span=10**6, clock=lambda: now[0], last_pid=lambda: counter[0],
                          lister=lister)

    def members() -> list[int]:
        return [pid for pid, _, _ in markers.candidates({member.pid}, (), (), ())]
    assert members() == [] and markers.listed
    now[0] = 0.5
    assert members() == [member.pid] and not markers.listed
