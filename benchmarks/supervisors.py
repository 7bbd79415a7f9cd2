"""One adapter per supervisor: write its config for N sleepers, start it, and stop it.

Every adapter starts its daemon in its own session with the run's marker in the
environment, and every managed process carries the marker too (through each supervisor's
own per-program environment setting). `stop()` therefore never depends on the supervisor
being healthy: it SIGKILLs the daemon's session and then every process with the marker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from benchmarks import procfs

REPO = Path(__file__).resolve().parent.parent
COMMAND = "exec sleep 3600"  # run as sh -c '...' by all three: the issue's workload
BIN = Path(sys.executable).parent
MARKERS: list[str] = []  # every marker handed out, for the final sweep


class Supervisor:
    """A supervisor under test, managing `n` sleepers from config written into `workdir`."""

    name = "?"
    package = "?"

    def __init__(self, workdir: Path, n: int, marker: str) -> None:
        self.workdir = workdir
        self.n = n
        self.marker = marker  # the value of BENCH_RUN
        MARKERS.append(marker)
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @classmethod
    def version(cls) -> str:
        return metadata.version(cls.package)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def write_config(self) -> None:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        """Start the daemon in its own session; output goes to a file, so a chatty daemon
        cannot block on a full pipe."""
        env = {**os.environ, "BENCH_RUN": self.marker}
        env.pop("RECONCILER_SPECS", None)
        env.pop("RECONCILER_STATE_DIR", None)
        env["PYTHONPATH"] = str(REPO)  # the reconciler runs from this source tree
        with open(self.workdir / "daemon.out", "ab") as out:
            self.proc = subprocess.Popen(self.argv(), cwd=self.workdir, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)

    def stop(self) -> None:
        """Kill the daemon's session, then every marked process, until none is left."""
        if self.proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        kill_all(self.marker)


def kill_all(marker: str, rounds: int = 20) -> None:
    """A process may fork while being killed: repeat until a scan finds nothing."""
    for _ in range(rounds):
        if procfs.kill_marked(f"BENCH_RUN={marker}".encode()) == 0:
            return
        time.sleep(0.05)


class Supervisord(Supervisor):
    name = "supervisord"
    package = "supervisor"

    def write_config(self) -> None:
        """Defaults an operator would keep (autorestart, startsecs=1, AUTO child logs);
        minfds raised because each program holds pipes in supervisord."""
        d = self.workdir
        lines = [
            "[supervisord]", "nodaemon=true", f"logfile={d}/supervisord.log",
            f"pidfile={d}/supervisord.pid", f"childlogdir={d}", "loglevel=warn",
            f"minfds={max(1024, 8 * self.n + 256)}", "",
        ]
        for i in range(self.n):
            lines += [f"[program:s{i:04d}]", f"command=sh -c '{COMMAND}'",
                      f'environment=BENCH_RUN="{self.marker}"', "autorestart=true", ""]
        (d / "supervisord.conf").write_text("\n".join(lines))

    def argv(self) -> list[str]:
        return [str(BIN / "supervisord"), "-n", "-c", str(self.workdir / "supervisord.conf")]


class Circus(Supervisor):
    name = "circus"
    package = "circus"

    def write_config(self) -> None:
        """One watcher per program, as supervisord has one [program] each; stats off."""
        d = self.workdir
        lines = [
            "[circus]", f"endpoint = ipc://{d}/endpoint", f"pubsub_endpoint = ipc://{d}/pubsub",
            "statsd = false", "loglevel = WARNING", f"logoutput = {d}/circusd.log", "",
        ]
        for i in range(self.n):
            lines += [f"[watcher:s{i:04d}]", "cmd = sh", f'args = -c "{COMMAND}"',
                      "numprocesses = 1", "copy_env = true", "",
                      f"[env:s{i:04d}]", f"BENCH_RUN = {self.marker}", ""]
        (d / "circus.ini").write_text("\n".join(lines))

    def argv(self) -> list[str]:
        return [str(BIN / "circusd"), str(self.workdir / "circus.ini")]


class Reconciler(Supervisor):
    """The real CLI daemon. One spec file holding N services of one process action each:
    the direct translation of N supervisord [program] sections."""

    name = "reconciler"
    package = "reconciler"

    @classmethod
    def version(cls) -> str:
        """Run from the source tree, so not necessarily installed as a distribution."""
        import reconciler

        return reconciler.__version__

    @property
    def specs(self) -> Path:
        return self.workdir / "specs"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    def write_config(self) -> None:
        # Private whatever the umask: a specs dir writable by others is refused (DESIGN §8.1).
        self.specs.mkdir(mode=0o700, exist_ok=True)
        docs = [service_yaml(f"s{i:04d}", self.marker) for i in range(self.n)]
        (self.specs / "bench.yaml").write_text("---\n".join(docs))

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "reconciler.cli", "--specs", str(self.specs),
                "--state-dir", str(self.state)]

    def once_argv(self, wait: str = "300s") -> list[str]:
        return [*self.argv(), "--once", "--wait", wait]

    def add_service(self, name: str) -> None:
        """Save a new spec file the way editors and `git checkout` do: write a hidden temp
        file, then rename it into place (one atomic event for the watcher)."""
        tmp = self.specs / f".{name}.yaml.tmp"
        tmp.write_text(service_yaml(name, self.marker))
        os.replace(tmp, self.specs / f"{name}.yaml")


def service_yaml(name: str, marker: str) -> str:
    return (f"name: {name}\nactions:\n  - name: sleep\n    process: true\n"
            f"    cmd: {COMMAND}\n    env: {{BENCH_RUN: \"{marker}\"}}\n")


ALL: tuple[type[Supervisor], ...] = (Supervisord, Circus, Reconciler)
