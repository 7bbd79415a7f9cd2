"""One vocabulary of reasons: every reason the planner gives a job is listed in
docs/lifecycle.md ("Reasons"), so what `status` shows is documented, and a new or reworded
reason fails here until the table says it too.

Pure: the planner is driven through each case with hand-built snapshots (the helpers of
test_plan.py). The executor's own reasons (`spawn-error: …`, a refused pidfile) are checked
against the same table in tests that start real processes (test_reconcile.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.identity import Identity
from reconciler.observed import Exit, PortState
from reconciler.plan import Plan, plan, plan_down, plan_restart
from reconciler.spec.model import Service
from reconciler.state.records import Enrollment, JobRecord
from tests.test_plan import (
    BOOT,
    NOW,
    desired,
    observed,
    proc,
    running_job,
    running_oneshot,
    service,
)

LIFECYCLE = Path(__file__).resolve().parents[1] / "docs" / "lifecycle.md"


def documented_reasons() -> list[re.Pattern[str]]:
    """The first column of the Reasons table, `<placeholders>` matching any text."""
    text = LIFECYCLE.read_text()
    table = text.split("## Reasons", 1)[1].split("\n## ", 1)[0]
    patterns = []
    for cell in re.findall(r"^\| `([^`]+)` \|", table, flags=re.M):
        parts = re.split(r"<[^>]+>", cell)
        patterns.append(re.compile(".+".join(re.escape(p) for p in parts)))
    return patterns


def reasons_of(result: Plan) -> Iterator[str]:
    for step in result.steps:
        job = getattr(step, "job", None)
        if isinstance(job, JobRecord):
            yield job.reason


def scenarios() -> Iterator[tuple[str, Plan]]:
    """Each way the planner changes a job, once."""
    web = desired(service())
    probed = desired(service(health={"tcp": 8080, "failures": 3}))
    yield "start", plan(web, observed(), [], NOW)
    yield "start with a probe", plan(probed, observed(), [], NOW)
    job = running_job(web, ready=False, phase="running")
    yield "ready", plan(web, observed(proc(500)), [job], NOW)
    starting = running_job(probed, ready=False, phase="running", reason="adopted")
    yield "probe pending", plan(probed, observed(proc(500)), [starting], NOW)
    long_run = running_job(web, started_at=NOW - 3600)
    for code in (1, -9):
        exits = {500: Exit(long_run.identity, code)}  # type: ignore[arg-type]
        yield f"exit {code}", plan(web, observed(exits=exits), [long_run], NOW)
    yield "exit unknown", plan(web, observed(), [long_run], NOW)
    yield "crash loop", plan(web, observed(), [running_job(web, started_at=NOW - 1,
                                                           consecutive_failures=3)], NOW)
    never = desired(service(restart="never"))
    yield "restart never", plan(never, observed(), [running_job(never)], NOW)
    unhealthy = plan(probed, observed(proc(500), failing={"j1": 3}),
                     [running_job(probed, started_at=NOW - 3600)], NOW)
    yield "unhealthy", unhealthy
    stopping = next(j for j in (getattr(s, "job", None) for s in unhealthy.steps) if j)
    yield "restart after a stop", plan(probed, observed(), [stopping], NOW + 1)
    quick = plan(probed, observed(proc(500), failing={"j1": 3}),
                 [running_job(probed, started_at=NOW - 1, consecutive_failures=2)], NOW)
    stopping = next(j for j in (getattr(s, "job", None) for s in quick.steps) if j)
    yield "crash loop after a stop", plan(probed, observed(), [stopping], NOW + 1)
    child = proc(510, session=500)
    leftovers = observed(child, exits={500: Exit(long_run.identity, 1)},  # type: ignore[arg-type]
                         members={"j1": (child,)})
    yield "leftovers", plan(web, leftovers, [long_run], NOW)
    survivor = proc(700, start=300, session=700)
    forked = observed(survivor, exits={500: Exit(long_run.identity, 0)},  # type: ignore[arg-type]
                      members={"j1": (survivor,)})
    yield "daemonized", plan(web, forked, [running_job(web)], NOW)
    enrolled = Enrollment("j1", "web", "api", web.actions[0].generation,
                          Identity(BOOT, 600, 9), ("python3",), NOW - 1)
    yield "adopted", plan(web, observed(proc(600, start=9)), [running_job(web)], NOW,
                          enrollments={"j1": enrolled})
    yield "previous boot", plan(web, observed(), [running_job(web).with_identity(
        Identity("another-boot", 500, 100))], NOW)
    yield from oneshot_scenarios()
    yield from resource_scenarios()
    yield from stop_scenarios()


def oneshot_scenarios() -> Iterator[tuple[str, Plan]]:
    svc = Service.model_validate({"name": "w", "actions": [
        {"name": "api", "process": True, "cmd": ["api"], "after": ["migrate"]},
        {"name": "migrate", "cmd": ["migrate"]}]})
    want = desired(svc)
    yield "after", plan(want, observed(), [], NOW)
    migrate = next(a for a in want.actions if a.name == "migrate")
    ran = running_oneshot(migrate)
    for code in (0, 3):
        exits = {42: Exit(Identity(BOOT, 42, 7), code)}
        yield f"one-shot {code}", plan(want, observed(exits=exits), [ran], NOW + 1)
        helper = proc(43, session=42)
        yield f"one-shot {code} with a helper", plan(
            want, observed(helper, exits=exits, members={"j9": (helper,)}), [ran], NOW + 1)


def resource_scenarios() -> Iterator[tuple[str, Plan]]:
    squatter = proc(4070, cmd=("python3", "-m", "http.server"))
    ports = {8080: PortState(8080, True, (squatter,))}
    yield "blocked", plan(desired(service(tcp_ports=[8080])),
                          observed(squatter, ports=ports), [], NOW)
    yield "take over", plan(desired(service(tcp_ports=[8080], kill_others=True)),
                            observed(squatter, ports=ports), [], NOW)


def stop_scenarios() -> Iterator[tuple[str, Plan]]:
    want = desired(service())
    job = running_job(want)
    yield "down", plan_down(observed(proc(500)), [job], NOW)
    yield "down, gone", plan_down(observed(), [job], NOW)
    yield "restart", plan_restart(observed(proc(500)), [job], NOW, frozenset({("web", None)}))
    yield "removed", plan(desired(service("other")), observed(proc(500)), [job], NOW)
    changed = desired(service(cmd=["new"]))
    yield "new generation", plan(changed, observed(proc(500)), [job], NOW)
    retiring = replace(job, phase="stopping", stop_then="removed", stop_deadline=NOW + 10)
    yield "previous generation", plan(changed, observed(proc(500)), [retiring], NOW)


SCENARIOS = list(scenarios())


@pytest.mark.parametrize(("name", "result"), SCENARIOS, ids=[n for n, _ in SCENARIOS])
def test_every_reason_the_planner_gives_is_documented(name: str, result: Plan) -> None:
    patterns = documented_reasons()
    reasons = list(reasons_of(result))
    assert reasons, f"{name}: the scenario changed no job"
    undocumented = [r for r in reasons if not any(p.fullmatch(r) for p in patterns)]
    assert undocumented == [], f"{name}: not in docs/lifecycle.md's Reasons table"


def test_the_scenarios_reach_most_of_the_table() -> None:
    """The check above can fail only for reasons the scenarios produce: they must produce
    nearly every documented one (the executor's two and the enrollment rebuild are covered
    where real processes run)."""
    produced = {r for _, result in SCENARIOS for r in reasons_of(result)}
    patterns = documented_reasons()
    unreached = [p.pattern for p in patterns if not any(p.fullmatch(r) for r in produced)]
    assert len(unreached) <= 3, unreached


def test_an_undocumented_reason_is_caught() -> None:
    patterns = documented_reasons()
    assert any(p.fullmatch("exited 3; restarting") for p in patterns)
    assert not any(p.fullmatch("start (new job)") for p in patterns)
