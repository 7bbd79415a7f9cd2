"""Where a supervisor's RSS goes: `python -m benchmarks.rssprobe --n 200`.

The compare scenario gives one RSS figure per daemon; this probe splits it, for the
"Daemon RSS" findings in docs/benchmarks.md. Each daemon (the same adapters as the compare
scenario) manages N sleepers; once all N run and `--settle` seconds have passed, it reads
the daemon's /proc/PID/status (VmRSS = RssAnon, the heap and every private page, + RssFile,
the mapped .so files' resident pages), its thread count, and /proc/PID/smaps summed per
mapping (`[heap]` is malloc's main arena, `[anon]` CPython's 1 MiB object arenas, thread
stacks and other arenas), then stops it. One daemon at a time, `--rounds` times each,
alternating, so that both see the same machine.
"""

from __future__ import annotations

import argparse
import collections
import compileall
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import measure, supervisors

_MAPPING = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")
FIELDS = ("VmRSS", "RssAnon", "RssFile", "Threads")


def status(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0])
    return values


def by_mapping(pid: int) -> collections.Counter[str]:
    """Resident KiB per mapped file or kind of anonymous memory."""
    rss: collections.Counter[str] = collections.Counter()
    name = "?"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if match := _MAPPING.match(line):
            name = match.group(1) or "[anon]"
        elif line.startswith("Rss:"):
            rss[name] += int(line.split()[1])
    return rss


def probe(kind: type[supervisors.Supervisor], n: int, settle: float, timeout: float
          ) -> tuple[dict[str, int], collections.Counter[str]]:
    with tempfile.TemporaryDirectory(prefix=f"rssprobe-{kind.name}-") as tmp:
        workdir = Path(tmp) / "w"
        os.chmod(tmp, 0o700)
        sup = kind(workdir, n, f"rssprobe-{os.getpid()}-{time.monotonic_ns()}")
        try:
            if measure.converge(sup, timeout)[1] is None:
                raise SystemExit(f"{kind.name}: {n} sleepers not running in {timeout}s")
            time.sleep(settle)
            return status(sup.pid), by_mapping(sup.pid)
        finally:
            sup.stop()


def _cell(field: str, value: float) -> str:
    return f"{value:.0f}" if field == "Threads" else f"{value / 1024:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rssprobe", description=__doc__)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--only", default="reconciler,supervisord")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--top", type=int, default=12, help="mappings listed per daemon")
    args = parser.parse_args(argv)
    compileall.compile_dir(supervisors.REPO / "reconciler", quiet=1)  # as pip leaves it
    kinds = [k for k in supervisors.ALL if k.name in args.only.split(",")]
    results: dict[str, list[tuple[dict[str, int], collections.Counter[str]]]] = {
        k.name: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            results[kind.name].append(probe(kind, args.n, args.settle, args.timeout))
    print(f"N = {args.n}, {args.rounds} rounds, medians in MiB\n")
    print("| daemon | " + " | ".join(FIELDS) + " |")
    print("|---" * (len(FIELDS) + 1) + "|")
    for name, runs in results.items():
        cells = [_cell(f, statistics.median(r[0][f] for r in runs)) for f in FIELDS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, runs in results.items():
        total: collections.Counter[str] = collections.Counter()
        for _, mappings in runs:
            total.update(mappings)
        print(f"\n{name}, resident MiB per mapping (mean of {len(runs)}):")
        for mapping, kib in total.most_common(args.top):
            print(f"  {kib / len(runs) / 1024:6.2f}  {mapping}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
