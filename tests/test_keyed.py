"""Keyed passes: the plan of a subset of services is the full plan restricted to them
(`plan(only=...)`), the subset is closed over `after:`, and unclear cases are full passes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from reconciler.controller import Keys, Reconciler, after_closure, keyed_scope, narrowable
from reconciler.desired import Desired
from reconciler.host.identity import identity_of
from reconciler.host.pidfile import write_pidfile
from reconciler.observed import PortState
from reconciler.plan import MIN_START_INTERVAL, Plan, Step, plan
from reconciler.settings import Settings
from reconciler.spec.load import LoadResult
from reconciler.state.jobindex import JobIndex
from reconciler.state.records import JobRecord
from tests.helpers import wait_for
from tests.test_gitrev import commit
from tests.test_info import git_specs, needs_git, write
from tests.test_plan import NOW, desired, observed, proc, running_job, service

NO_LOAD = LoadResult(services={}, sources={}, files={}, errors=(), dir_error=None)


def job_of(want: Desired, name: str, pid: int, **fields: object) -> JobRecord:
    action = next(a for a in want.actions if a.service == name)
    return running_job(Desired(actions=(action,)), pid=pid, id=f"j-{name}", **fields)


def restricted(full: Plan, services: frozenset[str]) -> list[str]:
    """The full plan's steps that concern `services` (every step here names a job)."""
    return [s.describe() for s in full.steps
            if getattr(s, "job", None) is not None
            and s.job.service in services]  # type: ignore[union-attr]


def narrowed(jobs: list[JobRecord], scope: frozenset[str]) -> list[JobRecord]:
    """The records a narrowable keyed pass plans from (controller._draft)."""
    return JobIndex(jobs).of(scope)


def test_subset_of_a_crash_equals_the_full_plan_restricted() -> None:
    """Two crashed services and one running: the plan of one crashed service alone is the
    full plan's steps for it, and nothing for the other."""
    want = desired(service("a"), service("b"), service("c"))
    jobs = [job_of(want, "a", 501), job_of(want, "b", 502), job_of(want, "c", 503)]
    seen = observed(proc(503))
    full = plan(want, seen, jobs, NOW)
    sub = plan(want, seen, jobs, NOW, only=frozenset({"a"}))
    assert [s.describe() for s in sub.steps] == restricted(full, frozenset({"a"}))
    assert narrowable(want, frozenset({"a"}))
    assert plan(want, seen, narrowed(jobs, frozenset({"a"})), NOW, only=frozenset({"a"})) == sub
    assert {s.job.service for s in full.steps} == {"a", "b"}  # type: ignore[union-attr]
    assert sub.steps and all(s.job.service == "a" for s in sub.steps)  # type: ignore[union-attr]


def test_after_chain_subset_sees_its_dependency() -> None:
    """`web` waits for `db`; db crashed: the keyed scope of db holds web, and the subset plan
    restarts db and leaves web waiting exactly as the full plan does."""
    want = desired(service("db"), service("web", after=["db"]), service("other"))
    jobs = [job_of(want, "db", 601), job_of(want, "other", 603)]
    scope = after_closure(want, frozenset({"db"}))
    assert scope == {"db", "web"}
    assert after_closure(want, frozenset({"web"})) == {"db", "web"}  # what it waits for too
    seen = observed(proc(603))
    full = plan(want, seen, jobs, NOW)
    sub = plan(want, seen, jobs, NOW, only=scope)
    assert [s.describe() for s in sub.steps] == restricted(full, scope)
    assert any("web" in w.service for w in sub.waiting)
    assert plan(want, seen, narrowed(jobs, scope), NOW, only=scope) == sub


def test_removed_service_subset_retires_only_its_jobs() -> None:
    want = desired(service("kept"))
    gone = job_of(desired(service("gone")), "gone", 701)
    other_gone = replace(job_of(desired(service("old")), "old", 702), id="j-old")
    kept = job_of(want, "kept", 703)
    jobs = [gone, other_gone, kept]
    seen = observed(proc(701), proc(702), proc(703))
    full = plan(want, seen, jobs, NOW)
    sub = plan(want, seen, jobs, NOW, only=frozenset({"gone"}))
    assert [s.describe() for s in sub.steps] == restricted(full, frozenset({"gone"}))
    assert plan(want, seen, narrowed(jobs, frozenset({"gone"})), NOW,
                only=frozenset({"gone"})) == sub
    assert sub.steps and "kill gone.api" in sub.steps[0].describe()
    # the other orphan is outside the keys and not being retired yet: a full pass it is
    assert keyed_scope(Keys(frozenset({"gone"})), want, want, JobIndex(jobs), {}, frozenset(),
                       NO_LOAD) is None
    assert keyed_scope(Keys(frozenset({"gone", "old"})), want, want, JobIndex(jobs), {},
                       frozenset(),
                       NO_LOAD) == {"gone", "old"}


