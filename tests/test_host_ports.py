"""TCP ports: listeners found with their holder; TIME_WAIT and free ports are not conflicts."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable

import pytest

from reconciler.host import holders, procfs
from reconciler.host.ports import inspect_tcp_ports
from tests.conftest import Foreign
from tests.helpers import wait_for


def test_foreign_listener_found_with_holder_and_cmdline(
        foreign: Foreign, free_port: Callable[[], int]) -> None:
    port = free_port()
    proc = foreign.listen_tcp(port)
    state = inspect_tcp_ports([port])[port]
    assert state.listening
    assert [h.pid for h in state.holders] == [proc.pid]
    assert state.holders[0].cmdline[:2] == (sys.executable, "-c")
    assert state.holders[0].session == proc.pid


def test_free_port_is_not_listening(free_port: Callable[[], int]) -> None:
    port = free_port()
    state = inspect_tcp_ports([port])[port]
    assert (state.listening, state.holders) == (False, ())


def test_no_ports_no_work() -> None:
    assert inspect_tcp_ports([]) == {}


def test_several_ports_in_one_call(foreign: Foreign, free_port: Callable[[], int]) -> None:
    busy, free = free_port(), free_port()
    proc = foreign.listen_tcp(busy)
    states = inspect_tcp_ports([busy, free])
    assert states[busy].listening and [h.pid for h in states[busy].holders] == [proc.pid]
    assert not states[free].listening


def test_time_wait_is_not_a_conflict(free_port: Callable[[], int]) -> None:
    """The side that closes first keeps the port in TIME_WAIT, with no owning process."""
    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen()
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # server side closes first → its (port) end goes to TIME_WAIT
        client.close()
    wait_for(lambda: any(e.local_port == port and e.state == "06" for e in procfs.read_net_tcp()),
             message="TIME_WAIT entry")
    state = inspect_tcp_ports([port])[port]
    assert (state.listening, state.holders) == (False, ())


def test_ipv6_listener(free_port: Callable[[], int]) -> None:
    if not socket.has_ipv6 or not os.path.exists("/proc/net/tcp6"):
        pytest.skip("no IPv6")
    port = free_port()
    with socket.socket(socket.AF_INET6) as server:
        try:
            server.bind(("::1", port))
        except OSError:
            pytest.skip("no ::1 on this host")
        server.listen()
        state = inspect_tcp_ports([port])[port]
    assert state.listening and [h.pid for h in state.holders] == [os.getpid()]


def test_candidates_spare_the_full_scan(foreign: Foreign,
                                        free_port: Callable[[], int]) -> None:
    """A pass that already knows the likely holder must not walk every process's fds."""
    port = free_port()
    proc = foreign.listen_tcp(port)

    def no_full_scan() -> list[int]:
        raise AssertionError("full /proc scan although a candidate holds the socket")

    state = inspect_tcp_ports([port], candidates=[os.getpid(), proc.pid],
                              every_pid=no_full_scan)[port]
    assert [h.pid for h in state.holders] == [proc.pid]


def test_find_socket_holders_falls_back_to_full_scan(free_port: Callable[[], int]) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", free_port()))
        server.listen()
        inode = os.fstat(server.fileno()).st_ino
        found = holders.find_socket_holders([inode, 999_999_999], candidates=[1])
    assert [p.pid for p in found[inode]] == [os.getpid()]
    assert found[999_999_999] == []
