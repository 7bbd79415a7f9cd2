"""Resource samples and anomaly rules (DESIGN §8.4) on real processes: each rule has a
process that breaks it and a steady one that must not.

The rules run with short windows here (seconds instead of minutes); the sampling interval
between two looks is the measurement's own, not a synchronization: every wait ends on a
condition or a deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler import cli
from reconciler.anomalies import Rules, evaluate, quiet_now
from reconciler.host import procfs
from reconciler.host.identity import identity_of
from reconciler.host.sampling import (
    FD_BUDGET,
    MAX_OPEN_STATS,
    MIN_OPEN_STATS,
    SampleClock,
    Sampler,
    open_stats_allowed,
)
from reconciler.resources import RECOVER_ROUNDS, ROUNDS_KEPT, ResourceMonitor
from reconciler.settings import Settings
from reconciler.state.reader import open_reader
from reconciler.state.records import JobRecord, Sample
from tests.conftest import Foreign
from tests.helpers import wait_for
from tests.test_daemon import DaemonRunner, events, jobs, sleeper, write_spec

PY = sys.executable
FAST = Rules(growth_window=2.0, dstate_seconds=1.0)
STEP = 0.1  # seconds between two samples in these tests


def job_of(proc: subprocess.Popen[bytes], name: str = "svc") -> JobRecord:
    return job_at(proc.pid, name)


def job_at(pid: int, name: str) -> JobRecord:
    """A running job whose main process is `pid` (one the test did not start itself)."""
    ident = identity_of(pid)
    assert ident is not None
    return JobRecord(id=f"{name}-1", service=name, action="main", generation="g",
                     phase="running", pid=pid, boot_id=ident.boot_id,
                     starttime_ticks=ident.starttime_ticks, started_at=time.time())


def assert_counted_with_its_leader(sampler: Sampler, other: JobRecord,
                                   daemon: JobRecord) -> None:
    """The daemon's job counts its session's leader and itself: at first sight, and in the
    next round, which walks the session itself."""
    for _ in range(2):
        by_job = {s.job_id: s for s in sampler.sample([other, daemon])}
        assert by_job[daemon.id].members == 2, "the session's leader and the daemon"


def start(foreign: Foreign, code: str) -> subprocess.Popen[bytes]:
    """A job's main process: a session of its own, as the reconciler starts every job."""
    return foreign.start([PY, "-c", textwrap.dedent(code)])


def watch_until(job: JobRecord, rule: str, timeout: float = 20.0) -> tuple[str, list[Sample]]:
    sampler, history = Sampler(), []

    def broken() -> str | None:
        history.extend(sampler.sample([job]))
        return evaluate(history, FAST).get(rule)

    why = wait_for(broken, timeout=timeout, interval=STEP, message=f"rule {rule}")
    return why, history


def test_members_threads_and_memory_are_summed(foreign: Foreign, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = foreign.start([PY, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(ready)!r}, "w").close()
        time.sleep(60)
    """)])
    wait_for(ready.exists, message="the job's child started")
    (sample,) = wait_for(lambda: [s for s in Sampler().sample([job_of(proc)])
                                  if s.members == 2], message="two members")
    alone = Sampler().sample([job_of(foreign.start(["sleep", "60"]),
                                     "other")])
    assert sample.threads >= 2 and sample.rss_bytes > alone[0].rss_bytes
    assert sample.open_fds is not None and sample.open_fds >= 6  # 3 each at least
    assert sample.fd_limit and sample.state in ("S", "R") and sample.zombies == 0


def test_a_main_process_in_a_session_seen_before_is_sampled_with_its_members(
        foreign: Foreign, tmp_path: Path) -> None:
    """The walk skips processes it once found outside every job's session; a job whose main
    process sits in such a session (a daemon adopted from its pidfile, whose session leader
    is its parent) still gets all of that session's processes counted."""
    pidfile = tmp_path / "child.pid"
    leader = start(foreign, f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)
    child_pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(),
                             message="the child started"))
    other = job_of(foreign.start(["sleep", "60"]), "other")
    sampler = Sampler()
    assert [s.job_id for s in sampler.sample([other])] == [other.id]  # the walk saw both
    assert_counted_with_its_leader(sampler, other, job_at(child_pid, "d"))
    assert leader.poll() is None


