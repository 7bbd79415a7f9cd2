"""The "log flood" scenario (reconciler only): does a job's log stay bounded at 100 MB/s?

Issue 8 found a process writing 100 MB/s with the default `logs: {max_size: 10MiB, keep: 5}`
reaching a 3.3 GiB live log and a 3.4 GiB `.log.1`. The contract (docs/operations.md "Logs
are bounded"): the live log stays within `max_size + 1 MiB`, each `.log.N` within
`max_size`, the history within `keep × max_size`, whatever the output rate.

The real daemon runs one job, a Python writer appending 1 MiB chunks of text lines to its
stdout (the log the daemon opened for it) with os.write, paced to a target rate (or as fast
as it can). The writer waits for a "go" file, so the flood starts once the daemon runs it and
has had a second to settle, and the harness samples the whole flood: every ~2 ms it lstats
the live log and every `.log.N` next to it. Nothing here asks the code under test anything;
sizes come from the file system, CPU from /proc, bytes written from the writer's own note.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import procfs
from benchmarks.supervisors import Reconciler

MiB = 1024 * 1024
SAMPLE_S = 0.002

# Appends `chunk` bytes of 128-byte text lines per os.write, paced to `rate` bytes/s (0: as
# fast as it can) for `seconds`, then notes what it wrote and idles (a process job that exits
# would be restarted: a new run, a rotation, not what is measured here).
WRITER = r"""
import json, os, sys, time
rate, seconds, chunk = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
go, note = sys.argv[4], sys.argv[5]
line = lambda i: b"flood %09d " % i + b"x" * 111 + b"\n"
block = b"".join(line(i) for i in range(chunk // 128))
while not os.path.exists(go):
    time.sleep(0.001)
start = time.monotonic()
written = writes = 0
while (elapsed := time.monotonic() - start) < seconds:
    written += os.write(1, block)
    writes += 1
    if rate:
        ahead = written / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
tmp = note + ".tmp"
with open(tmp, "w") as f:
    json.dump({"written": written, "writes": writes, "seconds": elapsed}, f)
os.replace(tmp, note)
while True:
    time.sleep(3600)
"""


@dataclass(frozen=True)
class FloodVariant:
    label: str
    rate: float  # bytes/s; 0 = unthrottled
    max_size: int
    keep: int = 5
    seconds: float = 10.0


DEFAULT_VARIANTS = (
    FloodVariant("100 MB/s, max_size 10 MiB (default logs)", 100e6, 10 * MiB),
    FloodVariant("100 MB/s, max_size 1 MiB", 100e6, 1 * MiB),
    FloodVariant("unthrottled, max_size 10 MiB", 0.0, 10 * MiB, seconds=3.0),
)
QUICK_VARIANTS = (
    FloodVariant("100 MB/s, max_size 10 MiB (default logs)", 100e6, 10 * MiB, seconds=5.0),
)


@dataclass(frozen=True)
class FloodPlan:
    variants: tuple[FloodVariant, ...] = DEFAULT_VARIANTS
    chunk: int = MiB
    settle_s: float = 1.0  # the job runs, its first passes are done, before the flood
    start_timeout: float = 15.0


@dataclass
class FloodResult:
    label: str = ""
    rate: float = 0.0
    max_size: int = 0
    keep: int = 0
    seconds: float = 0.0
    started: bool = False
    written: int = 0  # bytes the writer wrote (its own count)
    write_s: float = 0.0  # how long it wrote
    live_max: int = 0
    live_p99: int = 0
    over_samples: int = 0  # samples with the live log above max_size + 1 MiB
    history_file_max: int = 0
    history_total_max: int = 0
    history_files_max: int = 0
    kept_end: int = 0  # live + history once the writer is done and the capper settled
    rotations: int = 0  # drops of the live size between samples (a lower bound)
    samples: int = 0
    gap_max_ms: float = 0.0  # longest time between two samples: the sampler's resolution
    gap_p50_ms: float = 0.0
    daemon_cpu_pct: float | None = None  # % of one core over the flood, all threads
    writer_cpu_pct: float | None = None
    wall_s: float = 0.0
    live_series: list[int] = field(default_factory=list, repr=False)


class FloodReconciler(Reconciler):
    """The CLI daemon with one service: the writer, with the variant's `logs` limits."""

    def __init__(self, workdir: Path, variant: FloodVariant, chunk: int, marker: str) -> None:
        super().__init__(workdir, 1, marker)
        self.variant = variant
        self.chunk = chunk
        self.go = workdir / "go"
        self.note = workdir / "written.json"
        self.script = workdir / "writer.py"

    @property
    def log(self) -> Path:
        return self.state / "logs" / "flood" / "write.log"

    def exited(self) -> bool:
        """The daemon is gone (a bad spec, a refused dir): no point waiting for the job."""
        return self.proc is not None and self.proc.poll() is not None

    def writer(self) -> int | None:
        """The writer's pid: the daemon's child running our script (after its exec)."""
        script = os.fsencode(self.script)
        for pid in procfs.pids():
            st = procfs.read_stat(pid)
            if st is None or st.ppid != self.pid:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if script in f.read().split(b"\0"):
                        return pid
            except OSError:
                continue
        return None

    def write_config(self) -> None:
        self.specs.mkdir(mode=0o700, exist_ok=True)
        self.script.write_text(WRITER)
        v = self.variant
        cmd = [sys.executable, str(self.script), repr(v.rate), repr(v.seconds),
               str(self.chunk), str(self.go), str(self.note)]
        (self.specs / "flood.yaml").write_text(
            "name: flood\nactions:\n  - name: write\n    process: true\n"
            f"    cmd: {json.dumps(cmd)}\n"
            f"    logs: {{max_size: {v.max_size}B, keep: {v.keep}}}\n"
            f"    env: {{BENCH_RUN: \"{self.marker}\"}}\n")


def run(plan: FloodPlan, root: Path, marker: str) -> list[FloodResult]:
    return [run_variant(v, plan, root / f"log-flood-{i}", f"{marker}-{i}")
            for i, v in enumerate(plan.variants)]


def run_variant(variant: FloodVariant, plan: FloodPlan, workdir: Path,
                marker: str) -> FloodResult:
    """Start the daemon, wait until the writer runs, flood while sampling, and always kill
    everything."""
    sup = FloodReconciler(workdir, variant, plan.chunk, marker)
    out = FloodResult(label=variant.label, rate=variant.rate, max_size=variant.max_size,
                      keep=variant.keep, seconds=variant.seconds)
    started = time.perf_counter()
    try:
        sup.write_config()
        sup.start()
        up = lambda: sup.exited() or (sup.writer() is not None  # noqa: E731
                                      and sup.log.exists())
        if procfs.wait_for(up, plan.start_timeout) is None or sup.exited():
            return out  # reported as "did not start"; the daemon's output is in daemon.out
        out.started = True
        time.sleep(plan.settle_s)  # the first passes are over: the capper knows the job
        writer = sup.writer()
        if writer is not None:
            flood(sup, writer, out)
        return out
    finally:
        out.wall_s = time.perf_counter() - started
        sup.stop()


def flood(sup: FloodReconciler, writer: int, out: FloodResult) -> None:
    """Say go, sample sizes every ~2 ms until the writer's note says it is done, then wait
    for the capper to bring the live log back under max_size (at most 2 s)."""
    pids = (sup.pid, writer)
    before = {p: _ticks(p) for p in pids}
    t0 = time.perf_counter()
    sup.go.touch()
    deadline = t0 + sup.variant.seconds + 3.0  # the writer notes at `seconds`
    last, prev_live, gaps = t0, 0, []
    while not sup.note.exists() and time.perf_counter() < deadline:
        live, history = sizes(sup.log)
        out.live_series.append(live)
        out.live_max = max(out.live_max, live)
        out.over_samples += live > out.max_size + MiB
        out.history_file_max = max(out.history_file_max, *history, 0)
        out.history_total_max = max(out.history_total_max, sum(history))
        out.history_files_max = max(out.history_files_max, len(history))
        out.rotations += live < prev_live
        prev_live = live
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        time.sleep(max(0.0, SAMPLE_S - (time.perf_counter() - now)))
    elapsed = time.perf_counter() - t0
    after = {p: _ticks(p) for p in pids}
    cpu = {p: None if None in (before[p], after[p]) else
           100.0 * (after[p] - before[p]) / procfs.CLOCK_TICKS / elapsed for p in pids}
    out.daemon_cpu_pct, out.writer_cpu_pct = cpu[sup.pid], cpu[writer]
    out.samples = len(gaps)
    gaps.sort()
    out.gap_max_ms = 1000 * gaps[-1] if gaps else 0.0
    out.gap_p50_ms = 1000 * gaps[len(gaps) // 2] if gaps else 0.0
    ordered = sorted(out.live_series)
    out.live_p99 = ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0
    try:
        note = json.loads(sup.note.read_text())
        out.written, out.write_s = int(note["written"]), float(note["seconds"])
    except (OSError, ValueError, KeyError):
        pass
    procfs.wait_for(lambda: sizes(sup.log)[0] <= out.max_size, 2.0)
    live, history = sizes(sup.log)
    out.kept_end = live + sum(history)


def sizes(log: Path) -> tuple[int, list[int]]:
    """The live log's size and each `.log.N`'s, as of now (files may move meanwhile: a file
    renamed away between listdir and lstat counts under its new name or not at all)."""
    live = _size(log)
    prefix = log.name + "."
    try:
        names = os.listdir(log.parent)
    except FileNotFoundError:
        return live, []
    return live, [_size(log.with_name(n)) for n in names
                  if n.startswith(prefix) and n[len(prefix):].isdigit()]


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except FileNotFoundError:
        return 0


def _ticks(pid: int) -> int | None:
    st = procfs.read_stat(pid)
    return None if st is None else st.cpu_ticks
