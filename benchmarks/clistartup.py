"""The "cli" scenario (reconciler only): what a user waits for at each command (issue 13).

Whole processes, byte-compiled (main() compiles the tree first, as pip does), without
PYTHONDONTWRITEBYTECODE, interleaved so load on the machine hits every command alike:
`python -c pass` (the floor), `--help` both as `python -m reconciler.cli` and as the script
pip generates for `[project.scripts]` (what users run: it imports `main` directly, no
importlib.metadata), `status` of N running jobs, and `validate` of N services. RSS is each
child's peak from wait4; it counts the forked benchmark process before exec, so it is a floor
(the `-c pass` row shows it) and only a value above that row's says what a command needs.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.supervisors import REPO, Reconciler

# what pip (distlib's SCRIPT_TEMPLATE) writes for `reconcile = "reconciler.cli:main"`
CONSOLE_SCRIPT = """# -*- coding: utf-8 -*-
import re
import sys
from reconciler.cli import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""
# the same script with nothing of ours: what `re` and running a script cost by themselves, so
# the part of `reconcile --help` that is ours is the difference between the two rows
SCRIPT_FLOOR = CONSOLE_SCRIPT.replace("from reconciler.cli import main",
                                      "def main() -> int:\n    return 0")
HELP_GOAL, STATUS_GOAL, VALIDATE_GOAL_MS = 1.5, 2.5, 250.0


@dataclass(frozen=True)
class CliPlan:
    n: int = 200
    runs: int = 15


@dataclass
class CliResult:
    n: int = 0
    ms: dict[str, list[float]] = field(default_factory=dict)  # command -> wall times
    rss_kib: dict[str, list[int]] = field(default_factory=dict)  # command -> peak RSS

    def median(self, name: str) -> float | None:
        values = self.ms.get(name)
        return statistics.median(values) if values else None


def commands(sup: Reconciler, script: Path, floor: Path) -> dict[str, list[str]]:
    py, flags = sys.executable, ["--specs", str(sup.specs), "--state-dir", str(sup.state)]
    return {"python -c pass": [py, "-c", "pass"],
            "pip script, nothing of ours": [py, str(floor), "--help"],
            "-m reconciler.cli --help": [py, "-m", "reconciler.cli", "--help"],
            "reconcile --help": [py, str(script), "--help"],
            "reconcile status": [py, str(script), "status", *flags],
            "reconcile validate": [py, str(script), "validate", str(sup.specs)]}


def run(plan: CliPlan, root: Path, marker: str) -> CliResult:
    """N sleepers converged once (`--once`, no daemon left behind), then the timings."""
    out = CliResult(n=plan.n)
    sup = Reconciler(root / f"cli-{plan.n}", plan.n, marker)
    script = root / "reconcile"
    script.write_text(CONSOLE_SCRIPT)
    floor = root / "reconcile-floor"
    floor.write_text(SCRIPT_FLOOR)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONDONTWRITEBYTECODE", "RECONCILER_SPECS", "RECONCILER_STATE_DIR")}
    env |= {"PYTHONPATH": str(REPO), "BENCH_RUN": marker}
    try:
        sup.write_config()
        subprocess.run(sup.once_argv(), env=env, cwd=sup.workdir, check=True,
                       stdout=subprocess.DEVNULL, start_new_session=True)
        argvs = commands(sup, script, floor)
        for argv in argvs.values():  # warm the page cache and the bytecode
            subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        for _ in range(plan.runs):
            for name, argv in argvs.items():
                ms, rss = timed(argv, env)
                out.ms.setdefault(name, []).append(ms)
                out.rss_kib.setdefault(name, []).append(rss)
        return out
    finally:
        sup.stop()


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall time of the whole process, and its peak RSS (KiB) from wait4's rusage."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = (time.perf_counter() - start) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}")
    return elapsed, int(usage.ru_maxrss)


def report(result: CliResult, plan: CliPlan, command: str) -> list[str]:
    floor = result.median("python -c pass")
    lines = ["## CLI start-up (issue 13)", "",
             f"`{command}`: whole processes, byte-compiled, median of {plan.runs} each, "
             f"interleaved; `status` of {result.n} running jobs, `validate` of {result.n} "
             "services. `reconcile` is the script pip generates for the entry point. Peak RSS "
             "counts the forked benchmark before exec: only values above `-c pass` mean "
             "anything.", "",
             "| command | median ms | × `-c pass` | peak RSS MiB | goal |",
             "| --- | --- | --- | --- | --- |"]
    goals = {"reconcile --help": f"≤ {HELP_GOAL:g}×",
             "-m reconciler.cli --help": f"≤ {HELP_GOAL:g}×",
             "reconcile status": f"≤ {STATUS_GOAL:g}×",
             "reconcile validate": f"≤ {VALIDATE_GOAL_MS:g} ms"}
    for name in result.ms:
        ms = result.median(name)
        ratio = f"{ms / floor:.2f}" if ms is not None and floor else "-"
        rss = statistics.median(result.rss_kib[name]) / 1024
        lines.append(f"| `{name}` | {ms:.1f} | {ratio} | {rss:.1f} | {goals.get(name, '')} |")
    lines += ["", *verdicts(result, floor), ""]
    return lines


def verdicts(result: CliResult, floor: float | None) -> list[str]:
    def ratio(name: str, goal: float) -> str:
        ms = result.median(name)
        if ms is None or not floor:
            return f"- `{name}`: not measured"
        met = "met" if ms <= goal * floor else "NOT met"
        return f"- `{name}` ≤ {goal:g}× `-c pass`: {ms / floor:.2f}×, {met}"

    validate = result.median("reconcile validate")
    return [ratio("reconcile --help", HELP_GOAL), ratio("reconcile status", STATUS_GOAL),
            f"- `reconcile validate` ≤ {VALIDATE_GOAL_MS:g} ms: "
            + ("not measured" if validate is None else
               f"{validate:.0f} ms, {'met' if validate <= VALIDATE_GOAL_MS else 'NOT met'}")]

