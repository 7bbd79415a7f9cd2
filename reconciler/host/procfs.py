"""Every byte of /proc text this project reads is parsed here, and only here.

Modelled on psutil's `_pslinux.py`: pure `parse_*` functions over text (easy to test and to
fuzz, because they either return a value or raise `ValueError`, never anything else) and thin
`read_*` functions that do the I/O and turn "the process went away" into `None` or an empty
result. A process can vanish between any two reads, so no reader may raise for that.

`/proc/net/*` shows only the reader's network namespace; sockets in other namespaces are
invisible here.
"""

from __future__ import annotations

import functools
import os

from reconciler.tuples import NamedTuple  # typing's, without importing typing (status)

TYPE_CHECKING = False  # not typing's: `status` reads /proc through here (issue 13)
if TYPE_CHECKING:
    from collections.abc import Iterator

PROC = "/proc"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of utime, stime and starttime
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")  # the unit of rss
TCP_LISTEN = "0A"  # TCP_LISTEN in include/net/tcp_states.h, as printed by /proc/net/tcp
UNIX_LISTENING_FLAG = 0x00010000  # __SO_ACCEPTCON: the socket called listen()

_HEX = frozenset("0123456789abcdefABCDEF")  # string.hexdigits: `string` compiles a regex
_FS_ENCODING = "utf-8"
_STAT_MAX = 4096  # a stat line is well under 1 KiB whatever the command name


# --- strict number parsing: int() also accepts "0x1f", " 1_0 ", and non-ASCII digits ---------


def _dec(token: str) -> int:
    if not (token.isascii() and token.isdigit()):
        raise ValueError(f"not a decimal number: {token!r}")
    return int(token)


def _signed(token: str) -> int:
    return -_dec(token[1:]) if token.startswith("-") else _dec(token)


def _hex(token: str) -> int:
    if not token or not _HEX.issuperset(token):
        raise ValueError(f"not a hex number: {token!r}")
    return int(token, 16)


def _lines(text: str) -> list[str]:
    """Split on newlines only: `str.splitlines` also splits on \\x0b, \\x1c, U+2028, …, which
    may legitimately appear inside a socket path."""
    return [line for line in text.split("\n") if line.strip()]


# --- boot id ---------------------------------------------------------------------------------


@functools.cache
def read_boot_id() -> str:
    """The boot id never changes while this process lives (a reboot ends it), so read once.
    Read with `os.read` and decoded as bytes: a text file would look up (import) the ascii
    codec, a visible part of `status`' start (issue 13)."""
    fd = os.open(f"{PROC}/sys/kernel/random/boot_id", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 4096).decode("ascii").strip()
    finally:
        os.close(fd)


# --- /proc/<pid>/stat ------------------------------------------------------------------------


class Stat(NamedTuple):
    """The fields of /proc/<pid>/stat we use. `starttime` (clock ticks since boot) is what
    makes a pid an identity; `session` and `pgrp` find a job's processes."""

    pid: int
    comm: str
    state: str  # one letter: R S D Z T t X I …
    ppid: int
    pgrp: int
    session: int
    starttime: int  # clock ticks after boot (field 22)

    @property
    def zombie(self) -> bool:
        """Zombies and dead tasks keep their pid but cannot run or be signalled."""
        return self.state in ("Z", "X", "x")


def parse_stat(text: str) -> Stat:
    """Parse /proc/<pid>/stat. The command name sits in parentheses and may itself contain
    spaces and parentheses, so everything numeric is read after the LAST `)`."""
    lparen, rparen = text.find("("), text.rfind(")")
    if lparen < 0 or rparen < lparen:
        raise ValueError("stat: no (comm) field")
    pid = _dec(text[:lparen].strip())
    rest = text[rparen + 1:].split()
    if len(rest) < 20:
        raise ValueError(f"stat: {len(rest)} fields after comm, need at least 20")
    state = rest[0]
    if len(state) != 1 or not state.isascii() or not state.isalpha():
        raise ValueError(f"stat: bad state {state!r}")
    return Stat(pid=pid, comm=text[lparen + 1:rparen], state=state, ppid=_dec(rest[1]),
                pgrp=_dec(rest[2]), session=_dec(rest[3]), starttime=_dec(rest[19]))


