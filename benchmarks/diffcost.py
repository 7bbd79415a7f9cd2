"""`python -m benchmarks.diffcost`: what `reconcile diff` costs with nothing to do, two
versions side by side in one run.

Issue 10 asks that `diff` stay cheap while it learns to show the whole change: at N = 1000
actions, a diff with nothing to do may take at most 1.5× what it took before. Both versions
are measured in the same run, on the same converged host: N sleepers are started once (by
the baseline), then `python -m reconciler.cli diff` of each checkout runs alternately, so
machine noise hits both alike. Each command is a whole process (imports included), as an
operator or a CI job runs it.

    python -m benchmarks.diffcost --baseline 3d3533d [--n 1000] [--samples 15]

The baseline checkout is a temporary `git worktree` (removed at the end); the current one is
this repository's working tree. Every process started here is killed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from benchmarks.supervisors import REPO, kill_all, service_yaml


def _cli(specs: Path, state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "reconciler.cli", "--specs", str(specs),
            "--state-dir", str(state), *args]


def _run(checkout: Path, argv: list[str], timeout: float) -> tuple[float, int]:
    """Wall time and exit code of one whole CLI process run from `checkout`."""
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=checkout, capture_output=True, timeout=timeout,
                          check=False)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(argv)} in {checkout}: exit {done.returncode}\n"
                         f"{done.stderr.decode(errors='replace')}")
    return time.perf_counter() - start, done.returncode


def measure(baseline: str, n: int, samples: int) -> dict[str, list[float]]:
    marker = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="bench-diff-") as tmp:
        root = Path(tmp)
        old = root / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old),
                        baseline], check=True, capture_output=True)
        specs, state = root / "specs", root / "state"
        specs.mkdir(mode=0o700)
        docs = [service_yaml(f"s{i:04d}", marker) for i in range(n)]
        (specs / "bench.yaml").write_text("---\n".join(docs))
        try:
            _run(old, _cli(specs, state, "--once", "--wait", "300s"), timeout=400)
            times: dict[str, list[float]] = {"baseline": [], "current": []}
            for _ in range(samples):
                for name, checkout in (("baseline", old), ("current", REPO)):
                    elapsed, code = _run(checkout, _cli(specs, state, "diff"), 120)
                    if code != 0:
                        raise SystemExit(f"{name}: diff found changes on a converged host")
                    times[name].append(elapsed)
            _run(old, _cli(specs, state, "down"), timeout=300)
            return times
        finally:
            kill_all(marker)
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
                           check=False, capture_output=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.diffcost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="git revision to compare against")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--samples", type=int, default=15)
    args = p.parse_args(argv)
    times = measure(args.baseline, args.n, args.samples)
    old, new = statistics.median(times["baseline"]), statistics.median(times["current"])
    ratio = new / old
    print(f"reconcile diff, nothing to do, N={args.n}, {args.samples} samples each, "
          f"alternating (whole process):")
    for name in ("baseline", "current"):
        values = sorted(times[name])
        print(f"  {name:8} median {statistics.median(values) * 1000:.0f} ms, "
              f"min {values[0] * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms")
    verdict = "met" if ratio <= 1.5 else "MISSED"
    print(f"  current ÷ baseline = {ratio:.2f}× (goal ≤ 1.5×: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
