"""Desired state: the loaded specs, with every path resolved, ready for `plan`.

Path resolution lives here (not in the spec model, not in the planner) because it needs the
settings: relative `pidfile`/`sockets` are resolved against `<state-dir>/run/` and relative
`cwd` against the specs dir, so an example spec works wherever the state dir is.
"""

from __future__ import annotations

import os
import signal
from collections.abc import (
    Callable,
    Collection,
    Hashable,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from reconciler import logpaths
from reconciler.environment import minimal_env
from reconciler.spec.model import Action, Health, Service, UnixHealth, after_targets
from reconciler.state.records import JobSpec

if TYPE_CHECKING:  # types only: resolving reads what it is given, never the environment
    from reconciler.settings import Settings
    from reconciler.spec.load import LoadResult


T = TypeVar("T")

@dataclass(frozen=True, slots=True)
class DesiredAction:
    """One action as it must run on this host: its spec with every path resolved, its
    complete environment and its generation. What `plan` compares the records against."""

    service: str
    spec: Action
    generation: str
    argv: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...]  # the complete environment its processes get
    pidfile: str | None  # process actions only
    sockets: tuple[str, ...]
    log_path: str
    health: Health | None  # with a relative unix probe path resolved like `sockets`
    key: tuple[str, str] = field(init=False, repr=False, compare=False)  # (service, action)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.service, self.spec.name))  # asked for often

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stop_signal(self) -> int:
        return int(signal.Signals[self.spec.stop.signal])

    def job_spec(self) -> JobSpec:
        """What a job must remember to be stopped and cleaned correctly after its spec is gone."""
        return JobSpec(
            argv=self.argv, pidfile=self.pidfile, sockets=self.sockets,
            tcp_ports=tuple(self.spec.tcp_ports), stop_signal=self.spec.stop.signal,
            stop_timeout=self.spec.stop.timeout, log_path=self.log_path,
            health=self.spec.health is not None, keep_logs=self.spec.logs.keep,
            max_rss=self.spec.limits.max_rss)

    @property
    def max_rss(self) -> int | None:
        """`limits.max_rss` in bytes, None when unset (enforced by sampling, not an rlimit)."""
        return self.spec.limits.max_rss

    @property
    def rlimits(self) -> tuple[tuple[str, int], ...]:
        """The rlimits its processes start with: (spec key, value), `spec.model.UNLIMITED`
        for unlimited; host/spawn.py applies them before the command runs."""
        return self.spec.limits.rlimits()


@dataclass(frozen=True, slots=True)
class Desired:
    """Everything the specs ask for, in the order `plan` must consider it."""

    # dependencies first (across services too), else services in name order, spec order
    actions: tuple[DesiredAction, ...]
    # service -> why it is not desired on this host (its placement does not match)
    unplaced: Mapping[str, str] = field(default_factory=dict)
    # service -> its action names, for resolving `after:` entries
    actions_of: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # derived once (a keyed pass asks about a few services out of thousands, every pass):
    # (service, action) -> its place in `actions`; a service's actions; the services each
    # service waits for (`after:`, other services only)
    positions: Mapping[tuple[str, str], int] = field(init=False, repr=False, compare=False)
    by_service: Mapping[str, tuple[DesiredAction, ...]] = field(init=False, repr=False,
                                                                compare=False)
    waits_on: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[DesiredAction]] = {}
        waits_on: dict[str, set[str]] = {}
        for action in self.actions:
            grouped.setdefault(action.service, []).append(action)
            for dep in action.spec.after:
                waits_on.setdefault(action.service, set()).update(
                    s for s, _ in self.waits_for(action.service, dep) if s != action.service)
        object.__setattr__(self, "positions", {a.key: i for i, a in enumerate(self.actions)})
        object.__setattr__(self, "by_service", {s: tuple(a) for s, a in grouped.items()})
        object.__setattr__(self, "waits_on", {s: frozenset(d) for s, d in waits_on.items()})

    @property
    def services(self) -> frozenset[str]:
        return frozenset(self.by_service)

    def keys(self) -> KeysView[tuple[str, str]]:
        """The (service, action) keys of every desired action."""
        return self.positions.keys()

    def action(self, key: tuple[str, str]) -> DesiredAction | None:
        """The desired action of a (service, action) key, if any (a job's: `job.key`)."""
        at = self.positions.get(key)
        return self.actions[at] if at is not None else None

    def of_services(self, services: Collection[str]) -> list[DesiredAction]:
        """The actions of `services`, in the order of `actions`."""
        found = [a for service in services for a in self.by_service.get(service, ())]
        positions = self.positions
        found.sort(key=lambda a: positions[a.key])
        return found

    def waits_for(self, service: str, dep: str) -> list[tuple[str, str]]:
        """The (service, action) keys one `after:` entry of `service` names; empty when it
        names nothing desired here."""
        return after_targets(service, self.actions_of.get(service, ()), dep, self.actions_of)