class StatUsage(NamedTuple):
    """What /proc/<pid>/stat says a process has used (fields 3, 14, 15, 20, 22, 24), with
    its start time to tell whose it is. A named tuple, as psutil's are: a sampling round
    makes one per process on the host, and a frozen dataclass cost four times as much."""

    state: str
    utime: int  # clock ticks in user mode
    stime: int  # clock ticks in kernel mode
    threads: int
    starttime: int
    rss_pages: int
    ppid: int = 0
    session: int = 0

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X", "x")

    @property
    def cpu_seconds(self) -> float:
        return (self.utime + self.stime) / CLOCK_TICKS

    @property
    def rss_bytes(self) -> int:
        return self.rss_pages * PAGE_BYTES


def parse_stat_usage(raw: bytes) -> StatUsage:
    """The usage fields of a stat line, read on every scrape for every job: only the
    fields it needs, split once (`parse_stat` does the full, stricter job for identities)."""
    rparen = raw.rfind(b")")
    rest = raw[rparen + 1:].split(None, 22)  # the fields up to rss; the rest stays one string
    if rparen < 0 or len(rest) < 22:
        raise ValueError("stat: too few fields after comm")
    state = rest[0].decode("ascii", "replace")
    try:  # int() on bytes: the kernel's numbers; anything else is a ValueError
        return StatUsage(state, int(rest[11]), int(rest[12]), int(rest[17]), int(rest[19]),
                         max(int(rest[21]), 0), int(rest[1]), int(rest[3]))
    except ValueError:
        raise ValueError("stat: a usage field is not a number") from None


def parse_cmdline(raw: bytes) -> tuple[str, ...]:
    """NUL-separated argv. Programs that rewrite their argv (nginx, postgres, sshd) often
    leave one space-separated string instead; split that on spaces as psutil does."""
    if not raw:
        return ()
    if raw.endswith(b"\0"):
        raw = raw[:-1]
        parts = raw.split(b"\0")
    elif b"\0" in raw:
        parts = raw.split(b"\0")
    else:
        parts = raw.split(b" ")
    return tuple(p.decode(_FS_ENCODING, "replace") for p in parts)


