"""The spec models on their own: units, defaults, validators, generation, JSON Schema."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from reconciler.spec.model import (
    Action,
    Backoff,
    ExecHealth,
    HttpHealth,
    LogsSpec,
    Service,
    StopSpec,
    TcpHealth,
    UnixHealth,
    spec_json_schema,
)
from reconciler.spec.units import format_duration, format_size, parse_duration, parse_size


def messages(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "\n".join(str(e["msg"]) for e in exc.value.errors())


def action(**fields: Any) -> Action:
    return Action.model_validate({"name": "api", "process": True, "cmd": ["srv"], **fields})


def service(*actions: dict[str, Any], **fields: Any) -> Service:
    return Service.model_validate({"name": "web", "actions": list(actions), **fields})


# --- units ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1m30s", 90.0),
    ("1.5s", 1.5), ("1d", 86400.0), ("0s", 0.0), (" 10s ", 10.0), ("1h2m3s", 3723.0),
])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 sec", "", "-1s", "s", "1x", "5s5", "1e3s", "five"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_bare_number_duration_asks_for_a_unit() -> None:
    with pytest.raises(ValueError, match=r"durations need a unit, e\.g\. '5s'"):
        parse_duration("5")


@pytest.mark.parametrize(("text", "size"), [
    ("10MiB", 10 * 1024**2), ("512KiB", 512 * 1024), ("1GiB", 1024**3), ("100B", 100),
    ("1kB", 1000), ("2MB", 2_000_000), ("1GB", 10**9), ("1.5KiB", 1536),
])
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["10", "10mb", "ten", "", "-1B", "1.5"])
def test_bad_sizes_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("seconds", [0.0, 0.001, 0.25, 1.5, 5.0, 90.0, 3600.0, 3723.0, 12.125])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize("size", [1, 100, 1000, 1024, 1536, 10 * 1024**2, 10**9])
def test_format_size_round_trips(size: int) -> None:
    assert parse_size(format_size(size)) == size


# --- defaults and field validation ----------------------------------------------------------

def test_defaults() -> None:
    a = Action.model_validate({"name": "job", "cmd": "true"})
    assert (a.backoff.initial, a.backoff.max, a.backoff.factor, a.backoff.reset_after) == (
        0.2, 30.0, 2.0, 30.0)
    assert a.backoff == Backoff()
    assert (a.stop.signal, a.stop.timeout) == ("SIGTERM", 10.0)
    assert (a.logs.keep, a.logs.max_size) == (5, 10 * 1024**2)
    assert a.health is None and a.restart is None and a.env == {} and a.after == []


def test_durations_and_sizes_in_models() -> None:
    b = Backoff.model_validate({"initial": "1s", "max": "1m30s", "factor": 3, "reset_after": "2m"})
    assert (b.initial, b.max, b.factor, b.reset_after) == (1.0, 90.0, 3.0, 120.0)
    assert LogsSpec.model_validate({"max_size": "512KiB"}).max_size == 512 * 1024
    with pytest.raises(ValidationError) as exc:
        StopSpec.model_validate({"timeout": 5})
    assert "durations need a unit, e.g. '5s'" in messages(exc)
    with pytest.raises(ValidationError) as exc:
        LogsSpec.model_validate({"max_size": 1000})
    assert "sizes need a unit" in messages(exc)


def test_dump_writes_durations_and_sizes_as_people_do_and_loads_back() -> None:
    a = action(backoff={"initial": "1s"}, health={"tcp": 8080, "interval": "250ms"})
    dumped = a.model_dump()
    assert dumped["backoff"]["initial"] == "1s"
    assert dumped["health"]["interval"] == "250ms"
    assert dumped["logs"]["max_size"] == "10MiB"
    assert Action.model_validate(dumped) == a


@pytest.mark.parametrize(("given", "stored"), [
    ("SIGTERM", "SIGTERM"), ("TERM", "SIGTERM"), ("int", "SIGINT"), (9, "SIGKILL"),
    ("SIGIOT", "SIGABRT"),
])
def test_stop_signal_is_normalised(given: object, stored: str) -> None:
    assert StopSpec.model_validate({"signal": given}).signal == stored


@pytest.mark.parametrize("given", ["SIGFOO", "", True, 9999])
def test_unknown_signals_are_rejected(given: object) -> None:
    with pytest.raises(ValidationError):
        StopSpec.model_validate({"signal": given})


def test_backoff_limits() -> None:
    with pytest.raises(ValidationError):
        Backoff.model_validate({"factor": 0.5})
    with pytest.raises(ValidationError):
        Backoff.model_validate({"initial": "0s"})
    with pytest.raises(ValidationError) as exc:
        Backoff.model_validate({"initial": "1m", "max": "1s"})
    assert "shorter than initial" in messages(exc)


def test_unknown_keys_are_errors_everywhere() -> None:
    for bad in ({"cmdd": "x"}, {"backoff": {"intial": "1s"}}, {"logs": {"kept": 1}},
                {"stop": {"sig": "TERM"}}, {"health": {"tcp": 1, "intervall": "1s"}}):
        with pytest.raises(ValidationError) as exc:
            action(**bad)
        assert any(e["type"] == "extra_forbidden" for e in exc.value.errors())


def test_models_are_frozen() -> None:
    a = action()
    with pytest.raises(ValidationError):
        a.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", ["web", "a", "web-1", "w-e_b", "0day"])
def test_good_names(name: str) -> None:
    assert service({"name": name, "cmd": "x"}, name=name).name == name


# No '.': `SERVICE.ACTION` must be unambiguous (`a.b`/`c` vs `a`/`b.c`).
@pytest.mark.parametrize("name", ["Web", "-web", "_x", "a/b", "", "a b", ".x", "a.b", "w.e_b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValidationError):
        service({"name": "a", "cmd": "x"}, name=name)
    with pytest.raises(ValidationError):
        service({"name": name, "cmd": "x"})


def test_cmd_forms() -> None:
    assert action(cmd=["python3", "-m", "http.server"]).argv == ["python3", "-m", "http.server"]
    assert action(cmd="echo hi && sleep 1").argv == ["/bin/sh", "-c", "echo hi && sleep 1"]
    for bad in ([], "", "   ", [""], 5, None, [1], {"a": 1}):
        with pytest.raises(ValidationError):
            action(cmd=bad)


def test_env_names_and_values() -> None:
    a = action(env={"PORT": 8080, "RATIO": 0.5, "_X": "y"})
    assert a.env == {"PORT": "8080", "RATIO": "0.5", "_X": "y"}
    for bad in ({"1X": "a"}, {"A-B": "a"}, {"A": True}, {"A": None}, {"A": ["x"]}):
        with pytest.raises(ValidationError):
            action(env=bad)


def test_tcp_ports() -> None:
    assert action(tcp_ports=[8080, 1, 65535]).tcp_ports == [8080, 1, 65535]
    for bad in ([0], [65536], [80, 80], [True], ["http"]):
        with pytest.raises(ValidationError):
            action(tcp_ports=bad)


def test_restart_policy_and_its_default() -> None:
    assert action().effective_restart == "always"
    assert Action.model_validate({"name": "m", "cmd": "x"}).effective_restart == "on-failure"
    assert action(restart="never").effective_restart == "never"
    with pytest.raises(ValidationError) as exc:
        action(restart="sometimes")
    assert exc.value.errors()[0]["type"] == "literal_error"


def test_health_probe_kinds() -> None:
    assert isinstance(action(health={"tcp": 8080}).health, TcpHealth)
    assert isinstance(action(health={"unix": "api.sock"}).health, UnixHealth)
    assert isinstance(action(health={"http": "http://127.0.0.1:8080/"}).health, HttpHealth)
    probe = action(health={"exec": "curl -f localhost", "failures": 5}).health
    assert isinstance(probe, ExecHealth) and probe.failures == 5
    assert (probe.interval, probe.timeout, probe.start_period) == (2.0, 1.0, 0.0)


@pytest.mark.parametrize("health", [
    {"tcp": 1, "http": "http://x/"}, {"interval": "2s"}, {}, 8080, {"tcp": 1, "failures": 0},
    {"http": "https://example.com/"}, {"http": "ftp://x/"}, {"tcp": 70000},
])
def test_bad_health_is_one_clear_error(health: object) -> None:
    with pytest.raises(ValidationError) as exc:
        action(health=health)
    assert len(exc.value.errors()) == 1


def test_two_probes_named_in_the_error() -> None:
    with pytest.raises(ValidationError) as exc:
        action(health={"tcp": 1, "exec": "true"})
    assert "needs exactly one of tcp, unix, http, exec (found tcp and exec)" in messages(exc)


@pytest.mark.parametrize("field", [
    {"health": {"tcp": 1}}, {"singleton": True}, {"sockets": ["a.sock"]},
    {"tcp_ports": [8080]}, {"kill_others": True}, {"pidfile": "x.pid"},
])
def test_process_only_fields_are_refused_on_one_shots(field: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as exc:
        Action.model_validate({"name": "once", "cmd": "true", **field})
    assert "only process actions" in messages(exc)
    Action.model_validate({"name": "once", "cmd": "true", "process": True, **field})


def test_paths_stay_as_written() -> None:
    a = action(pidfile="api.pid", sockets=["api.sock", "/run/x.sock"], cwd="sub/dir")
    assert (a.pidfile, a.sockets, a.cwd) == ("api.pid", ["api.sock", "/run/x.sock"], "sub/dir")


# --- service-level checks -------------------------------------------------------------------

def test_action_names_unique() -> None:
    with pytest.raises(ValidationError) as exc:
        service({"name": "a", "cmd": "x"}, {"name": "a", "cmd": "y"})
    assert "duplicate action name 'a'" in messages(exc)


def test_after_must_not_name_itself() -> None:
    """Unknown targets are the loader's (tests/test_spec_cross.py): only it sees every file."""
    with pytest.raises(ValidationError) as exc:
        service({"name": "a", "cmd": "x", "after": ["a"]})
    assert "cannot wait for itself" in messages(exc)


