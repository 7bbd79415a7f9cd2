"""/proc parsing: pure parsers on sample text and on the live files, plus fuzzing."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.host import procfs
from reconciler.host.procfs import (
    Stat,
    TcpEntry,
    UnixEntry,
    parse_cmdline,
    parse_environ_var,
    parse_net_tcp,
    parse_net_unix,
    parse_stat,
)
from tests.conftest import Foreign
from tests.helpers import cmdline, wait_for


def stat_line(pid: int = 1234, comm: str = "sleep", state: str = "S", ppid: int = 1,
              pgrp: int = 1234, session: int = 1234, starttime: int = 5555) -> str:
    """A /proc/<pid>/stat line laid out as the kernel prints it (52 fields)."""
    middle = f"{state} {ppid} {pgrp} {session} 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0"
    tail = " ".join(["0"] * 30)
    return f"{pid} ({comm}) {middle} {starttime} {tail}\n"


def unused_pid() -> int:
    """A pid no process can have: above the kernel's pid_max."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


# --- stat ------------------------------------------------------------------------------------


def test_parse_stat_fields() -> None:
    stat = parse_stat(stat_line(pid=42, comm="python3", state="R", ppid=7, pgrp=40,
                                session=39, starttime=987654))
    assert stat == Stat(pid=42, comm="python3", state="R", ppid=7, pgrp=40, session=39,
                        starttime=987654)
    usage = procfs.parse_stat_usage(stat_line(comm="a) b", starttime=987654).encode())
    assert (usage.state, usage.utime, usage.stime, usage.threads, usage.starttime,
            usage.rss_pages) == ("S", 1, 2, 1, 987654, 0)
    assert not stat.zombie
    assert parse_stat(stat_line(state="Z")).zombie


def test_read_usage_of_a_live_process_counts_its_cpu_memory_threads_and_fds() -> None:
    found = procfs.read_usage(os.getpid())
    assert found is not None
    stat, fds = found
    me = procfs.read_stat(os.getpid())
    assert me is not None and stat.starttime == me.starttime
    assert stat.threads >= 1 and stat.rss_pages > 0
    assert fds is not None and fds >= 3  # stdin, stdout, stderr at least
    with open(os.devnull) as _a, open(os.devnull) as _b:
        again = procfs.read_usage(os.getpid())
        assert again is not None and again[1] == fds + 2
    assert procfs.read_usage(unused_pid()) is None


@pytest.mark.parametrize("comm", ["a) (b c", "x) S 1 2 3 (", ")", "(", "((", "two words", ""])
def test_parse_stat_comm_with_spaces_and_parentheses(comm: str) -> None:
    stat = parse_stat(stat_line(comm=comm, ppid=3, starttime=77))
    assert (stat.comm, stat.ppid, stat.starttime) == (comm, 3, 77)


@pytest.mark.parametrize("text", [
    "",
    "1234",
    "1234 (sleep)",
    "1234 (sleep) S 1 2",  # too few fields
    stat_line().replace("1234 (", "abc ("),  # pid not a number
    stat_line().replace(" 5555 ", " 0x15b3 "),  # starttime not decimal
    stat_line().replace(" 1234 1234 ", " 1_234 1234 "),  # int() would accept this
    stat_line(state="SS"),
    stat_line(state="1"),
    ") 1234 (sleep S 1 2 3",  # parentheses in the wrong order
])
def test_parse_stat_malformed_raises_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        parse_stat(text)


def test_read_stat_of_self_matches_os() -> None:
    stat = procfs.read_stat(os.getpid())
    assert stat is not None
    assert (stat.pid, stat.ppid, stat.pgrp, stat.session) == (
        os.getpid(), os.getppid(), os.getpgrp(), os.getsid(0))
    assert stat.state == "R"
    assert stat.starttime > 0


def test_read_stat_of_live_process_with_hostile_name(tmp_path: Path, foreign: Foreign) -> None:
    """The kernel's comm is the executable's name: give it spaces and parentheses."""
    program = tmp_path / "x) (y z"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
    proc = foreign.start([str(program), "600"])
    stat = wait_for(lambda: (s := procfs.read_stat(proc.pid)) and s.comm == "x) (y z" and s,
                    message="renamed sleep running")
    assert (stat.pid, stat.ppid, stat.session) == (proc.pid, os.getpid(), proc.pid)
    assert stat.starttime >= procfs.read_stat(os.getpid()).starttime  # type: ignore[union-attr]