def test_a_process_that_made_its_own_session_after_the_walk_saw_it_is_a_member(
        foreign: Foreign, tmp_path: Path) -> None:
    """The walk skips a process it found outside the jobs' sessions, but setsid() moves a
    process into a new session named by its own pid: a daemon's middle process seen before
    its setsid(), then leading the session of the job's main process, is still counted."""
    go, leader_file, daemon_file = tmp_path / "go", tmp_path / "leader", tmp_path / "daemon"
    start(foreign, f"""
        import os, time
        def publish(path, pid):
            open(path + ".tmp", "w").write(str(pid))
            os.rename(path + ".tmp", path)
        leader = os.fork()
        if leader == 0:
            while not os.path.exists({str(go)!r}):
                time.sleep(0.01)
            os.setsid()
            daemon = os.fork()
            if daemon == 0:
                time.sleep(60)
                os._exit(0)
            publish({str(daemon_file)!r}, daemon)
            time.sleep(60)
            os._exit(0)
        publish({str(leader_file)!r}, leader)
        time.sleep(60)
    """)
    leader = int(wait_for(lambda: leader_file.exists() and leader_file.read_text(),
                          message="the middle process started"))
    other = job_of(foreign.start(["sleep", "60"]), "other")
    sampler = Sampler()
    assert [s.job_id for s in sampler.sample([other])] == [other.id]  # the walk saw it
    go.touch()
    daemon_pid = int(wait_for(lambda: daemon_file.exists() and daemon_file.read_text(),
                              message="the daemon started in the new session"))
    usage = procfs.read_stat_usage(daemon_pid)
    assert usage is not None and usage.session == leader
    assert_counted_with_its_leader(sampler, other, job_at(daemon_pid, "d"))