def test_after_cycles_are_named() -> None:
    with pytest.raises(ValidationError) as exc:
        service({"name": "x", "cmd": "x"},
                {"name": "a", "cmd": "x", "after": ["x", "b"]},
                {"name": "b", "cmd": "x", "after": ["c"]},
                {"name": "c", "cmd": "x", "after": ["a"]})
    assert "cycle a -> b -> c -> a" in messages(exc)


def test_acyclic_dependencies_are_fine() -> None:
    svc = service({"name": "a", "cmd": "x"}, {"name": "b", "cmd": "x", "after": ["a"]},
                  {"name": "c", "cmd": "x", "after": ["a", "b"]})
    assert [a.name for a in svc.actions] == ["a", "b", "c"]
    assert svc.action("b") is svc.actions[1] and svc.action("zz") is None


def test_service_needs_actions() -> None:
    with pytest.raises(ValidationError):
        Service.model_validate({"name": "web", "actions": []})
    with pytest.raises(ValidationError):
        Service.model_validate({"name": "web"})


# --- generation -----------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "name": "api", "process": True, "cmd": ["python3", "-m", "http.server", "8080"],
    "cwd": "/srv", "env": {"A": "1", "B": "2"}, "tcp_ports": [8080],
    "sockets": ["api.sock"], "pidfile": "api.pid",
}