def test_read_stat_of_missing_process_is_none() -> None:
    assert procfs.read_stat(unused_pid()) is None
    assert procfs.read_stat(0) is None
    assert procfs.read_stat(-1) is None


def test_iter_pids_contains_self() -> None:
    assert os.getpid() in set(procfs.iter_pids())


def test_read_boot_id_is_a_uuid() -> None:
    boot_id = procfs.read_boot_id()
    assert len(boot_id) == 36 and boot_id.count("-") == 4
    assert boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


# --- cmdline ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    (b"", ()),
    (b"sleep\x00600\x00", ("sleep", "600")),
    (b"sh\x00-c\x00echo a b\x00", ("sh", "-c", "echo a b")),
    (b"a\x00\x00b\x00", ("a", "", "b")),
    (b"nginx: master process /usr/sbin/nginx", ("nginx:", "master", "process",
                                                 "/usr/sbin/nginx")),
    (b"caf\xe9\x00", ("caf\ufffd",)),
])
def test_parse_cmdline(raw: bytes, expected: tuple[str, ...]) -> None:
    assert parse_cmdline(raw) == expected


def test_read_cmdline_of_live_process(foreign: Foreign) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(600)", "arg with spaces", ""]
    proc = foreign.start(argv)
    assert wait_for(lambda: cmdline(proc.pid)) == tuple(argv)


def test_read_cmdline_of_missing_process_is_empty() -> None:
    assert cmdline(unused_pid()) == ()
    assert procfs.read_process(unused_pid()) is None



# --- environ ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    (b"A=1\0RECONCILER_JOB_ID=j-1\0B=2\0", "j-1"),
    (b"RECONCILER_JOB_ID=first\0RECONCILER_JOB_ID=second\0", "first"),  # as getenv sees it
    (b"A=1\0RECONCILER_JOB_ID=last", "last"),  # no final NUL
    (b"RECONCILER_JOB_ID=\0", ""),
    (b"X=RECONCILER_JOB_ID=forged\0", None),  # inside another variable's value
    (b"XRECONCILER_JOB_ID=no\0", None),
    (b"RECONCILER_JOB_IDX=no\0", None),
    (b"", None),
    (b"RECONCILER_JOB_ID=caf\xc3\xa9\0", "caf\u00e9"),
])
def test_parse_environ_var(raw: bytes, expected: str | None) -> None:
    assert parse_environ_var(raw, b"RECONCILER_JOB_ID") == expected


def test_parse_environ_var_distrusts_a_value_cut_by_the_bounded_read() -> None:
    raw = b"A=1\0RECONCILER_JOB_ID=" + b"x" * procfs.ENVIRON_MAX
    assert parse_environ_var(raw[:procfs.ENVIRON_MAX], b"RECONCILER_JOB_ID") is None