def _stat_fds_on(pid: int) -> int:
    """Our fds open on /proc/<pid>/stat."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}") == f"/proc/{pid}/stat"
    return count


def test_a_members_stat_fd_is_kept_between_rounds_and_closed_when_it_ends(
        foreign: Foreign) -> None:
    proc = foreign.start(["sleep", "60"])
    job, sampler = job_of(proc), Sampler()
    first = sampler.sample([job])
    assert _stat_fds_on(proc.pid) == 1  # kept for the next round's pread
    second = sampler.sample([job])
    assert _stat_fds_on(proc.pid) == 1 and second[0].cpu_seconds >= first[0].cpu_seconds
    proc.kill()
    proc.wait()
    assert sampler.sample([job]) == []
    assert _stat_fds_on(proc.pid) == 0
    other = foreign.start(["sleep", "60"])
    sampler.sample([job_of(other)])
    sampler.close()
    assert _stat_fds_on(other.pid) == 0


def test_the_stat_fds_kept_are_what_the_jobs_pidfds_leave_of_the_fd_budget() -> None:
    """Every start copies the daemon's fd table: the jobs' pidfds come first, the sampler
    keeps what they leave of FD_BUDGET, between MIN_OPEN_STATS and MAX_OPEN_STATS."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]

    def capped(n: int) -> int:
        return min(n, nofile // 4)

    assert open_stats_allowed(200) == capped(MAX_OPEN_STATS)
    assert open_stats_allowed(1000) == capped(min(MAX_OPEN_STATS, FD_BUDGET - 1000))
    assert open_stats_allowed(1500) == capped(FD_BUDGET - 1500)
    assert open_stats_allowed(2000) == capped(MIN_OPEN_STATS)
    assert open_stats_allowed(50_000) == capped(MIN_OPEN_STATS)


def test_the_kept_stat_fds_are_closed_when_no_job_runs_any_more(foreign: Foreign) -> None:
    """A round without a running job still lets go of the fds kept for the last one's
    members: they must not stay open until some job runs again."""
    proc = foreign.start(["sleep", "60"])
    job, sampler = job_of(proc), Sampler()
    assert len(sampler.sample([job])) == 1
    assert _stat_fds_on(proc.pid) == 1
    assert sampler.sample([dataclasses.replace(job, phase="stopped", pid=None)]) == []
    assert _stat_fds_on(proc.pid) == 0


def test_a_recycled_pid_or_a_gone_process_is_not_sampled(foreign: Foreign) -> None:
    proc = foreign.start(["sleep", "60"])
    job = job_of(proc)
    stranger = JobRecord(id="x-1", service="x", action="main", generation="g",
                         phase="running", pid=proc.pid, boot_id=job.boot_id,
                         starttime_ticks=(job.starttime_ticks or 0) + 1)
    assert [s.job_id for s in Sampler().sample([job, stranger])] == [job.id]
    proc.kill()
    proc.wait()
    assert Sampler().sample([job]) == []


def test_sample_times_never_go_backwards_when_the_wall_clock_does() -> None:
    wall, mono = [1000.0], [5.0]
    clock = SampleClock(start_after=2000.0, wall=lambda: wall[0], monotonic=lambda: mono[0])
    first = clock.now()
    assert first == 2000.0  # after what an earlier daemon stored
    wall[0], mono[0] = 10.0, 6.0  # the wall clock stepped back an hour, one second passed
    assert clock.now() == first + 1.0


# --- rules that trigger ---------------------------------------------------------------------


def test_fds_near_the_limit(foreign: Foreign) -> None:
    proc = start(foreign, """
        import os, resource, time
        resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))
        held = [os.open("/dev/null", os.O_RDONLY) for _ in range(85)]
        time.sleep(60)
    """)
    why, _ = watch_until(job_of(proc), "fds")
    assert "of 100 file descriptors" in why


def test_a_raised_fd_limit_is_read_again_before_it_looks_like_running_out(
        foreign: Foreign, tmp_path: Path) -> None:
    """The sampler keeps a process's fd limit for minutes, but not once the process holds
    half of it: a process that raised its own limit (Go does at start) is not an anomaly."""
    go, done = tmp_path / "go", tmp_path / "done"
    proc = start(foreign, f"""
        import os, resource, time
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        open({str(tmp_path / "ready")!r}, "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
        held = [os.open("/dev/null", os.O_RDONLY) for _ in range(55)]
        open({str(done)!r}, "w").close()
        time.sleep(60)
    """)
    wait_for((tmp_path / "ready").exists, message="the limit lowered")
    job, sampler = job_of(proc), Sampler()
    (before,) = sampler.sample([job])
    assert before.fd_limit == 64
    go.touch()
    wait_for(done.exists, message="the limit raised and 55 fds open")
    (after,) = sampler.sample([job])
    assert after.max_fds is not None and after.max_fds >= 55
    assert after.fd_limit is not None and after.fd_limit > 64
    assert "fds" not in evaluate([after])


def test_steady_rss_growth(foreign: Foreign) -> None:
    proc = start(foreign, """
        import time
        hoard = []
        for _ in range(400):
            hoard.append(bytearray(2 * 1024 * 1024))
            time.sleep(0.02)
        time.sleep(60)
    """)
    why, _ = watch_until(job_of(proc), "rss-growth")
    assert "RSS grew steadily" in why


def test_threads_growing(foreign: Foreign) -> None:
    proc = start(foreign, """
        import threading, time
        for _ in range(300):
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
            time.sleep(0.02)
        time.sleep(60)
    """)
    why, _ = watch_until(job_of(proc), "threads-growth")
    assert "threads grew steadily" in why


def test_zombies_piling_up(foreign: Foreign) -> None:
    proc = start(foreign, """
        import os, time
        for _ in range(12):
            if os.fork() == 0:
                os._exit(0)
        time.sleep(60)
    """)
    why, _ = watch_until(job_of(proc), "zombies")
    assert why.startswith("12 zombie")


def test_a_high_oom_score(foreign: Foreign) -> None:
    proc = foreign.start(["sh", "-c", "echo 1000 > /proc/self/oom_score_adj; exec sleep 60"])
    wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "sleep",
             message="sleep exec'ed")
    why, _ = watch_until(job_of(proc), "oom-score")
    assert why.startswith("oom_score ")


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to make a vfork")
def test_a_member_stuck_in_d_state(foreign: Foreign, tmp_path: Path) -> None:
    """A vfork()ing parent waits uninterruptibly (state D) until its child exits: the one
    unprivileged way to hold a process in D state on purpose."""
    source = tmp_path / "vfork.c"
    source.write_text("#include <unistd.h>\nint main(void) { if (vfork() == 0) { sleep(60);"
                      " _exit(0); } return 0; }\n")
    subprocess.run(["cc", "-o", str(tmp_path / "vfork"), str(source)], check=True)
    proc = foreign.start([str(tmp_path / "vfork")])
    why, _ = watch_until(job_of(proc), "d-state")
    assert "uninterruptible sleep (D)" in why