def gen(**changes: Any) -> str:
    return Action.model_validate({**BASE, **changes}).generation()


def test_generation_is_short_hex_and_stable() -> None:
    assert re.fullmatch(r"[0-9a-f]{16}", gen())
    assert gen() == gen()


@pytest.mark.parametrize("edit", [
    {"health": {"tcp": 8080}}, {"backoff": {"initial": "1s"}}, {"logs": {"keep": 1}},
    {"restart": "never"}, {"stop": {"signal": "INT"}}, {"kill_others": True},
    {"singleton": True}, {"env": {"B": "2", "A": "1"}}, {"tcp_ports": [8080]},
])
def test_generation_ignores_edits_that_do_not_change_what_runs(edit: dict[str, Any]) -> None:
    assert gen(**edit) == gen()


def test_generation_ignores_description_after_and_key_order() -> None:
    plain = service(dict(BASE), {"name": "other", "cmd": "x"})
    edited = Service.model_validate({
        "actions": [{"name": "other", "cmd": "x"},
                    dict(reversed(list({**BASE, "after": ["other"]}.items())))],
        "description": "new words", "name": "web"})
    assert plain.actions[0].generation() == edited.actions[1].generation()


@pytest.mark.parametrize("edit", [
    {"cmd": ["python3", "-m", "http.server", "8081"]}, {"cmd": "python3 -m http.server"},
    {"env": {"A": "1", "B": "3"}}, {"env": {"A": "1"}}, {"tcp_ports": [8081]},
    {"tcp_ports": [8080, 9090]}, {"cwd": "/other"}, {"sockets": []}, {"pidfile": "x.pid"},
])
def test_generation_changes_when_what_runs_changes(edit: dict[str, Any]) -> None:
    assert gen(**edit) != gen()


def test_generation_of_process_flag() -> None:
    once = {"name": "a", "cmd": "x"}
    assert Action.model_validate(once).generation() != Action.model_validate(
        {**once, "process": True}).generation()


# --- JSON Schema ----------------------------------------------------------------------------

def test_json_schema_for_editors() -> None:
    schema = spec_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"]
    assert {"name", "description", "actions"} <= set(schema["properties"])
    assert {"name", "actions"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
    action_schema = schema["$defs"]["Action"]
    assert action_schema["additionalProperties"] is False
    assert {"cmd", "process", "after", "health", "tcp_ports"} <= set(action_schema["properties"])


def test_json_schema_describes_durations_as_strings() -> None:
    backoff = spec_json_schema()["$defs"]["Backoff"]["properties"]
    initial = backoff["initial"]
    assert initial["type"] == "string" and initial["default"] == "200ms"
    pattern = re.compile(initial["pattern"])
    assert pattern.match("250ms") and pattern.match("1m30s")
    assert not pattern.match("5") and not pattern.match("5 sec")
    logs = spec_json_schema()["$defs"]["LogsSpec"]["properties"]
    assert logs["max_size"]["default"] == "10MiB"
    assert re.match(logs["max_size"]["pattern"], "10MiB")
    ports = spec_json_schema()["$defs"]["Action"]["properties"]["tcp_ports"]["items"]
    assert (ports["minimum"], ports["maximum"]) == (1, 65535)
