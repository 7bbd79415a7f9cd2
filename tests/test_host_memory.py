"""host/memory.py: the daemon keeps one malloc arena. Counted in real processes' memory maps:
glibc reserves each thread arena as a 64 MiB-aligned, 64 MiB region (the part in use
read-write, the rest PROT_NONE), a shape nothing else in these processes has."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from reconciler.settings import Settings
from tests.helpers import wait_for
from tests.test_daemon import DaemonRunner, sleeper

HEAP_MAX = 64 << 20  # glibc's HEAP_MAX_SIZE on 64-bit: one thread arena's reservation
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(sys.maxsize < 2**32, reason="64-bit arena size assumed")


def thread_arenas(pid: int) -> int:
    """Anonymous regions of exactly HEAP_MAX starting on a HEAP_MAX boundary, made of a
    read-write part and (until it fills) the PROT_NONE rest right after it."""
    regions: list[tuple[int, int, str]] = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) == 5:  # no path: anonymous
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end, fields[1]))
    count = 0
    for i, (start, end, perms) in enumerate(regions):
        if perms != "rw-p" or start % HEAP_MAX:
            continue
        if i + 1 < len(regions) and regions[i + 1][0] == end and regions[i + 1][2] == "---p":
            end = regions[i + 1][1]
        count += end - start == HEAP_MAX
    return count


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


THREADS = textwrap.dedent("""\
    import sys, threading
    if sys.argv[1] == "limit":
        from reconciler.host.memory import limit_malloc_arenas
        assert limit_malloc_arenas()
    done = threading.Event()
    def work():
        kept = [bytes(2000) for _ in range(100)]  # above pymalloc's 512 bytes: malloc
        done.wait()
    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    sys.stdin.read()
    done.set()
    """)


@contextmanager
def threaded_process(mode: str) -> Iterator[int]:
    """A Python process whose three threads each malloc'ed, alive until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", THREADS, mode], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_each_thread_gets_an_arena_without_the_limit() -> None:
    """The control: the count sees glibc's thread arenas where they exist."""
    with threaded_process("default") as pid:
        assert thread_arenas(pid) >= 1


def test_limit_keeps_threads_in_the_main_arena() -> None:
    with threaded_process("limit") as pid:
        assert threads_of(pid) == 4
        assert thread_arenas(pid) == 0


def test_daemon_runs_its_threads_on_one_arena(settings: Settings, tmp_path: Path) -> None:
    runner = DaemonRunner(settings, tmp_path / "daemon.log")
    sleeper(settings, "a")
    try:
        proc = runner.start()
        wait_for(lambda: "first pass done" in runner.log.read_text(),
                 message="first pass done")
        assert threads_of(proc.pid) >= 5  # each would have made an arena of its own
        assert thread_arenas(proc.pid) == 0
    finally:
        runner.cleanup()


def test_an_arena_limit_the_operator_set_is_left_alone() -> None:
    from reconciler.host.memory import limit_malloc_arenas

    assert not limit_malloc_arenas(env={"MALLOC_ARENA_MAX": "4"})
    assert not limit_malloc_arenas(env={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