# --- and a steady process that must not ---------------------------------------------------


def test_a_steady_process_breaks_no_rule(foreign: Foreign) -> None:
    proc = start(foreign, """
        import os, time
        try:  # as low as it goes, so the oom rule is about this process, not its parent
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("0")
        except OSError:
            pass
        buffers = [bytearray(1024 * 1024) for _ in range(20)]
        time.sleep(60)
    """)
    job, sampler, history = job_of(proc), Sampler(), []
    deadline = time.monotonic() + FAST.growth_window * 1.5
    while time.monotonic() < deadline:  # a full growth window of samples
        history.extend(sampler.sample([job]))
        assert not evaluate(history, FAST) or _only_inherited_oom(history), \
            evaluate(history, FAST)
        time.sleep(STEP)
    assert len(history) >= 10


def _only_inherited_oom(history: list[Sample]) -> bool:
    """Unprivileged, the test cannot lower an oom_score_adj it inherited."""
    found = evaluate(history, FAST)
    return set(found) == {"oom-score"} and os.geteuid() != 0


# --- through the daemon ---------------------------------------------------------------------


ZOMBIE_MAKER = ("import os, time\n"
                "for _ in range(12):\n"
                "    if os.fork() == 0:\n"
                "        os._exit(0)\n"
                "time.sleep(3600)\n")


def z_samples(settings: Settings) -> list[Sample]:
    with open_reader(settings) as store:
        return store.samples(service="z")


