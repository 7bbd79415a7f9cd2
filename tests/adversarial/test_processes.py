"""Adversarial processes: daemons that fork into the background, pidfile paths that point
at files that are not pidfiles. Real processes, real files, a real reconciler."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.host.identity import identity_of
from reconciler.host.members import job_processes
from reconciler.settings import Settings
from tests.helpers import marked_processes, wait_for
from tests.test_reconcile import PY, job, write_sleeper, write_spec

# A classic daemon: fork, setsid, fork again, both parents exit 0; the grandchild serves.
DOUBLE_FORK = (
    "import os,sys,time\n"
    "if os.fork(): os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork(): os._exit(0)\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "while True: time.sleep(3600)\n"
)


def daemons_of(job_id: str) -> list[int]:
    """Every live process carrying the job's id, wherever it went."""
    return [p.pid for p in marked_processes(job_id)]


def test_a_double_forking_daemon_is_followed_not_multiplied(
        settings: Settings, reconciler: Reconciler, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    pidfile = tmp_path / "daemon.pid"
    write_spec(settings.specs_dir, "d.yaml", f"""\
    name: d
    actions:
      - name: main
        process: true
        cmd: {json.dumps([PY, "-c", DOUBLE_FORK, str(pidfile)])}
    """)
    write_sleeper(settings.specs_dir, "other")
    reconciler.reconcile()
    served = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(),
                          message="the daemon wrote its pid"))

    def followed() -> bool:
        reconciler.reconcile()
        return job(settings, capsys, "d.main")["pid"] == served

    wait_for(followed, message="the job follows the daemon")
    row = job(settings, capsys, "d.main")
    for _ in range(5):  # passes later, still that one instance and no restart
        reconciler.reconcile()
    assert daemons_of(str(row["job_id"])) == [served]
    assert job(settings, capsys, "d.main")["restart_count"] == 0
    kinds = [e.kind for _, e in reconciler.store.events(service="d")]
    assert "daemonized" in kinds
    reconciler.down(frozenset({("d", None)}))
    assert daemons_of(str(row["job_id"])) == []
    assert identity_of(served) is None
    assert job(settings, capsys, "d.main")["phase"] == "stopped"


