"""The /proc parsers either parse or raise ValueError (never anything else), and they read
back exactly what a well-formed line (as the kernel prints it) says."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.host.procfs import (
    UNIX_LISTENING_FLAG,
    parse_net_tcp,
    parse_net_unix,
    parse_stat,
    parse_stat_usage,
)

FUZZ = settings(derandomize=True, deadline=None, database=None, max_examples=400,
                suppress_health_check=[HealthCheck.too_slow])
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
PID = st.integers(1, 4_194_304)


def either_parses_or_value_error(parser: object, text: str) -> None:
    with contextlib.suppress(ValueError):
        parser(text)  # type: ignore[operator]


# --- /proc/<pid>/stat ----------------------------------------------------------------------

# TASK_COMM_LEN is 16: up to 15 bytes of anything but NUL, spaces and parens included
COMM = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
               max_size=15) | st.sampled_from(["a) S 1 (b", ") ) )", "((", "x y", ")", "(",
                                               "kworker/0:1H", "sh) R 2 3 4 (", " "])
STATE = st.sampled_from(list("RSDZTtXxIPKWw"))


@st.composite
def stat_line(draw: st.DrawFn) -> tuple[str, dict[str, object]]:
    fields = {"pid": draw(PID), "comm": draw(COMM), "state": draw(STATE), "ppid": draw(PID),
              "pgrp": draw(PID), "session": draw(PID), "starttime": draw(U64)}
    rest = [str(draw(st.integers(-(2**31), 2**63))) for _ in range(48)]
    numbers = [fields["ppid"], fields["pgrp"], fields["session"], *rest[:15],
               fields["starttime"], *rest[15:]]
    line = f"{fields['pid']} ({fields['comm']}) {fields['state']} " + " ".join(map(str, numbers))
    return line + draw(st.sampled_from(["\n", "", " \n"])), fields


@FUZZ
@given(stat_line())
def test_stat_round_trips_any_comm(case: tuple[str, dict[str, object]]) -> None:
    line, fields = case
    stat = parse_stat(line)
    assert {k: getattr(stat, k) for k in fields} == fields


@FUZZ
@given(st.text(max_size=300))
def test_stat_random_text(text: str) -> None:
    either_parses_or_value_error(parse_stat, text)


@FUZZ
@given(stat_line())
def test_stat_usage_reads_the_start_time_of_any_line(case: tuple[str, dict[str, object]]
                                                     ) -> None:
    line, fields = case
    assert parse_stat_usage(line.encode()).starttime == fields["starttime"]


@FUZZ
@given(st.binary(max_size=400))
def test_stat_usage_random_bytes(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_stat_usage(raw)


@FUZZ
@given(stat_line(), st.integers(0, 400), st.text(max_size=5))
def test_stat_mutated(case: tuple[str, dict[str, object]], at: int, junk: str) -> None:
    line = case[0]
    at = min(at, len(line))
    either_parses_or_value_error(parse_stat, line[:at] + junk + line[at + len(junk):])
    either_parses_or_value_error(parse_stat, line[:at])


# --- /proc/net/unix -------------------------------------------------------------------------

UNIX_HEADER = "Num       RefCount Protocol Flags    Type St Inode Path\n"
# a bound path as the kernel prints it: absolute, or abstract (@…); spaces allowed inside
PATH = st.one_of(
    st.just(""),
    st.builds(lambda p, tail: p + tail, st.sampled_from(["/", "@"]),
              st.text(st.characters(blacklist_characters="\x00\n",
                                    blacklist_categories=("Cs",)), max_size=40)))


@st.composite
def unix_line(draw: st.DrawFn) -> tuple[str, tuple[int, bool, str]]:
    flags = draw(U32)
    inode = draw(U64)
    path = draw(PATH)
    line = (f"{draw(U64):016x}: {draw(U32):08X} {0:08X} {flags:08X} {draw(st.integers(1, 5)):04X} "
            f"{draw(st.integers(1, 4)):02X} {inode:5d}")
    if path:
        line += " " + path
    return line, (inode, bool(flags & UNIX_LISTENING_FLAG), path)


@FUZZ
@given(st.lists(unix_line(), max_size=6))
def test_net_unix_round_trips(lines: list[tuple[str, tuple[int, bool, str]]]) -> None:
    text = UNIX_HEADER + "".join(line + "\n" for line, _ in lines)
    entries = parse_net_unix(text)
    assert [(e.inode, e.listening, e.path) for e in entries] == [want for _, want in lines]


@FUZZ
@given(st.text(max_size=300))
def test_net_unix_random_text(text: str) -> None:
    either_parses_or_value_error(parse_net_unix, text)
    either_parses_or_value_error(parse_net_unix, UNIX_HEADER + text)


# --- /proc/net/tcp and tcp6 -----------------------------------------------------------------

TCP_HEADER = ("  sl  local_address                         remote_address                        "
              "st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")


@st.composite
def tcp_line(draw: st.DrawFn) -> tuple[str, tuple[int, str, int]]:
    six = draw(st.booleans())
    width = 32 if six else 8
    local, remote = draw(st.integers(0, 16**width - 1)), draw(st.integers(0, 16**width - 1))
    port, state, inode = draw(st.integers(0, 65535)), draw(st.integers(1, 12)), draw(U64)
    hexes = "%0*X" if draw(st.booleans()) else "%0*x"
    line = (f"{draw(st.integers(0, 99999)):4d}: {hexes % (width, local)}:{port:04X} "
            f"{hexes % (width, remote)}:{draw(st.integers(0, 65535)):04X} {state:02X} "
            f"{draw(U32):08X}:{draw(U32):08X} 00:00000000 00000000 {draw(U32):5d} "
            f"{0:8d} {inode} 1 0000000000000000 100 0 0 10 0")
    return line, (port, f"{state:02X}", inode)


@FUZZ
@given(st.lists(tcp_line(), max_size=6))
def test_net_tcp_and_tcp6_round_trip(lines: list[tuple[str, tuple[int, str, int]]]) -> None:
    text = TCP_HEADER + "".join(line + "\n" for line, _ in lines)
    entries = parse_net_tcp(text)
    assert [(e.local_port, e.state, e.inode) for e in entries] == [want for _, want in lines]
    assert [e.listening for e in entries] == [want[1] == "0A" for _, want in lines]


@FUZZ
@given(st.text(max_size=300))
def test_net_tcp_random_text(text: str) -> None:
    either_parses_or_value_error(parse_net_tcp, text)
    either_parses_or_value_error(parse_net_tcp, TCP_HEADER + text)


@FUZZ
@given(tcp_line(), st.integers(0, 200), st.text(max_size=4))
def test_net_tcp_mutated(case: tuple[str, tuple[int, str, int]], at: int, junk: str) -> None:
    line = case[0]
    at = min(at, len(line))
    either_parses_or_value_error(parse_net_tcp, line[:at] + junk + line[at + len(junk):])
