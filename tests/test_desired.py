"""Desired state: path resolution and the cache that spares unchanged services."""

from __future__ import annotations

from pathlib import Path

from reconciler.desired import ResolvedCache, desired_from_services
from reconciler.settings import Settings
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