def test_read_environ_var_of_live_process_with_a_huge_environment(foreign: Foreign) -> None:
    """The marker after 1 MiB of other variables is beyond the bounded read: not found,
    and the read stays bounded; the one near the top is found."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "EARLY": "yes",
           **{f"BIG{i}": "v" * 1000 for i in range(1000)}, "LATE": "no"}
    proc = foreign.start([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
    wait_for(lambda: procfs.read_environ_var(proc.pid, "EARLY"), message="environ readable")
    assert procfs.read_environ_var(proc.pid, "EARLY") == "yes"
    assert procfs.read_environ_var(proc.pid, "BIG0") == "v" * 1000
    assert procfs.read_environ_var(proc.pid, "LATE") is None
    assert procfs.read_environ_var(proc.pid, "NOSUCH") is None


def test_read_environ_var_of_gone_zombie_and_kernel_thread() -> None:
    assert procfs.read_environ_var(unused_pid(), "PATH") is None
    assert procfs.read_environ_var(2, "PATH") is None  # kthreadd (or nothing) has no environ
    zombie = os.fork()
    if zombie == 0:
        os._exit(0)
    try:
        def is_zombie() -> bool:
            stat = procfs.read_stat(zombie)
            return stat is not None and stat.zombie
        wait_for(is_zombie, message="the child to be a zombie")
        assert procfs.read_environ_var(zombie, "PATH") is None
        assert procfs.read_process_environ(zombie, "PATH") is not None  # stat still there
        assert procfs.read_environ_var(zombie, "PATH", blank="-") is None  # not even read
    finally:
        os.waitpid(zombie, 0)


def test_an_empty_environment_is_told_apart_from_an_unset_variable_when_asked() -> None:
    """What a process caught inside exec() reads like (host/markers.py reads it again). It
    carries no marker, so it is killed here, also on failure."""
    proc = subprocess.Popen(["/bin/sleep", "600"], env={}, start_new_session=True)
    try:
        wait_for(lambda: cmdline(proc.pid)[:1] == ("/bin/sleep",), message="the exec")
        assert procfs.read_environ_var(proc.pid, "PATH") is None
        assert procfs.read_environ_var(proc.pid, "PATH", blank="-") == "-"
        snapshot = procfs.read_process_environ(proc.pid, "PATH", blank="-")
        assert snapshot is not None and snapshot[2] == "-"
    finally:
        proc.kill()
        proc.wait()
    assert procfs.read_environ_var(os.getpid(), "NO_SUCH_VAR_HERE", blank="-") is None
    assert procfs.read_environ_var(unused_pid(), "PATH", blank="-") is None  # gone


def test_read_process_environ_is_one_snapshot() -> None:
    os.environ["PROCFS_TEST_MARK"] = "here"  # not in our initial environ: exec-time only
    try:
        snapshot = procfs.read_process_environ(os.getpid(), "HOME")
    finally:
        del os.environ["PROCFS_TEST_MARK"]
    assert snapshot is not None
    stat, cmdline, value = snapshot
    assert stat.pid == os.getpid() and cmdline and value == os.environ.get("HOME")
    assert procfs.read_environ_var(os.getpid(), "PROCFS_TEST_MARK") is None
    assert procfs.read_process_environ(unused_pid(), "HOME") is None

# --- /proc/net/unix --------------------------------------------------------------------------

NET_UNIX = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 12345 /run/web/api.sock
0000000000000000: 00000003 00000000 00000000 0001 03 12346 /run/web/api.sock
0000000000000000: 00000002 00000000 00000000 0002 01 12347 @abstract@name
0000000000000000: 00000002 00000000 00000000 0001 03  1190
0000000000000000: 00000002 00000000 00010000 0001 01 12348 /tmp/dir with spaces/s.sock
"""


def test_parse_net_unix_sample() -> None:
    assert parse_net_unix(NET_UNIX) == [
        UnixEntry(12345, True, "/run/web/api.sock"),
        UnixEntry(12346, False, "/run/web/api.sock"),
        UnixEntry(12347, False, "@abstract@name"),
        UnixEntry(1190, False, ""),
        UnixEntry(12348, True, "/tmp/dir with spaces/s.sock"),
    ]


@pytest.mark.parametrize("text", [
    "0000000000000000: 00000002 00000000 00010000 0001 01\n",  # no inode
    "0000000000000000 00000002 00000000 00010000 0001 01 12345 /x\n",  # no colon
    "0000000000000000: 00000002 00000000 0001000g 0001 01 12345 /x\n",  # flags not hex
    "0000000000000000: 00000002 00000000 00010000 0001 01 -5 /x\n",  # inode not decimal
])
def test_parse_net_unix_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_net_unix(text)


def test_live_net_unix_shows_our_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen()
        inode = os.fstat(server.fileno()).st_ino
        entries = procfs.read_net_unix()
        assert UnixEntry(inode, True, path) in entries
        assert inode in procfs.read_socket_inodes(os.getpid())


# --- /proc/net/tcp, tcp6 ---------------------------------------------------------------------

NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D3A2 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
"""  # noqa: E501

NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
"""  # noqa: E501


