"""`reconcile top` (DESIGN §8.4): the newest sample of every running job, sorted by CPU or
RSS. Printed once when stdout is not a terminal; driven in a real terminal (a private tmux
server: send-keys, capture-pane) as a person would, where `m` re-sorts and `q` quits with the
terminal restored."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from reconciler.settings import Settings
from reconciler.state.records import Anomaly, Sample
from reconciler.state.store import Store
from tests.helpers import wait_for
from tests.test_reconcile import out_of, run_cli, write_sleeper
from tests.test_state_dir import snapshot

MiB = 2**20
ROOT = Path(__file__).resolve().parent.parent


def sampled_jobs(settings: Settings) -> dict[str, str]:
    """Two real running jobs, `hot` (80 % CPU, 10 MiB) and `fat` (10 % CPU, 200 MiB, an fds
    anomaly), each with two synthetic samples; and samples of a job that no longer runs.
    Returns the job ids by service."""
    write_sleeper(settings.specs_dir, "hot")
    write_sleeper(settings.specs_dir, "fat")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    now = time.time()
    with Store.open(settings.db_path) as store:
        ids = {job.service: job.id for job in store.jobs()}
        samples = []
        for service, cpu, rss in (("hot", 4.0, 10 * MiB), ("fat", 0.5, 200 * MiB),
                                  ("gone", 5.0, 900 * MiB)):
            job_id = ids.get(service, "gone-main-0")
            samples += [Sample(at=at, job_id=job_id, service=service, action="main", members=1,
                               rss_bytes=rss, cpu_seconds=used, threads=2, open_fds=820,
                               fd_limit=1024, oom_score=0, state="S", wchan="")
                        for at, used in ((now - 5, 0.0), (now, cpu))]
        store.append_samples(samples)
        store.set_anomalies([Anomaly(ids["fat"], "fat", "main", "fds", now, "820 of 1024")])
    return ids


def rows_of(out: str) -> list[str]:
    """The SERVICE.ACTION of each table row, top to bottom."""
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].endswith(".main")]


def test_top_without_a_terminal_prints_one_table(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    ids = sampled_jobs(settings)
    code, out, err = out_of(capsys, settings, "top")
    assert (code, err) == (0, "")
    assert "\x1b" not in out  # no escape codes into a pipe or a file
    header, _, columns, *rows = out.splitlines()
    assert "2 jobs · 1 with anomalies · sorted by cpu" in header
    assert columns.split() == ["SERVICE.ACTION", "PID", "CPU%", "RSS", "THREADS", "FDS",
                               "STATE", "ANOMALIES"]
    hot, fat = rows  # the job that no longer runs is not shown
    assert hot.split()[:4] == ["hot.main", hot.split()[1], "80.0", "10.0MiB"]
    assert fat.split()[2:] == ["10.0", "200.0MiB", "2", "820", "(80%)", "S", "fds"]
    with Store.open_readonly(settings.db_path) as store:
        pids = {job.id: str(job.pid) for job in store.jobs()}
    assert hot.split()[1] == pids[ids["hot"]]
    code, out, _ = out_of(capsys, settings, "top", "--sort", "rss")
    assert code == 0 and "sorted by rss" in out
    assert rows_of(out) == ["fat.main", "hot.main"]


def test_top_with_no_samples_says_so(settings: Settings,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = out_of(capsys, settings, "top")  # an absent state dir: nothing created
    assert code == 0 and "0 jobs" in out and "no samples of running jobs yet" in out
    assert not settings.state_dir.exists()


def test_top_refuses_a_busy_loop(settings: Settings,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = out_of(capsys, settings, "top", "--interval", "1ms")
    assert code == 2 and "--interval: at least" in err


def top_command(settings: Settings, status_file: str, *flags: str) -> str:
    """`top` as the pane's command, its exit status written to `status_file` by the pane's
    shell: tmux 3.3 reports no `#{pane_dead_status}` for a 0, and may say nothing for seconds
    when it reaps the process late."""
    argv = [sys.executable, "-m", "reconciler.cli", "top", *flags, "--specs",
            str(settings.specs_dir), "--state-dir", str(settings.state_dir)]
    return (" ".join(shlex.quote(arg) for arg in argv)
            + f"; echo $? > {shlex.quote(status_file)}")


class Tmux:
    """A private tmux server (its own socket, in a short private dir: a socket path is at
    most 107 bytes, and tmux leaves the file behind), killed by `close` whatever happened."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="reconciler-tmux-")
        self.socket = os.path.join(self.dir, "socket")
        self.status_file = os.path.join(self.dir, "status")

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, "-f", "/dev/null", *args],
                              check=True, capture_output=True, text=True, timeout=10).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def exit_status(self) -> str | None:
        """`top`'s exit status, once it has exited (see `top_command`)."""
        try:
            return Path(self.status_file).read_text().strip() or None
        except FileNotFoundError:
            return None

    def pane(self, fmt: str) -> str:
        return self("display-message", "-p", "-t", "top", fmt).strip()

    def close(self) -> None:
        try:
            subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                           timeout=10, check=False)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.skipif(shutil.which("tmux") is None,
                    reason="tmux is not installed: `top` cannot be driven in a real terminal")
