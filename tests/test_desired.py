"""Desired state: path resolution and the cache that spares unchanged services."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.desired import ResolvedCache, dependency_order, desired_from_services
from reconciler.settings import Settings
from reconciler.spec.load import SpecErrors, parse_text
from reconciler.spec.model import Service

SETTINGS = Settings(specs_dir=Path("/specs"), state_dir=Path("/state"))


def service(name: str, cmd: str = "sleep 1", **action: object) -> Service:
    return Service.model_validate(
        {"name": name, "actions": [{"name": "main", "process": True, "cmd": cmd, **action}]})


def test_relative_paths_resolve_under_the_state_and_specs_dirs() -> None:
    [action] = desired_from_services([service("web", sockets=["web.sock"], cwd="app")],
                                     SETTINGS).actions
    assert action.sockets == ("/state/run/web.sock",)
    assert action.pidfile == "/state/run/web.main.pid"
    assert action.cwd == "/specs/app"
    assert action.log_path == "/state/logs/web/main.log"


def test_cache_reuses_the_actions_of_the_same_service_object() -> None:
    cache: ResolvedCache = {}
    web, db = service("web"), service("db")
    first = desired_from_services([web, db], SETTINGS, cache)
    again = desired_from_services([web, db], SETTINGS, cache)
    assert all(a is b for a, b in zip(first.actions, again.actions, strict=True))
    assert again == desired_from_services([web, db], SETTINGS)  # same as without a cache


def test_cache_resolves_a_new_object_even_if_equal_and_forgets_removed_services() -> None:
    cache: ResolvedCache = {}
    web, db = service("web"), service("db")
    first = desired_from_services([web, db], SETTINGS, cache)
    edited = service("web", cmd="sleep 2")
    second = desired_from_services([edited], SETTINGS, cache)
    assert [a.argv for a in second.actions] == [("/bin/sh", "-c", "sleep 2")]
    assert second.actions[0] is not first.actions[1]
    assert set(cache) == {id(edited)}  # db and the old web are gone from the cache


def chain(n: int, backwards: bool) -> str:
    """One service whose n actions wait for each other in a line. Written backwards (each
    action waits for the NEXT one), a depth-first walk must go n levels deep."""
    lines = ["name: chain", "actions:"]
    for i in range(n):
        dep = i + 1 if backwards else i - 1
        after = f", after: [a{dep}]" if 0 <= dep < n else ""
        lines.append(f"  - {{name: a{i}, cmd: [x]{after}}}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("n", [1_500, 10_000])
def test_long_after_chains_load_and_order_without_recursion(n: int) -> None:
    """A 1 500-action chain hit the recursion limit and failed every pass; validating
    10 000 took 13-19 s (quadratic). ~1.5 s here is YAML parsing, linear."""
    [svc] = parse_text(chain(n, backwards=True), "f.yaml")
    order = [a.name for a in dependency_order(svc)]
    assert order == [f"a{i}" for i in reversed(range(n))]
    if n <= 1_500:  # resolving is linear too; 10 000 would only make the test slower
        actions = desired_from_services([svc], SETTINGS).actions
        assert [a.name for a in actions] == order


def test_order_keeps_spec_order_where_free() -> None:
    svc = Service.model_validate({"name": "s", "actions": [
        {"name": "c", "cmd": "x", "after": ["b"]}, {"name": "a", "cmd": "x"},
        {"name": "b", "cmd": "x", "after": ["a"]}, {"name": "d", "cmd": "x"}]})
    assert [a.name for a in dependency_order(svc)] == ["a", "b", "c", "d"]


def test_a_cycle_in_a_long_chain_is_named() -> None:
    text = chain(2_000, backwards=True).replace("{name: a1999, cmd: [x]}",
                                                "{name: a1999, cmd: [x], after: [a1997]}")
    with pytest.raises(SpecErrors) as caught:
        parse_text(text, "f.yaml")
    [error] = caught.value.errors
    assert "cycle a1997 -> a1998 -> a1999 -> a1997" in error.message
    assert error.line == 2002  # a1999's entry `a1997`: it closes the cycle
