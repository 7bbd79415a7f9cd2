"""Every number and list in a spec is bounded, names cannot contain '.', and no message
carries a raw control character (DESIGN §8.1 "Names and paths")."""

from __future__ import annotations

import textwrap

import pytest

from reconciler.spec.load import SpecErrors, parse_text
from reconciler.spec.model import spec_json_schema


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecErrors) as caught:
        parse_text(textwrap.dedent(text), "f.yaml")
    return [str(e) for e in caught.value.errors]


def one_action(fields: str) -> str:
    return f"name: web\nactions:\n  - name: api\n    process: true\n    cmd: [srv]\n{fields}"


# --- names ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, position", [
    ("name: a.b\nactions:\n  - {name: c, cmd: [x]}\n", "f.yaml:1:7"),
    ("name: a\nactions:\n  - {name: b.c, cmd: [x]}\n", "f.yaml:3:12"),
])
def test_dotted_names_are_refused_at_their_position(text: str, position: str) -> None:
    """`a.b`/`c` and `a`/`b.c` would both be `restart a.b.c` and share a default pidfile."""
    [error] = errors_of(text)
    assert error.startswith(f"{position}: ")
    assert "invalid name" in error and "no '.'" in error


# --- bounds ---------------------------------------------------------------------------------

BAD_VALUES = [
    ("    logs: {keep: 1000000000000}\n", "logs.keep: must be at most 100"),
    ("    logs: {keep: 101}\n", "logs.keep: must be at most 100"),
    ("    logs: {max_size: 2GiB}\n", "logs.max_size: must be at most 1GiB"),
    ("    logs: {max_size: 1KiB}\n", "logs.max_size: must be at least 4KiB"),
    ("    stop: {timeout: 2h}\n", "stop.timeout: must be at most 1h"),
    ("    backoff: {initial: 1ms}\n", "backoff.initial: must be at least 10ms"),
    ("    backoff: {max: 2h}\n", "backoff.max: must be at most 1h"),
    ("    backoff: {factor: 11}\n", "backoff.factor: must be at most 10"),
    ("    backoff: {factor: 0.5}\n", "backoff.factor: must be at least 1"),
    ("    backoff: {reset_after: 0s}\n", "backoff.reset_after: must be at least 1s"),
    ("    backoff: {reset_after: 2d}\n", "backoff.reset_after: must be at most 24h"),
    ("    health: {tcp: 80, interval: 1ms}\n", "health.interval: must be at least 10ms"),
    ("    health: {tcp: 80, timeout: 2h}\n", "health.timeout: must be at most 1h"),
    ("    health: {tcp: 80, failures: 101}\n", "health.failures: must be at most 100"),
    ("    health: {tcp: 80, start_period: 2h}\n", "health.start_period: must be at most 1h"),
    ("    health: {tcp: 70000}\n", "health.tcp: must be at most 65535"),
    ("    tcp_ports: [0]\n", "tcp_ports[0]: must be at least 1"),
]


@pytest.mark.parametrize("fields, message", BAD_VALUES)
def test_out_of_bounds_numbers_are_errors_at_their_value(fields: str, message: str) -> None:
    [error] = errors_of(one_action(fields))
    assert error.startswith("f.yaml:6:"), error
    assert f"actions[0].{message}" in error


@pytest.mark.parametrize("fields", [
    "    logs: {keep: 0, max_size: 4KiB}\n",
    "    logs: {keep: 100, max_size: 1GiB}\n",
    "    stop: {timeout: 0s}\n",
    "    stop: {timeout: 1h}\n",
    "    backoff: {initial: 10ms, max: 1h, factor: 10, reset_after: 1s}\n",
    "    backoff: {factor: 1, reset_after: 1d}\n",
    "    health: {tcp: 65535, interval: 10ms, timeout: 1h, failures: 100}\n",
])
def test_values_at_the_bounds_are_accepted(fields: str) -> None:
    [service] = parse_text(one_action(fields), "f.yaml")
    assert service.actions[0].name == "api"


@pytest.mark.parametrize("fields, message", [
    ("    tcp_ports: [{ports}]\n", "tcp_ports: must have at most 64 items"),
    ("    sockets: [{socks}]\n", "sockets: must have at most 64 items"),
    ("    env: {{{env}}}\n", "env: must have at most 1000 items"),
])
def test_lists_are_bounded(fields: str, message: str) -> None:
    text = one_action(fields.format(ports=", ".join(str(p) for p in range(1000, 1065)),
                                    socks=", ".join(f"s{i}" for i in range(65)),
                                    env=", ".join(f"E{i}: x" for i in range(1001))))
    assert any(f"actions[0].{message}" in e for e in errors_of(text))


def test_argv_and_strings_are_bounded() -> None:
    long_argv = "[" + ", ".join(["a"] * 4097) + "]"
    assert any("cmd: must have at most 4096 items" in e
               for e in errors_of(f"name: w\nactions:\n  - {{name: a, cmd: {long_argv}}}\n"))
    huge = "x" * (64 * 1024 + 1)
    assert any("must be at most 65536 characters" in e
               for e in errors_of(f"name: w\nactions:\n  - {{name: a, cmd: [{huge}]}}\n"))
    assert any("must be at most 4096 characters" in e
               for e in errors_of(f"name: w\ndescription: {'d' * 4097}\n"
                                  "actions:\n  - {name: a, cmd: [x]}\n"))


def test_too_many_actions() -> None:
    actions = "".join(f"  - {{name: a{i}, cmd: [x]}}\n" for i in range(10_001))
    assert any("actions: must have at most 10000 items" in e
               for e in errors_of(f"name: w\nactions:\n{actions}"))


def test_json_schema_shows_the_bounds() -> None:
    defs = spec_json_schema()["$defs"]
    keep = defs["LogsSpec"]["properties"]["keep"]
    assert (keep["minimum"], keep["maximum"]) == (0, 100)
    assert defs["Backoff"]["properties"]["factor"]["maximum"] == 10
    assert "from 1s to 24h" in defs["Backoff"]["properties"]["reset_after"]["description"]
    assert defs["Action"]["properties"]["tcp_ports"]["maxItems"] == 64


# --- control characters ---------------------------------------------------------------------

def test_a_newline_in_a_name_is_escaped_in_its_one_error_line() -> None:
    [error] = errors_of('name: "web\\nf.yaml:1:1: forged"\nactions:\n  - {name: a, cmd: [x]}\n')
    assert "\n" not in error
    assert "web\\nf.yaml" in error


@pytest.mark.parametrize("text", [
    'name: w\nactions:\n  - {name: a, cmd: [x], "res\\ntart": always}\n',  # unknown key
    'name: w\nactions:\n  - {name: a, cmd: [x], after: ["b\\x1b[2J"]}\n',  # unknown action
    'name: w\nactions:\n  - {name: a, cmd: [x], stop: {signal: "T\\rERM"}}\n',  # did you mean
    'name: w\nactions:\n  - {name: a, cmd: [x], backoff: {max: "5\\u2028s"}}\n',
])
def test_control_characters_never_reach_a_message(text: str) -> None:
    for error in errors_of(text):
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029"
                       for c in error), repr(error)