def test_parse_net_tcp_sample() -> None:
    entries = parse_net_tcp(NET_TCP)
    assert entries == [TcpEntry(8080, "0A", 4242), TcpEntry(8080, "06", 0)]
    assert [e.listening for e in entries] == [True, False]


def test_parse_net_tcp6_sample() -> None:
    assert parse_net_tcp(NET_TCP6) == [TcpEntry(80, "0A", 777)]


@pytest.mark.parametrize("text", [
    "   0: 0100007F:1F90 00000000:0000 0A\n",  # truncated
    "   0: 0100007F1F90 00000000:0000 0A 0:0 0:0 0 0 0 1\n",  # no port separator
    "   0: 0100007F:1F9 00000000:0000 0A 0:0 0:0 0 0 0 1\n",  # short port
    "   0: 0100007:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1\n",  # odd address length
    "   0: 0100007F:1F90 00000000:0000 ZZ 0:0 0:0 0 0 0 1\n",  # state not hex
    "   0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 x\n",  # inode not decimal
    "   x: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1\n",  # slot not decimal
])
def test_parse_net_tcp_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_net_tcp(text)


def test_live_net_tcp_shows_our_listener(free_port: Callable[[], int]) -> None:
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        inode = os.fstat(server.fileno()).st_ino
        assert TcpEntry(port, "0A", inode) in procfs.read_net_tcp()


def test_live_net_tcp6_parses() -> None:
    path = Path("/proc/net/tcp6")
    if not path.exists():
        pytest.skip("IPv6 disabled")
    parse_net_tcp(path.read_text())


def test_read_socket_inodes_never_raises() -> None:
    assert procfs.read_socket_inodes(unused_pid()) == set()
    assert isinstance(procfs.read_socket_inodes(1), set)  # may be EACCES in containers


# --- fuzzing: a parser returns a value or raises ValueError, nothing else ---------------------

_PARSERS = (parse_stat, parse_net_unix, parse_net_tcp)
_SAMPLES = (stat_line(comm="a) (b c"), NET_UNIX, NET_TCP, NET_TCP6)


def _parses_or_value_error(text: str) -> None:
    for parser in _PARSERS:
        with contextlib.suppress(ValueError):
            parser(text)  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    _parses_or_value_error(text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_SAMPLES), st.integers(min_value=0), st.text(max_size=8),
       st.integers(min_value=0, max_value=6))
def test_fuzz_mutated_samples(sample: str, at: int, insert: str, cut: int) -> None:
    """Near-valid text reaches deeper branches than random text does."""
    at %= len(sample) + 1
    _parses_or_value_error(sample[:at] + insert + sample[at + cut:])


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_cmdline(raw: bytes) -> None:
    assert all(isinstance(arg, str) for arg in parse_cmdline(raw))


LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
"""


def test_the_fd_soft_limit_is_parsed_from_its_own_line() -> None:
    assert procfs.parse_fd_soft_limit(LIMITS) == 1024
    assert procfs.parse_limits(LIMITS)["Max open files"] == (1024, 524288)  # same answer
    assert procfs.parse_fd_soft_limit(LIMITS.replace("1024 ", "unlimited ")) is None
    assert procfs.parse_fd_soft_limit(LIMITS.replace("1024 ", "lots ")) is None
    assert procfs.parse_fd_soft_limit("Limit  Soft Limit\n") is None
    assert procfs.read_fd_soft_limit(os.getpid()) == resource.getrlimit(
        resource.RLIMIT_NOFILE)[0]


def test_a_process_dir_inode_is_its_own(foreign: Foreign) -> None:
    """The sampler skips processes it knows by their /proc inode: a new process (also on a
    recycled pid) must not show an inode it saw before, and a live one keeps its own."""
    first = dict(procfs.iter_pid_inodes())
    assert first[os.getpid()] == os.stat(f"/proc/{os.getpid()}").st_ino
    assert dict(procfs.iter_pid_inodes())[os.getpid()] == first[os.getpid()]
    proc = foreign.start(["sleep", "60"])
    assert dict(procfs.iter_pid_inodes())[proc.pid] not in set(first.values())