class _ProcDir:
    """A directory fd on /proc/<pid> for a `with` block (None when the process is gone).
    Files opened through it belong to THAT process even if the pid is recycled meanwhile
    (reads then fail with ESRCH instead of returning another process's data), so several
    files read through one dir fd are a consistent snapshot. A class rather than a
    `contextlib.contextmanager`: `status` reads /proc through this module, and contextlib
    is a visible part of its start (issue 13)."""

    __slots__ = ("fd",)

    def __init__(self, pid: int) -> None:
        try:
            self.fd: int | None = os.open(f"{PROC}/{int(pid)}",
                                          os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self.fd = None

    def __enter__(self) -> int | None:
        return self.fd

    def __exit__(self, *exc_info: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _read_at(dir_fd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:  # ESRCH: the process died (or the pid moved on) while we read
        return None
    finally:
        os.close(fd)


def _stat_at(dir_fd: int) -> Stat | None:
    return _stat_from(_read_at(dir_fd, "stat"))


def _stat_from(raw: bytes | None) -> Stat | None:
    if raw is None:
        return None
    try:
        return parse_stat(raw.decode(_FS_ENCODING, "replace"))
    except ValueError:
        return None


def read_stat(pid: int) -> Stat | None:
    """None when the process does not exist (any more).

    One open and one read (the kernel renders the whole line, well under 4 KiB, at the
    first read): this runs for every spawn and every identity check.
    """
    return _stat_from(_read_stat_line(pid))


def _read_stat_line(pid: int) -> bytes | None:
    """The raw /proc/<pid>/stat line; None when the process is gone (also mid-read)."""
    try:
        fd = os.open(f"{PROC}/{int(pid)}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, _STAT_MAX)
    except OSError:  # ESRCH: gone while we read
        return None
    finally:
        os.close(fd)


def read_process(pid: int) -> tuple[Stat, tuple[str, ...]] | None:
    """stat and cmdline of the SAME process (one dir fd), or None if it is gone."""
    with _ProcDir(pid) as dir_fd:
        return None if dir_fd is None else _process_at(dir_fd)


def _process_at(dir_fd: int) -> tuple[Stat, tuple[str, ...]] | None:
    stat = _stat_at(dir_fd)
    raw = _read_at(dir_fd, "cmdline")
    if stat is None or raw is None:
        return None
    return stat, parse_cmdline(raw)


def read_usage(pid: int) -> tuple[StatUsage, int | None] | None:
    """The usage of `pid` and its number of open fds (None: not ours to count), or None if
    it is gone. No dir fd (a scrape does this for a thousand jobs): the fds are counted
    first and stat read second, so when the start time in stat is the job's, the process
    that had the fds was that job too (a pid is reused only after its process is gone)."""
    fds = count_fds(pid)
    usage = read_stat_usage(pid)
    return None if usage is None else (usage, fds)


def count_fds(pid: int) -> int | None:
    """Since Linux 6.2 the size of /proc/<pid>/fd is its number of open fds: one stat
    instead of a listing. An older kernel says 0, and then the listing answers (a process
    with no fd at all pays for it)."""
    path = f"{PROC}/{int(pid)}/fd"
    try:
        size = os.stat(path).st_size
        return size if size > 0 else len(os.listdir(path))
    except OSError:
        return None


def open_stat(pid: int) -> int | None:
    """An fd on /proc/<pid>/stat for `reread_stat_usage`: one syscall per look instead of
    three. It stays that process's: once the process has ended a read fails (ESRCH), and
    a recycled pid is a new /proc entry the fd does not see."""
    try:
        return os.open(f"{PROC}/{int(pid)}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def reread_stat_usage(fd: int) -> StatUsage | None:
    """`parse_stat_usage` of the process `fd` (from `open_stat`) was opened on; None once
    it has ended."""
    try:
        return parse_stat_usage(os.pread(fd, _STAT_MAX, 0))
    except (OSError, ValueError):
        return None


def read_stat_usage(pid: int) -> StatUsage | None:
    """`parse_stat_usage` of a live process; None when it is gone."""
    raw = _read_stat_line(pid)
    try:
        return None if raw is None else parse_stat_usage(raw)
    except ValueError:
        return None


def _read_small(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 8192).decode(_FS_ENCODING, "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def read_oom_score(pid: int) -> int | None:
    text = _read_small(f"{PROC}/{int(pid)}/oom_score")
    try:
        return _dec(text.strip()) if text is not None else None
    except ValueError:
        return None


def read_wchan(pid: int) -> str:
    """Where the process sleeps in the kernel ("0" or "" when it runs or we may not see)."""
    text = _read_small(f"{PROC}/{int(pid)}/wchan")
    return "" if text is None else text.strip()[:64]


def parse_limits(text: str) -> dict[str, tuple[int | None, int | None]]:
    """/proc/<pid>/limits: `Max open files  1024  4096  files` → {"Max open files":
    (1024, 4096)}; `unlimited` is None. The name is everything before the first run of two
    spaces; lines that do not parse are skipped."""
    found: dict[str, tuple[int | None, int | None]] = {}
    for line in _lines(text)[1:]:
        name, _, rest = line.partition("  ")
        fields = rest.split()
        if len(fields) < 2:
            continue
        try:
            soft, hard = (None if f == "unlimited" else _dec(f) for f in fields[:2])
        except ValueError:
            continue
        found[name.strip()] = (soft, hard)
    return found


def read_fd_soft_limit(pid: int) -> int | None:
    text = _read_small(f"{PROC}/{int(pid)}/limits")
    return None if text is None else parse_fd_soft_limit(text)


def parse_fd_soft_limit(text: str) -> int | None:
    """The soft "Max open files" of a limits file (None: unlimited or not there); only
    that line is parsed (a whole file took 58 µs, and the sampler reads a thousand)."""
    at = text.find("\nMax open files ")
    if at < 0:
        return None
    end = text.find("\n", at + 1)
    fields = text[at + len("\nMax open files "):None if end < 0 else end].split()
    try:
        return None if not fields or fields[0] == "unlimited" else _dec(fields[0])
    except ValueError:
        return None


def listing_by_inode() -> dict[int, str]:
    """/proc's entries as inode -> name, every entry (a caller keeps the numeric ones):
    one comprehension, so comparing two listings as key sets runs in C."""
    with os.scandir(PROC) as entries:
        return {entry.inode(): entry.name for entry in entries}


def last_pid() -> int:
    """The pid the kernel handed out last in our pid namespace (/proc/loadavg's fifth
    field, `0.40 0.71 0.94 1/84 7667`). Pids are handed out in order, so every process
    (and thread) started since an earlier reading has a pid above it, until the counter
    wraps around at pid_max."""
    with open(f"{PROC}/loadavg", "rb") as f:
        return int(f.read().rsplit(maxsplit=1)[1])


def pid_dir_inode(pid: int) -> int | None:
    """The inode number of /proc/<pid> (what readdir gives as d_ino, see `iter_pid_inodes`)
    if `pid` is a process's (thread-group leader's) pid; None for a thread's id (/proc
    finds threads by id too, without listing them), a pid not (or no longer) in use, and
    inode 1 (what /proc gives when it could not make the entry)."""
    # the inode and the status read through one dir fd: the same process, whatever the
    # pid does meanwhile
    with _ProcDir(pid) as dir_fd:
        if dir_fd is None:
            return None
        try:
            ino = os.fstat(dir_fd).st_ino
        except OSError:
            return None
        status = _read_at(dir_fd, "status")
    for line in (status or b"").splitlines():
        if line.startswith(b"Tgid:"):
            fields = line.split()
            tgid = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
            return ino if tgid == pid and ino != 1 else None
    return None


def pid_exists(pid: int) -> bool:
    """/proc has an entry for this id (a process's or a thread's)."""
    return os.path.exists(f"{PROC}/{pid}")


def iter_pid_inodes() -> Iterator[tuple[int, int]]:
    """Every process's pid with the inode number of its /proc directory (readdir's d_ino,
    no extra syscall). A new process gets a new inode, also on a recycled pid, and a process
    keeps its own while it lives, so a reader may skip what it learnt about an unchanged
    one. (A /proc dentry dropped under memory pressure comes back with a new number: the
    reader reads again, no harm.)"""
    with os.scandir(PROC) as entries:
        for entry in entries:
            name = entry.name
            if name.isascii() and name.isdigit():
                yield int(name), entry.inode()


def iter_pids() -> Iterator[int]:
    """Thread-group ids only: /proc lists processes, threads live under /proc/<pid>/task."""
    for name in os.listdir(PROC):
        if name.isascii() and name.isdigit():
            yield int(name)


# --- /proc/<pid>/environ ---------------------------------------------------------------------

ENVIRON_MAX = 128 * 1024  # environ can be huge (up to the arg limit); a marker sits near the top
# The kernel fills a read of environ up to its size (page by page), so a short read is its end.
_ENVIRON_FIRST = 16 * 1024


def parse_environ_var(raw: bytes, name: bytes) -> str | None:
    """The value of `name` in a NUL-separated environ block, or None. The FIRST occurrence
    wins, as getenv() sees it; a truncated last entry (bounded read) is not trusted."""
    key = name + b"="
    if raw.startswith(key):
        start = len(key)
    else:
        at = raw.find(b"\0" + key)  # after a NUL: "X=RECONCILER_JOB_ID=…" is X's value
        if at < 0:
            return None
        start = at + 1 + len(key)
    end = raw.find(b"\0", start)
    if end < 0:
        if len(raw) >= ENVIRON_MAX:
            return None  # cut off by the bounded read: the value may be longer
        end = len(raw)
    return raw[start:end].decode(_FS_ENCODING, "replace")


def _read_bounded(fd: int, limit: int) -> bytes:
    chunks = []
    size = 0
    while size < limit and (chunk := os.read(fd, min(65536, limit - size))):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_environ_var(pid: int, name: str, *, blank: str | None = None) -> str | None:
    """One variable of another process's initial environment (what it was exec'd with, not
    later setenv()s), or None when it is unset, the process is gone or a zombie, or not ours
    to read (EACCES as non-root). At most ENVIRON_MAX bytes are read. Evidence only: a
    process can exec itself with any environment, so verify identity before acting.

    `blank` is returned instead when the read found nothing at all. Besides a zombie and a
    kernel thread, that is a process caught inside execve(): once the new image replaced the
    old one, and before the kernel has copied the new environment in, environ reads empty.
    The parent of a vfork()ed child, as `subprocess.Popen`, runs again already then (about
    one read in 40 right after Popen returned, on this project's 2-core VM), so a caller
    that remembers the answer must not take such a read for "unset"."""
    try:
        fd = os.open(f"{PROC}/{int(pid)}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, _ENVIRON_FIRST)  # most environments fit: one read, no EOF read
        if len(raw) == _ENVIRON_FIRST:
            raw += _read_bounded(fd, ENVIRON_MAX - _ENVIRON_FIRST)
    except OSError:  # ESRCH, EACCES at read time (ptrace check), EIO …
        return None
    finally:
        os.close(fd)
    return parse_environ_var(raw, os.fsencode(name)) if raw else blank


def read_process_environ(pid: int, name: str, *, blank: str | None = None,
                         ) -> tuple[Stat, tuple[str, ...], str | None] | None:
    """stat, cmdline and one environ variable of the SAME process (one dir fd), or None if
    it is gone: what a membership check needs to act on a consistent snapshot. `blank`: as
    for `read_environ_var`, the variable's value when the read found nothing at all."""
    with _ProcDir(pid) as dir_fd:
        process = None if dir_fd is None else _process_at(dir_fd)
        if dir_fd is None or process is None:
            return None
        stat, cmdline = process
        try:
            fd = os.open("environ", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return stat, cmdline, None
        try:
            raw = _read_bounded(fd, ENVIRON_MAX)
        except OSError:  # not ours to read, or gone while we read: no evidence either way
            raw = b""
        finally:
            os.close(fd)
        return stat, cmdline, parse_environ_var(raw, os.fsencode(name)) if raw else blank


# --- /proc/<pid>/fd --------------------------------------------------------------------------


def parse_socket_link(target: str) -> int | None:
    """`socket:[12345]` → 12345; anything else (files, pipes, anon inodes) → None."""
    if target.startswith("socket:[") and target.endswith("]"):
        try:
            return _dec(target[8:-1])
        except ValueError:
            return None
    return None


def read_socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets this process holds. Empty if it is gone, a zombie, or not ours
    to look at (PermissionError): callers must treat "not found" as "unknown", not "free"."""
    try:
        dir_fd = os.open(f"{PROC}/{int(pid)}/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return set()
    inodes: set[int] = set()
    try:
        for name in os.listdir(dir_fd):
            try:
                inode = parse_socket_link(os.readlink(name, dir_fd=dir_fd))
            except FileNotFoundError:  # the fd was closed since listdir
                continue
            if inode is not None:
                inodes.add(inode)
    except OSError:  # EACCES on every link (not ours to inspect), ESRCH (exited)
        return set()
    finally:
        os.close(dir_fd)
    return inodes


# --- /proc/net/unix --------------------------------------------------------------------------


class UnixEntry(NamedTuple):
    """One line of /proc/net/unix: which inode listens on which socket path."""

    inode: int
    listening: bool
    path: str  # "" when unbound; abstract names start with "@"


def parse_net_unix(text: str) -> list[UnixEntry]:
    """Parse /proc/net/unix:
    `Num: RefCount Protocol Flags Type St Inode [Path]` (Path may contain spaces)."""
    entries = []
    for line in _lines(text):
        fields = line.split(None, 7)
        if fields[0] == "Num":
            continue
        if len(fields) < 7 or not fields[0].endswith(":"):
            raise ValueError(f"net/unix: malformed line {line!r}")
        _hex(fields[0][:-1])
        flags = _hex(fields[3])
        entries.append(UnixEntry(inode=_dec(fields[6]),
                                 listening=bool(flags & UNIX_LISTENING_FLAG),
                                 path=fields[7] if len(fields) == 8 else ""))
    return entries


def read_net_unix() -> list[UnixEntry]:
    with open(f"{PROC}/net/unix", "rb") as f:
        return parse_net_unix(os.fsdecode(f.read()))  # paths compare equal to os paths


# --- /proc/net/tcp, /proc/net/tcp6 -----------------------------------------------------------


class TcpEntry(NamedTuple):
    """One line of /proc/net/tcp{,6}: a local port, its state and the socket's inode."""

    local_port: int
    state: str  # two upper-case hex digits; "0A" is LISTEN
    inode: int  # 0 for sockets no process holds any more (TIME_WAIT, …)

    @property
    def listening(self) -> bool:
        return self.state == TCP_LISTEN


def parse_net_tcp(text: str) -> list[TcpEntry]:
    """Parse /proc/net/tcp or tcp6 (same columns; tcp6 addresses are 32 hex digits):
    `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode …`."""
    entries = []
    for line in _lines(text):
        fields = line.split()
        if fields[0] == "sl":
            continue
        if len(fields) < 10 or not fields[0].endswith(":"):
            raise ValueError(f"net/tcp: malformed line {line!r}")
        _dec(fields[0][:-1])
        address, sep, port = fields[1].rpartition(":")
        if not sep or len(address) not in (8, 32) or len(port) != 4 or len(fields[3]) != 2:
            raise ValueError(f"net/tcp: malformed address or state in {line!r}")
        _hex(address)
        _hex(fields[3])
        entries.append(TcpEntry(local_port=_hex(port), state=fields[3].upper(),
                                inode=_dec(fields[9])))
    return entries


def read_net_tcp() -> list[TcpEntry]:
    """IPv4 and IPv6 together; tcp6 is missing when IPv6 is disabled."""
    entries: list[TcpEntry] = []
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{PROC}/net/{name}", "rb") as f:
                text = f.read().decode("ascii", "replace")
        except FileNotFoundError:
            continue
        entries.extend(parse_net_tcp(text))
    return entries



# --- file locks ------------------------------------------------------------------------------


class LockEntry(NamedTuple):
    """One lock held (not waited for) as `/proc/locks` shows it."""

    kind: str  # FLOCK, POSIX, OFDLCK, LEASE
    pid: int  # the holder as seen from our pid namespace (0 or -1: not visible)
    inode: int


def parse_locks(text: str) -> list[LockEntry]:
    """`1: FLOCK  ADVISORY  WRITE 1234 fe:00:2392614 0 EOF`; waiters (`1: -> FLOCK ...`) are
    skipped, and so is any line this parser does not understand."""
    entries: list[LockEntry] = []
    for line in _lines(text):
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->":
            continue
        try:
            pid = int(parts[4]) if parts[4] != "-1" else -1
            inode = _dec(parts[5].rsplit(":", 1)[1])
        except (ValueError, IndexError):
            continue
        entries.append(LockEntry(parts[1], pid, inode))
    return entries


def read_locks() -> list[LockEntry]:
    try:
        with open(f"{PROC}/locks", "rb") as f:
            return parse_locks(f.read().decode("ascii", "replace"))
    except OSError:
        return []