def test_port_conflict_with_another_job_is_seen_by_the_subset() -> None:
    """`b` starts and wants :8080, held by `a`'s running process: blocked, naming job a, in
    the subset plan as in the full one (the records of other services are still read)."""
    want = desired(service("a", tcp_ports=[8080]), service("b", tcp_ports=[8080]))
    holder = proc(801)
    jobs = [job_of(want, "a", 801)]
    seen = observed(holder, ports={8080: PortState(8080, True, (holder,))})
    full = plan(want, seen, jobs, NOW)
    sub = plan(want, seen, jobs, NOW, only=frozenset({"b"}))
    assert [s.describe() for s in sub.steps] == restricted(full, frozenset({"b"}))
    assert "job a.api" in sub.steps[0].job.blocked_by[0].cmd  # type: ignore[union-attr]
    # which job owns the holder needs every record: such a pass is never narrowed
    assert not narrowable(want, frozenset({"b"}))
    unnarrowed = plan(want, seen, narrowed(jobs, frozenset({"b"})), NOW, only=frozenset({"b"}))
    assert "job a.api" not in unnarrowed.steps[0].job.blocked_by[0].cmd  # type: ignore


def test_a_stop_elsewhere_is_seen_by_a_narrowed_subset() -> None:
    """`b` is being stopped (outside the scope); a process of its session is no conflict
    for `a`'s start: the narrowed records keep every job being stopped."""
    want = desired(service("a"), service("b"))
    stopping = job_of(want, "b", 902, phase="stopping", stop_deadline=NOW + 5,
                      stop_then="stopped")
    jobs = [job_of(want, "a", 901), stopping]
    seen = observed(proc(902))
    scope = frozenset({"a"})
    assert stopping in narrowed(jobs, scope)
    assert plan(want, seen, narrowed(jobs, scope), NOW, only=scope) == \
        plan(want, seen, jobs, NOW, only=scope)


def test_spec_keys_are_the_services_whose_actions_changed() -> None:
    before = desired(service("a"), service("b"), service("c"))
    after = desired(service("a"), service("b", cmd=["other"]), service("d"))
    jobs: list[JobRecord] = []
    assert keyed_scope(Keys(specs=True), after, before, JobIndex(jobs), {}, frozenset(),
                       NO_LOAD) == {"b", "c", "d"}
    assert keyed_scope(Keys(specs=True), after, None, JobIndex(jobs), {}, frozenset(),
                       NO_LOAD) is None


# --- with real processes ------------------------------------------------------------------------


def sleepers(specs_dir: Path, file: str, *names: str, after: str | None = None) -> None:
    dep = f"\n    after: [{after}]" if after else ""
    docs = [f"name: {n}\nactions:\n  - name: main\n    process: true\n"
            f"    cmd: exec sleep 3600{dep}\n" for n in names]
    (specs_dir / file).write_text("---\n".join(docs))


def rows(rec: Reconciler) -> dict[str, JobRecord]:
    return {j.service: j for j in rec.store.jobs()}


def test_a_crash_among_many_is_respawned_by_a_keyed_pass_touching_no_other_row(
        settings: Settings) -> None:
    sleepers(settings.specs_dir, "many.yaml", "a", "b", "c", "d")
    sleepers(settings.specs_dir, "web.yaml", "web", after="c")
    later = [0.0]  # the crash comes after MIN_START_INTERVAL: restarted at once, no backoff
    reconciler = Reconciler(settings, clock=lambda: time.time() + later[0])
    assert reconciler.converge(wait=20).converged
    later[0] = 10 * MIN_START_INTERVAL
    before = rows(reconciler)
    victim = before["c"]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    wait_for(lambda: identity_of(victim.pid or 0) is None, message="process gone")
    result = reconciler.reconcile(keys=Keys(frozenset({"c"})))
    after = rows(reconciler)
    assert after["c"].id == victim.id and after["c"].restart_count == victim.restart_count + 1
    assert after["c"].pid != victim.pid and identity_of(after["c"].pid or 0) is not None
    assert {s.job.service for s in result.plan.steps} == {"c"}  # type: ignore[union-attr]
    for name in ("a", "b", "d", "web"):  # not rewritten: the same rows, the same updated_at
        assert after[name] == before[name]
    # the dependent is in the scope: a keyed pass for c alone also plans web (here: nothing
    # to do, c is running again and web never stopped)
    assert reconciler._last_scope == {"c", "web"}
    reconciler.close()