def test_the_daemon_records_samples_and_flags_an_anomaly_until_it_ends(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_spec(settings, "z.yaml", f"""\
    name: z
    actions:
      - {{name: main, process: true, cmd: {json.dumps([PY, "-c", ZOMBIE_MAKER])}}}
    """)
    sleeper(settings, "keep")  # so removing z.yaml does not empty the specs dir
    daemon = DaemonRunner(settings, tmp_path / "daemon.log")
    try:
        daemon.start("--sample-interval", "100ms")
        row = wait_for(lambda: (r := jobs(settings, capsys).get("z.main")) and r["anomalies"]
                       and r, message="the zombies flagged in status")
        assert [a["rule"] for a in row["anomalies"]] == ["zombies"]
        capsys.readouterr()
        assert cli.main(["status", "--state-dir", str(settings.state_dir),
                         "--specs", str(settings.specs_dir)]) == 0
        assert "zombies" in capsys.readouterr().out
        onset = [e for e in events(settings, capsys) if e["kind"] == "anomaly"]
        assert onset and onset[0]["reason"].startswith("zombies: 12 zombie")
        samples = wait_for(lambda: s if len(s := z_samples(settings)) >= 2 else None,
                           message="two samples of z")  # status no longer waits 100 ms
        assert all(s.zombies == 12 for s in samples[-2:])
        assert [s.at for s in samples] == sorted(s.at for s in samples)
        (settings.specs_dir / "z.yaml").unlink()
        wait_for(lambda: any(e["kind"] == "anomaly-recovered"
                             for e in events(settings, capsys)), message="recovered")
    finally:
        daemon.cleanup()


GROWER = ("import time\n"
          "hoard = []\n"
          "while True:\n"
          "    hoard.append(bytearray(8 * 1024 * 1024))\n"
          "    time.sleep(0.05)\n")


def test_a_job_over_its_max_rss_is_restarted_with_reason_memory_limit(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DESIGN §8.4: past `max_rss` the job is stopped and restarted (its backoff applies),
    and the events say `memory-limit`; its restart count goes up like a crash's."""
    write_spec(settings, "grow.yaml", f"""\
    name: grow
    actions:
      - name: main
        process: true
        cmd: {json.dumps([PY, "-c", GROWER])}
        limits: {{max_rss: 100MiB}}
        backoff: {{initial: 100ms}}
    """)
    daemon = DaemonRunner(settings, tmp_path / "daemon.log")
    try:
        daemon.start("--sample-interval", "200ms")
        restarted = wait_for(lambda: (r := jobs(settings, capsys).get("grow.main"))
                             and r["restart_count"] >= 1 and r, timeout=30,
                             message="the grower restarted")
        assert restarted["failure_class"] == "memory-limit"
        kills = [e for e in events(settings, capsys)
                 if e["service"] == "grow" and "memory-limit" in e["reason"]]
        assert kills and "over max_rss 100.0 MiB" in kills[0]["reason"]
        with open_reader(settings) as store:
            over = [s for s in store.samples(service="grow") if s.rss_bytes > 100 * 2**20]
        assert over  # the sample that saw it
    finally:
        daemon.cleanup()


def test_a_restarted_daemon_samples_after_the_newest_stored_sample(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The wall clock stepped back between two daemons (or the previous one ran ahead): the
    new daemon's samples still come after the stored ones, as docs/resources.md promises."""
    from reconciler.controller import Reconciler, prepare_state_dir

    sleeper(settings, "s")
    ahead = time.time() + 7200.0
    prepare_state_dir(settings)
    with Reconciler(settings) as rec:
        rec.store.append_samples([Sample(
            at=ahead, job_id="old", service="s", action="main", members=1, rss_bytes=1,
            cpu_seconds=0.0, threads=1, open_fds=1, fd_limit=1024, oom_score=0, state="S",
            wchan="")])
    daemon = DaemonRunner(settings, tmp_path / "daemon.log")
    try:
        daemon.start("--sample-interval", "100ms")
        new = wait_for(lambda: [s for s in _stored(settings) if s.job_id != "old"],
                       message="a sample of the new daemon")
        assert all(s.at > ahead for s in new), (new[0].at, ahead)
    finally:
        daemon.cleanup()


def _stored(settings: Settings) -> list[Sample]:
    with open_reader(settings) as store:
        return store.samples(service="s")


# --- the monitor's judgement over rounds ---------------------------------------------------


class ScriptedSampler(Sampler):
    """Rounds of given zombie counts for one job: the monitor's logic without /proc."""

    def __init__(self, zombies: list[int | None]) -> None:
        super().__init__()
        self.zombies = zombies
        self.round = 0

    def sample(self, jobs: Iterable[JobRecord]) -> list[Sample]:
        count = self.zombies[self.round]
        self.round += 1
        if count is None:  # this round could not read the job
            return []
        return [Sample(at=float(self.round), job_id="z-1", service="z", action="main",
                       members=1 + count, rss_bytes=1, cpu_seconds=0.0, threads=1,
                       open_fds=3, fd_limit=1024, oom_score=0, state="S", wchan="",
                       zombies=count)]


def test_an_anomaly_hovering_at_its_threshold_does_not_flap() -> None:
    job = JobRecord(id="z-1", service="z", action="main", generation="g", phase="running",
                    pid=1234, boot_id="b", starttime_ticks=1)
    scripted = ScriptedSampler([10, 9, 10, None, 9, 10, 0, 0, 0, 0])
    monitor = ResourceMonitor(lambda: [job], dict, lambda: None, sampler=scripted)
    in_force = [bool(monitor.take_round().anomalies) for _ in scripted.zombies]
    # held through a dip, a round that could not read it and another dip; ends only after
    # RECOVER_ROUNDS rounds in a row without it
    assert in_force == [True] * 6 + [True] * (RECOVER_ROUNDS - 1) + [False] * (
        len(scripted.zombies) - 6 - (RECOVER_ROUNDS - 1))


def test_the_rounds_waiting_for_a_hung_loop_are_bounded() -> None:
    job = JobRecord(id="z-1", service="z", action="main", generation="g", phase="running",
                    pid=1234, boot_id="b", starttime_ticks=1)
    monitor = ResourceMonitor(lambda: [job], dict, lambda: None,
                              sampler=ScriptedSampler([10] * 40))
    for _ in range(40):
        monitor.rounds.append(monitor.take_round())
    assert len(monitor.rounds) == ROUNDS_KEPT


def test_the_fd_rule_looks_at_one_process_not_the_sum() -> None:
    """The fd limit is per process: nine workers of 100 fds under 1024 are fine."""
    def sample(open_fds: int, max_fds: int) -> Sample:
        return Sample(at=1.0, job_id="w-1", service="w", action="main", members=9,
                      rss_bytes=1, cpu_seconds=0.0, threads=9, open_fds=open_fds,
                      fd_limit=1024, oom_score=0, state="S", wchan="", max_fds=max_fds)
    assert "fds" not in evaluate([sample(900, 100)])
    assert "fds" in evaluate([sample(900, 900)])


class GrowingSampler(Sampler):
    """One job whose RSS grows by 1 MiB a second, a round a second: the monitor's thinned
    series must still show the leak."""

    def __init__(self) -> None:
        super().__init__()
        self.round = 0

    def sample(self, jobs: Iterable[JobRecord]) -> list[Sample]:
        self.round += 1
        return [Sample(at=float(self.round), job_id="g-1", service="g", action="main",
                       members=1, rss_bytes=(10 + self.round) * 2**20,
                       cpu_seconds=float(self.round), threads=1, open_fds=3, fd_limit=1024,
                       oom_score=0, state="S", wchan="")]


def test_the_monitor_finds_a_leak_through_its_thinned_series() -> None:
    job = JobRecord(id="g-1", service="g", action="main", generation="g", phase="running",
                    pid=1234, boot_id="b", starttime_ticks=1)
    monitor = ResourceMonitor(lambda: [job], dict, lambda: None, interval=1.0,
                              rules=Rules(growth_window=20.0), sampler=GrowingSampler())
    found = [monitor.take_round().anomalies.get("g-1", {}) for _ in range(40)]
    assert "rss-growth" in found[-1]
    assert len(monitor._trend["g-1"]) <= 25  # thinned: not one point per round


class StuckSampler(Sampler):
    """One job with a member in D state in every round, a round every `spacing` seconds."""

    def __init__(self, spacing: float) -> None:
        super().__init__()
        self.spacing = spacing
        self.round = 0

    def sample(self, jobs: Iterable[JobRecord]) -> list[Sample]:
        self.round += 1
        return [Sample(at=self.round * self.spacing, job_id="d-1", service="d", action="main",
                       members=1, rss_bytes=1, cpu_seconds=1.0, threads=1, open_fds=3,
                       fd_limit=1024, oom_score=0, state="D", wchan="io_schedule", dstate=1)]


def test_the_d_state_rule_fires_at_a_sampling_interval_longer_than_the_rule() -> None:
    """At a 60 s interval the rule's 30 s are two samples apart: both must be kept."""
    job = JobRecord(id="d-1", service="d", action="main", generation="g", phase="running",
                    pid=1234, boot_id="b", starttime_ticks=1)
    monitor = ResourceMonitor(lambda: [job], dict, lambda: None, interval=60.0,
                              sampler=StuckSampler(60.0))
    found = [monitor.take_round().anomalies.get("d-1", {}) for _ in range(3)]
    assert "d-state" not in found[0] and "d-state" in found[1]


_counts = st.integers(min_value=0, max_value=5000)
_maybe = st.none() | _counts
_samples = st.builds(
    Sample, at=st.floats(min_value=0, max_value=1e6), job_id=st.just("j-1"),
    service=st.just("j"), action=st.just("main"), members=st.integers(1, 50),
    rss_bytes=st.integers(0, 2**40), cpu_seconds=st.floats(min_value=0, max_value=1e6),
    threads=_counts, open_fds=_maybe, fd_limit=_maybe, oom_score=st.none() | st.integers(0, 2000),
    state=st.sampled_from("RSDZT"), wchan=st.just(""), dstate=st.integers(0, 3),
    zombies=st.integers(0, 30), max_fds=_maybe)


@given(history=st.lists(_samples, max_size=5), last=_samples)
def test_a_quiet_sample_breaks_no_rule_about_now_whatever_came_before(
        history: list[Sample], last: Sample) -> None:
    """The monitor skips `evaluate` for samples `quiet_now` calls quiet."""
    for rules in (Rules(), FAST):
        if quiet_now(last, rules):
            assert evaluate([*history, last], rules, growth=False) == {}