def test_down_leaves_no_process_carrying_the_job_id_whatever_its_session(
        settings: Settings, reconciler: Reconciler, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The main process keeps running, and a child escaped into a session of its own."""
    escapee = tmp_path / "escapee.pid"
    code = ("import os,sys,time\n"
            "if os.fork() == 0:\n"
            "    os.setsid(); open(sys.argv[1], 'w').write(str(os.getpid()))\n"
            "    while True: time.sleep(3600)\n"
            "while True: time.sleep(3600)\n")
    write_spec(settings.specs_dir, "e.yaml", f"""\
    name: e
    actions:
      - name: main
        process: true
        cmd: {json.dumps([PY, "-c", code, str(escapee)])}
    """)
    assert reconciler.converge(wait=20).converged
    wait_for(escapee.exists, message="the escapee started")
    row = job(settings, capsys, "e.main")
    leader = identity_of(int(row["pid"]))  # type: ignore[arg-type]
    assert leader is not None
    assert len(daemons_of(str(row["job_id"]))) == 2
    assert job_processes({str(row["job_id"]): leader}, by_environ=[str(row["job_id"])])
    reconciler.down()
    assert daemons_of(str(row["job_id"])) == []


def test_a_pidfile_path_holding_other_content_is_never_overwritten(
        settings: Settings, reconciler: Reconciler, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`pidfile:` naming an existing file that is not a pidfile (as `/etc/passwd` would be
    for root): the file is untouched and the job is blocked, saying why."""
    precious = tmp_path / "precious.conf"
    precious.write_text("root:x:0:0:root:/root:/bin/bash\n")
    write_spec(settings.specs_dir, "p.yaml", f"""\
    name: p
    actions:
      - name: main
        process: true
        cmd: {json.dumps([PY, "-c", "import time; time.sleep(3600)"])}
        pidfile: {precious}
    """)
    write_sleeper(settings.specs_dir, "other")
    reconciler.reconcile()
    row = job(settings, capsys, "p.main")
    assert row["phase"] == "blocked" and row["pid"] is None
    assert "refusing to overwrite" in str(row["reason"])
    assert precious.read_text() == "root:x:0:0:root:/root:/bin/bash\n"
    assert job(settings, capsys, "other.main")["pid"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith("precious.conf.")]  # no temp left


# Forks a child that leaves the session (setsid), then the parent fails (exit 3): not a
# daemon going to the background but a crash that leaves an instance behind on every try.
CRASHING_FORKER = (
    "import os,sys,time\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    with open(sys.argv[1], 'a') as f: f.write(f'{os.getpid()}\\n')\n"
    "    while True: time.sleep(3600)\n"
    "time.sleep(0.1); os._exit(3)\n"
)


def test_a_crash_that_leaves_a_setsid_child_does_not_multiply_instances(
        settings: Settings, reconciler: Reconciler, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Before a replacement starts, what is left of the crashed run (processes carrying its
    job id, whatever their session) is stopped. Only exits 0 used to be looked for by job id,
    so each restart of this crash loop added one more live instance."""
    children = tmp_path / "children"
    write_spec(settings.specs_dir, "c.yaml", f"""\
    name: c
    actions:
      - name: main
        process: true
        cmd: {json.dumps([PY, "-c", CRASHING_FORKER, str(children)])}
        backoff: {{initial: 10ms, max: 10ms}}
    """)

    def restarted_twice() -> bool:
        reconciler.reconcile()
        return int(job(settings, capsys, "c.main")["restart_count"]) >= 2  # type: ignore[arg-type]

    wait_for(restarted_twice, message="two restarts of the crash loop")
    pids = [int(line) for line in children.read_text().split()]
    assert len(pids) >= 2
    assert [p for p in pids[:-1] if identity_of(p) is not None] == []


# A one-shot that starts a helper in the background and exits 0 (`cmd &` in a setup script).
# The one-shot exits only once its helper has written its pid (else, on a loaded machine, the
# helper could be stopped with the finished run before the test ever learns its pid).
ONESHOT_WITH_HELPER = (
    "import os,sys,time\n"
    "if os.fork() == 0:\n"
    "    open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
    "    os.rename(sys.argv[1] + '.tmp', sys.argv[1])\n"
    "    while True: time.sleep(3600)\n"
    "while not os.path.exists(sys.argv[1]): time.sleep(0.005)\n"
    "os._exit(0)\n"
)


def test_down_leaves_nothing_of_a_one_shot_that_left_a_helper_running(
        settings: Settings, reconciler: Reconciler, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """DESIGN §8.1: `down`/stop leaves no process carrying the job id. Like systemd with what a
    Type=oneshot unit leaves in its cgroup, a one-shot's run ends with its command: what it
    left running is stopped before the one-shot counts as succeeded."""
    helper_pidfile = tmp_path / "helper.pid"
    write_spec(settings.specs_dir, "o.yaml", f"""\
    name: o
    actions:
      - name: setup
        cmd: {json.dumps([PY, "-c", ONESHOT_WITH_HELPER, str(helper_pidfile)])}
    """)
    write_sleeper(settings.specs_dir, "other")
    assert reconciler.converge(wait=20).converged
    helper = int(wait_for(lambda: helper_pidfile.exists() and helper_pidfile.read_text(),
                          message="the helper started"))
    row = job(settings, capsys, "o.setup")
    assert row["phase"] == "succeeded"
    reconciler.down(frozenset({("o", None)}), wait=5)
    assert daemons_of(str(row["job_id"])) == []
    assert identity_of(helper) is None