def test_a_narrowed_pass_knows_the_owner_of_what_a_pidfile_names(
        settings: Settings) -> None:
    """A keyed pass plans from its services' records only, but a pidfile may name another
    job's process (its pid recycled by that job's start): a singleton must not take it for
    an old instance of itself and stop it. `a`'s pidfile is made to name `b`'s process
    (same command) after `a` crashed: the keyed pass starts `a` and leaves `b` alone."""
    (settings.specs_dir / "s.yaml").write_text("---\n".join(
        f"name: {n}\nactions:\n  - name: main\n    process: true\n    singleton: true\n"
        f"    cmd: [sleep, '3600']\n" for n in ("a", "b")))
    later = [0.0]
    reconciler = Reconciler(settings, clock=lambda: time.time() + later[0])
    try:
        assert reconciler.converge(wait=20).converged
        later[0] = 10 * MIN_START_INTERVAL
        before = rows(reconciler)
        victim, other = before["a"].pid, before["b"].pid
        assert victim is not None and other is not None
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: identity_of(victim) is None, message="process gone")
        write_pidfile(settings.run_dir / "a.main.pid", other)
        result = reconciler.reconcile(keys=Keys(frozenset({"a"})))
        assert not [s for s in result.plan.steps if s.describe().startswith("kill")]
        assert identity_of(other) is not None
        assert rows(reconciler)["a"].pid not in (None, victim, other)
    finally:
        reconciler.down(wait=10)
        reconciler.close()


def test_spec_edit_and_removal_reconcile_that_files_services(
        settings: Settings, reconciler: Reconciler) -> None:
    sleepers(settings.specs_dir, "one.yaml", "a", "b")
    sleepers(settings.specs_dir, "two.yaml", "x")
    assert reconciler.converge(wait=20).converged
    before = rows(reconciler)
    (settings.specs_dir / "two.yaml").write_text(
        "name: x\nactions:\n  - name: main\n    process: true\n    cmd: exec sleep 3601\n")
    result = reconciler.reconcile(keys=Keys(specs=True))
    assert reconciler._last_scope == {"x"}
    assert {s.job.service for s in result.plan.steps} == {"x"}  # type: ignore[union-attr]
    assert rows(reconciler)["a"] == before["a"] and rows(reconciler)["b"] == before["b"]
    (settings.specs_dir / "one.yaml").unlink()
    reconciler.reconcile(keys=Keys(specs=True))
    assert reconciler._last_scope is not None and {"a", "b"} <= reconciler._last_scope
    # stops in progress: the exits (or the due timer) key them until they are removed
    wait_for(lambda: (reconciler.reconcile(keys=Keys(frozenset({"a", "b", "x"}))) and
                      not {"a", "b"} & rows(reconciler).keys()), message="a and b removed")
    for pid in (before["a"].pid, before["b"].pid):
        assert identity_of(pid or 0) is None


def test_a_keyed_pass_reads_no_specs_and_the_full_pass_catches_what_it_skipped(
        settings: Settings, reconciler: Reconciler) -> None:
    """A keyed pass for an exit plans against the specs of the last pass (the watcher keys
    every spec change); a change nobody keyed is the resync's (a full pass) to find."""
    sleepers(settings.specs_dir, "one.yaml", "a")
    sleepers(settings.specs_dir, "two.yaml", "b")
    assert reconciler.converge(wait=20).converged
    (settings.specs_dir / "two.yaml").unlink()  # the watcher missed it
    reconciler.reconcile(keys=Keys(frozenset({"a"})))
    assert reconciler._last_scope == {"a"} and rows(reconciler)["b"].phase == "running"
    reconciler.reconcile()  # the resync
    assert reconciler._last_scope is None and rows(reconciler)["b"].phase == "stopping"
    # now b is an orphan being retired: keyed passes for other services stay keyed
    reconciler.reconcile(keys=Keys(frozenset({"a"})))
    assert reconciler._last_scope == {"a"}


# --- from the adversarial review: what a keyed pass must not skip --------------------------------


def services_of(steps: Iterable[Step]) -> set[str]:
    return {job.service for s in steps if isinstance(job := getattr(s, "job", None), JobRecord)}