def test_top_in_a_real_terminal_resorts_on_m_and_quits_on_q(settings: Settings) -> None:
    sampled_jobs(settings)
    tmux = Tmux()
    command = top_command(settings, tmux.status_file, "--interval", "0.2s")
    try:
        # remain-on-exit: the pane stays after `top` exits, so its screen can be read
        tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "30", "-c", str(ROOT),
             "-e", f"PYTHONPATH={ROOT}", command, ";",
             "set-option", "-t", "top", "remain-on-exit", "on")
        wait_for(lambda: rows_of(tmux.screen()) == ["hot.main", "fat.main"],
                 message="the table in CPU order")
        assert "sorted by cpu" in tmux.screen()
        assert tmux.pane("#{alternate_on}") == "1"  # a full-screen program
        tmux("send-keys", "-t", "top", "m")
        wait_for(lambda: rows_of(tmux.screen()) == ["fat.main", "hot.main"],
                 message="the table in RSS order after m")
        assert "sorted by rss" in tmux.screen()
        tmux("send-keys", "-t", "top", "q")
        assert wait_for(tmux.exit_status, message="top to exit on q") == "0"
        assert tmux.pane("#{alternate_on}") == "0"  # the terminal is restored
    finally:
        tmux.close()


@pytest.mark.skipif(shutil.which("tmux") is None,
                    reason="tmux is not installed: `top` cannot be driven in a real terminal")
def test_top_in_a_real_terminal_ends_cleanly_on_ctrl_c(settings: Settings) -> None:
    sampled_jobs(settings)
    tmux = Tmux()
    command = top_command(settings, tmux.status_file)
    try:
        tmux("new-session", "-d", "-s", "top", "-x", "120", "-y", "30", "-c", str(ROOT),
             "-e", f"PYTHONPATH={ROOT}", command, ";",
             "set-option", "-t", "top", "remain-on-exit", "on")
        wait_for(lambda: "hot.main" in tmux.screen(), message="the table")
        tmux("send-keys", "-t", "top", "C-c")
        assert wait_for(tmux.exit_status, message="top to exit on Ctrl-C") == "0"
        assert tmux.pane("#{alternate_on}") == "0"
        assert "Traceback" not in tmux.screen()
    finally:
        tmux.close()



def test_top_and_stats_write_nothing_to_the_state_dir(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    sampled_jobs(settings)
    before = snapshot(settings.state_dir)
    for argv in (["top"], ["stats", "hot"], ["stats", "fat", "-o", "json"]):
        code, out, _ = out_of(capsys, settings, *argv)
        assert code == 0 and out, argv
    assert snapshot(settings.state_dir) == before