# id(service) -> (the service, its resolved actions); the service is kept so its id cannot be
# reused by another object while the entry lives.
ResolvedCache = dict[int, tuple[Service, tuple[DesiredAction, ...]]]


def build_desired(loaded: LoadResult, settings: Settings,
                  cache: ResolvedCache | None = None) -> Desired:
    return desired_from_services(loaded.services.values(), settings, cache)


def desired_from_services(services: Iterable[Service], settings: Settings,
                          cache: ResolvedCache | None = None) -> Desired:
    """Resolve every service's actions, in name and dependency order.

    With a `cache` (kept by the caller across passes, for one `settings`), a service object
    seen in the previous call is not resolved again: the spec loader hands back the very
    same frozen objects while a file is unchanged, and resolving (paths, generation hash,
    environment) was a large share of a no-op pass (docs/benchmarks.md, Findings).
    """
    fresh: ResolvedCache = {}
    actions: list[DesiredAction] = []
    unplaced: dict[str, str] = {}
    actions_of: dict[str, tuple[str, ...]] = {}
    labels = dict(settings.labels)
    for service in sorted(services, key=lambda s: s.name):
        problem = service.placement.problem(labels) if service.placement else None
        if problem is not None:
            unplaced[service.name] = problem
            continue
        hit = cache.get(id(service)) if cache is not None else None
        if hit is None or hit[0] is not service:
            hit = (service, tuple(_resolve(service, action, settings)
                                  for action in dependency_order(service)))
        fresh[id(service)] = hit
        actions.extend(hit[1])
        actions_of[service.name] = tuple(a.name for a in service.actions)
    if cache is not None:
        cache.clear()
        cache.update(fresh)
    if any(dep not in actions_of[a.service] for a in actions if a.spec.after
           for dep in a.spec.after):
        actions = _across_services(actions, actions_of)
    return Desired(actions=tuple(actions), unplaced=unplaced, actions_of=actions_of)


def _across_services(actions: list[DesiredAction],
                     actions_of: Mapping[str, tuple[str, ...]]) -> list[DesiredAction]:
    """Every action after those it waits for, in other services too (otherwise in the
    given order)."""
    by_key = {a.key: a for a in actions}

    def waited_for(action: DesiredAction) -> Iterator[DesiredAction]:
        own = actions_of.get(action.service, ())
        for dep in action.spec.after:
            for key in after_targets(action.service, own, dep, actions_of):
                if key in by_key:
                    yield by_key[key]

    return _dependencies_first(actions, lambda a: a.key, waited_for)


def dependency_order(service: Service) -> list[Action]:
    """Actions sorted so every action comes after those it waits for (spec order otherwise)."""
    by_name = {a.name: a for a in service.actions}  # other services' targets are not here
    return _dependencies_first(
        service.actions, lambda a: a.name,
        lambda a: (by_name[dep] for dep in a.after if dep in by_name))


def _dependencies_first(items: Sequence[T], key: Callable[[T], Hashable],
                        waited_for: Callable[[T], Iterable[T]]) -> list[T]:
    """A depth-first post-order: each item after what it waits for, the given order
    otherwise. With an explicit stack: a valid 1 500-action `after:` chain exceeded
    Python's recursion limit and failed every pass."""
    done: list[T] = []
    seen: set[Hashable] = set()
    for root in items:
        if key(root) in seen:
            continue
        seen.add(key(root))
        stack = [(root, iter(waited_for(root)))]
        while stack:
            item, pending = stack[-1]
            for child in pending:
                if key(child) not in seen:
                    seen.add(key(child))
                    stack.append((child, iter(waited_for(child))))
                    break
            else:
                stack.pop()
                done.append(item)
    return done


def _resolve(service: Service, action: Action, settings: Settings) -> DesiredAction:
    run_dir = settings.run_dir
    pidfile = None
    if action.process:
        pidfile = _under(run_dir, action.pidfile or f"{service.name}.{action.name}.pid")
    cwd = _under(settings.specs_dir, action.cwd) if action.cwd else str(settings.specs_dir)
    log_path = logpaths.log_path(settings.logs_dir, service.name, action.name)
    env = minimal_env({
        **action.env,
        "RECONCILER_SERVICE": service.name,
        "RECONCILER_ACTION": action.name,
        "RECONCILER_STATE_DIR": str(settings.state_dir),
        "RECONCILER_RUN_DIR": str(run_dir),
    }, dict(settings.inherited_env))
    return DesiredAction(
        service=service.name,
        spec=action,
        generation=action.generation(),
        argv=tuple(action.argv),
        cwd=cwd,
        env=tuple(sorted(env.items())),
        pidfile=pidfile,
        sockets=tuple(_under(run_dir, s) for s in action.sockets),
        log_path=str(log_path),
        health=_resolve_health(action.health, run_dir),
    )


def _resolve_health(health: Health | None, run_dir: Path) -> Health | None:
    if isinstance(health, UnixHealth):
        return health.model_copy(update={"unix": _under(run_dir, health.unix)})
    return health


def _under(base: Path, path: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(path)))