def test_a_label_change_seen_by_a_keyed_pass_places_its_services_in_that_pass(
        settings: Settings, tmp_path: Path) -> None:
    """Every pass reads the labels file: a keyed pass that sees it change resolves the specs
    afresh, so what the new labels place is planned in that very pass. Otherwise its desired
    state becomes the "previous" of the next spec pass, which then sees nothing changed, and
    only the resync would ever start the newly placed service."""
    labels_file = tmp_path / "labels.yaml"
    labels_file.write_text("role: db\n")
    sleepers(settings.specs_dir, "a.yaml", "a")
    (settings.specs_dir / "web.yaml").write_text(
        "name: web\nplacement: {labels: {role: web}}\nactions:\n  - name: main\n"
        "    process: true\n    cmd: exec sleep 3600\n")
    with Reconciler(replace(settings, labels_file=labels_file)) as rec:
        assert rec.converge(wait=20).converged
        assert "web" not in rows(rec)
        labels_file.write_text("role: web\n")
        result = rec.reconcile(keys=Keys(frozenset({"a"})))  # e.g. a's health check flipped
        assert "web" in services_of(result.plan.changes)
        assert rows(rec)["web"].pid is not None
        rec.reconcile(keys=Keys(specs=True))  # the labels file is no spec: nothing else keys it
        assert rows(rec)["web"].pid is not None


@needs_git
def test_a_keyed_pass_after_a_commit_does_not_call_specs_it_did_not_read_applied(
        reconciler: Reconciler) -> None:
    """A keyed pass that plans against the last pass's specs must not record the revision it
    sees now as applied: that revision's files were never read (here one of them is broken,
    so it must never be called applied, not even after the spec pass that follows)."""
    settings = reconciler.settings
    good = f"main@sha1:{git_specs(settings)}"
    assert reconciler.converge(wait=10).applied_revision == good
    write(settings.specs_dir, "web.yaml", "name: web\nactions: nope\n")
    broken = f"main@sha1:{commit(settings.specs_dir, 'break web')}"
    result = reconciler.reconcile(keys=Keys(frozenset({"web"})))  # before the watcher's kick
    assert (result.source.revision, result.applied_revision) == (broken, good)
    result = reconciler.reconcile(keys=Keys(specs=True))
    assert (result.source.revision, result.applied_revision) == (broken, good)
    assert reconciler.store.controller_facts().applied_revision == good


def test_a_pass_after_another_writer_held_the_lock_is_a_full_one(
        settings: Settings, reconciler: Reconciler) -> None:
    """`reconcile resume` (like restart, down or --once) runs in another process and changes
    records; no trigger names what it changed, so the daemon's next pass plans everything,
    as every pass did before keyed passes."""
    sleepers(settings.specs_dir, "one.yaml", "a", "b")
    assert reconciler.converge(wait=20).converged
    with Reconciler(settings) as cli:
        assert cli.set_suspended("b", True)
    victim = rows(reconciler)["b"]
    os.kill(victim.pid or 0, signal.SIGKILL)
    wait_for(lambda: identity_of(victim.pid or 0) is None, message="process gone")
    reconciler.reconcile(keys=Keys(frozenset({"b"})))  # its exit: suspended, left alone
    assert rows(reconciler)["b"] == victim
    with Reconciler(settings) as cli:
        assert cli.set_suspended("b", False)
    result = reconciler.reconcile(keys=Keys(frozenset({"a"})))  # any later trigger
    assert reconciler._last_scope is None
    assert "b" in services_of(result.plan.steps)
    assert rows(reconciler)["b"].pid != victim.pid


def test_a_due_job_left_waiting_for_its_dependency_keeps_no_past_start_time() -> None:
    """`web` (after `db`) was in backoff and is due, but db is not ready: web waits, pending.
    Its past `next_start_at` must go, or every pass's `next_due` is in the past: the daemon's
    due timer fires at once after each pass (keyed passes back to back until the scheduler
    calls the time missed) and `--once` naps 0 s between passes until db is ready."""
    want = desired(service("db"), service("web", after=["db"]))
    web = replace(job_of(want, "web", 902).with_identity(None), phase="backoff", ready=False,
                  next_start_at=NOW - 1, reason="crash-loop")
    steps = plan(want, observed(), [web], NOW).steps
    (waiting,) = [s for s in steps if getattr(s, "job", None) is not None
                  and s.job.service == "web"]  # type: ignore[union-attr]
    assert waiting.job.phase == "pending"  # type: ignore[union-attr]
    assert waiting.job.next_start_at is None  # type: ignore[union-attr]
