"""Unit tests of the pure planner: hand-built snapshots, no processes, no I/O."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.backoff import restart_delay, retry_delay
from reconciler.desired import Desired, desired_from_services
from reconciler.host.identity import Identity
from reconciler.host.observed import Exit, Observed, PidfileState, PortState, ProcInfo, SocketState
from reconciler.plan import (
    STARTUP_SECONDS,
    Adopt,
    Cleanup,
    Plan,
    Record,
    Spawn,
    Stop,
    plan,
    plan_down,
)
from reconciler.settings import Settings
from reconciler.spec.model import Backoff, Service
from reconciler.state.records import Enrollment, JobRecord

BOOT = "boot-a"
NOW = 1_000_000.0
SETTINGS = Settings(specs_dir=Path("/specs"), state_dir=Path("/state"))


def service(name: str = "web", **overrides: Any) -> Service:
    action = {"name": "api", "process": True, "cmd": ["python3", "-m", "http.server"]}
    action.update(overrides)
    return Service.model_validate({"name": name, "actions": [action]})


def desired(*services: Service) -> Desired:
    return desired_from_services(services, SETTINGS)


def proc(pid: int, start: int = 100, cmd: tuple[str, ...] = ("python3", "x"),
         session: int | None = None) -> ProcInfo:
    return ProcInfo(Identity(BOOT, pid, start), cmd, session if session is not None else pid, pid)


def observed(*procs: ProcInfo, **fields: Any) -> Observed:
    return Observed(boot_id=BOOT, procs={p.pid: p for p in procs}, **fields)


def running_job(want: Desired, pid: int = 500, start: int = 100, **fields: Any) -> JobRecord:
    action = want.actions[0]
    base = JobRecord(id="j1", service=action.service, action=action.name,
                     generation=action.generation, phase="running", process=True, pid=pid,
                     boot_id=BOOT, starttime_ticks=start, ready=True, started_at=NOW - 100,
                     spec=action.record_spec(), created_at=NOW - 100)
    return replace(base, **fields)


def kinds(result: Plan) -> list[str]:
    return [type(s).__name__ for s in result.steps]


def test_new_process_action_is_spawned() -> None:
    want = desired(service())
    result = plan(want, observed(), [], NOW)
    assert kinds(result) == ["Spawn"]
    spawn = result.steps[0]
    assert isinstance(spawn, Spawn)
    assert spawn.job.restart_count == 0 and not spawn.rotate_log
    assert spawn.action.argv == ("python3", "-m", "http.server")


def test_running_job_needs_nothing_and_planning_is_deterministic() -> None:
    want = desired(service())
    job = running_job(want)
    snapshot = observed(proc(500))
    assert plan(want, snapshot, [job], NOW).steps == ()
    assert plan(want, observed(), [], NOW) == plan(want, observed(), [], NOW)


def test_generation_change_stops_old_job_and_starts_a_new_one() -> None:
    old = desired(service(cmd=["old"]))
    job = running_job(old)
    new = desired(service(cmd=["new"]))
    result = plan(new, observed(proc(500)), [job], NOW)
    assert kinds(result) == ["Stop", "Spawn"]
    stop, spawn = result.steps
    assert isinstance(stop, Stop) and stop.scope == "session" and stop.job is not None
    assert stop.job.phase == "removed"
    assert isinstance(spawn, Spawn) and spawn.job.id != job.id
    assert spawn.job.restart_count == 0


def test_editing_only_description_or_health_keeps_the_job() -> None:
    job = running_job(desired(service()))
    edited = Service.model_validate({
        "name": "web", "description": "changed",
        "actions": [{"name": "api", "process": True, "cmd": ["python3", "-m", "http.server"],
                     "backoff": {"initial": "1s"}, "restart": "on-failure"}]})
    assert plan(desired(edited), observed(proc(500)), [job], NOW).steps == ()


def test_crash_after_long_run_restarts_at_once_with_same_job_id() -> None:
    want = desired(service())
    job = running_job(want, started_at=NOW - 3600)
    result = plan(want, observed(exits={500: Exit(job.identity, -9)}), [job], NOW)
    assert kinds(result) == ["Stop", "Record", "Spawn"]
    spawn = result.steps[-1]
    assert isinstance(spawn, Spawn)
    assert spawn.job.id == job.id and spawn.job.restart_count == 1 and spawn.rotate_log
    assert spawn.job.last_exit_code == -9


def test_crash_loop_backs_off_instead_of_spawning() -> None:
    want = desired(service())
    job = running_job(want, started_at=NOW - 1, consecutive_failures=3)
    result = plan(want, observed(), [job], NOW)
    assert kinds(result) == ["Stop", "Record"]
    record = result.steps[-1]
    assert isinstance(record, Record) and record.job.phase == "backoff"
    assert record.job.next_start_at is not None and record.job.next_start_at > NOW
    assert record.job.failure_class == "crash-after-ready"
    assert "crash-loop" in record.job.reason


def test_a_quick_death_is_a_crash_before_ready_unless_a_probe_passed() -> None:
    """Without a health check a process is ready once a pass saw it alive, possibly a few
    milliseconds after its start; dying within STARTUP_SECONDS still counts as a start-up
    failure. A passed probe is proof of readiness however soon the crash follows."""
    def failure_class(svc: Service, lived: float) -> str | None:
        want = desired(svc)
        job = running_job(want, started_at=NOW - lived, ready=True)
        record = plan(want, observed(), [job], NOW).steps[1]
        assert isinstance(record, Record)
        return record.job.failure_class

    assert failure_class(service(), lived=0.05) == "crash-before-ready"
    assert failure_class(service(), lived=STARTUP_SECONDS) == "crash-after-ready"
    assert failure_class(service(health={"tcp": 8080}), lived=0.05) == "crash-after-ready"


def test_backoff_waits_until_due_then_spawns() -> None:
    want = desired(service())
    job = replace(running_job(want), phase="backoff", pid=None, boot_id=None,
                  starttime_ticks=None, next_start_at=NOW + 5)
    assert plan(want, observed(), [job], NOW).steps == ()
    later = plan(want, observed(), [job], NOW + 5)
    assert kinds(later) == ["Spawn"]
    assert later.steps[0].job.restart_count == job.restart_count + 1  # type: ignore[union-attr]


def test_restart_never_leaves_the_job_stopped() -> None:
    want = desired(service(restart="never"))
    job = running_job(want)
    result = plan(want, observed(), [job], NOW)
    assert kinds(result) == ["Stop", "Record"]
    assert result.steps[-1].job.phase == "stopped"  # type: ignore[union-attr]
    stopped = result.steps[-1].job  # type: ignore[union-attr]
    assert plan(want, observed(), [stopped], NOW + 60).steps == ()


def test_foreign_port_holder_blocks_without_kill_others() -> None:
    want = desired(service(tcp_ports=[8080]))
    squatter = proc(4070, cmd=("python3", "-m", "http.server"))
    ports = {8080: PortState(8080, True, (squatter,))}
    result = plan(want, observed(squatter, ports=ports), [], NOW)
    assert kinds(result) == ["Record"]
    job = result.steps[0].job  # type: ignore[union-attr]
    assert job.phase == "blocked"
    assert job.blocked_by[0].pid == 4070 and job.blocked_by[0].resource == ":8080"
    assert "held by pid 4070 (python3 -m http.server)" in job.reason


def test_foreign_port_holder_is_stopped_with_kill_others() -> None:
    want = desired(service(tcp_ports=[8080], kill_others=True))
    squatter = proc(4070)
    ports = {8080: PortState(8080, True, (squatter,))}
    result = plan(want, observed(squatter, ports=ports), [], NOW)
    assert kinds(result) == ["Stop", "Spawn"]
    stop = result.steps[0]
    assert isinstance(stop, Stop) and stop.scope == "process" and stop.target.pid == 4070


def test_port_listening_with_invisible_owner_blocks() -> None:
    want = desired(service(tcp_ports=[8080], kill_others=True))
    result = plan(want, observed(ports={8080: PortState(8080, True, ())}), [], NOW)
    assert kinds(result) == ["Record"]
    assert result.steps[0].job.blocked_by[0].pid is None  # type: ignore[union-attr]


def test_stale_socket_is_cleaned_before_spawn() -> None:
    want = desired(service(sockets=["/run/x.sock"]))
    socks = {"/run/x.sock": SocketState("/run/x.sock", "stale")}
    result = plan(want, observed(sockets=socks), [], NOW)
    assert kinds(result) == ["Cleanup", "Spawn"]


def test_regular_file_at_socket_path_blocks_and_is_never_cleaned() -> None:
    want = desired(service(sockets=["/run/x.sock"]))
    socks = {"/run/x.sock": SocketState("/run/x.sock", "not-socket")}
    result = plan(want, observed(sockets=socks), [], NOW)
    assert kinds(result) == ["Record"]
    assert not any(isinstance(s, Cleanup) for s in result.steps)


def test_pidfile_naming_unrelated_process_is_never_touched() -> None:
    want = desired(service(singleton=True))
    stranger = proc(777, cmd=("sshd",))
    pidfile = want.actions[0].pidfile
    assert pidfile is not None
    pidfiles = {pidfile: PidfileState(pidfile, 777, stranger)}
    result = plan(want, observed(stranger, pidfiles=pidfiles), [], NOW)
    assert kinds(result) == ["Spawn"]
    assert any("777" in note for note in result.notes)


def test_singleton_stops_foreign_instance_of_its_own_command() -> None:
    want = desired(service(singleton=True))
    twin = proc(888, cmd=("/usr/bin/python3", "-m", "http.server"))
    pidfile = want.actions[0].pidfile
    assert pidfile is not None
    pidfiles = {pidfile: PidfileState(pidfile, 888, twin)}
    result = plan(want, observed(twin, pidfiles=pidfiles), [], NOW)
    assert kinds(result) == ["Stop", "Spawn"]
    assert result.steps[0].target.pid == 888  # type: ignore[union-attr]


def test_after_waits_for_oneshot_and_starts_in_the_pass_it_succeeds() -> None:
    svc = Service.model_validate({"name": "web", "actions": [
        {"name": "api", "process": True, "cmd": ["api"], "after": ["migrate"]},
        {"name": "migrate", "cmd": ["migrate"]},
    ]})
    want = desired(svc)
    first = plan(want, observed(), [], NOW)
    assert [type(s).__name__ for s in first.steps] == ["Spawn", "Record"]
    migrate = first.steps[0].job  # type: ignore[union-attr]
    assert migrate.action == "migrate"
    assert first.steps[1].job.reason == "waiting for migrate"  # type: ignore[union-attr]
    ran = replace(migrate, phase="running", pid=42, boot_id=BOOT, starttime_ticks=7,
                  started_at=NOW)
    pending_api = first.steps[1].job  # type: ignore[union-attr]
    done = plan(want, observed(exits={42: Exit(Identity(BOOT, 42, 7), 0)}),
                [ran, pending_api], NOW + 1)
    assert kinds(done) == ["Record", "Spawn"]
    assert done.steps[0].job.phase == "succeeded"  # type: ignore[union-attr]
    assert done.steps[1].job.action == "api"  # type: ignore[union-attr]


def test_failed_oneshot_retries_with_backoff() -> None:
    want = desired(Service.model_validate({"name": "w", "actions": [
        {"name": "migrate", "cmd": ["migrate"]}]}))
    action = want.actions[0]
    job = JobRecord(id="j9", service="w", action="migrate", generation=action.generation,
                    phase="running", process=False, pid=42, boot_id=BOOT, starttime_ticks=7,
                    started_at=NOW)
    result = plan(want, observed(exits={42: Exit(Identity(BOOT, 42, 7), 3)}), [job], NOW + 1)
    assert kinds(result) == ["Record"]
    failed = result.steps[0].job  # type: ignore[union-attr]
    assert failed.phase == "backoff" and failed.last_exit_code == 3
    assert failed.next_start_at > NOW + 1


def test_removed_service_is_stopped_and_retired() -> None:
    keep, gone = service("keep"), service("gone")
    job = running_job(desired(gone))
    result = plan(desired(keep), observed(proc(500)), [job], NOW)
    stop = result.steps[0]
    assert isinstance(stop, Stop) and stop.job is not None and stop.job.phase == "removed"
    assert kinds(result) == ["Stop", "Spawn"]


def test_empty_specs_prune_nothing_without_allow_empty() -> None:
    job = running_job(desired(service()))
    held = plan(Desired(actions=()), observed(proc(500)), [job], NOW)
    assert held.steps == () and held.prune_held and held.notes
    pruned = plan(Desired(actions=()), observed(proc(500)), [job], NOW, allow_empty=True)
    assert kinds(pruned) == ["Stop"] and not pruned.prune_held


def test_live_enrollment_without_recorded_identity_is_adopted() -> None:
    want = desired(service())
    job = replace(running_job(want), pid=None, boot_id=None, starttime_ticks=None,
                  phase="starting")
    enrolled = Enrollment(job.id, "web", "api", job.generation, Identity(BOOT, 600, 9),
                          ("python3",), NOW)
    result = plan(want, observed(proc(600, start=9)), [job], NOW,
                  enrollments={job.id: enrolled})
    assert kinds(result) == ["Adopt"]
    assert isinstance(result.steps[0], Adopt) and result.steps[0].job.pid == 600


def test_recycled_pid_counts_as_a_crash() -> None:
    want = desired(service())
    job = running_job(want, started_at=NOW - 3600)
    impostor = proc(500, start=999)  # same pid, other start time
    result = plan(want, observed(impostor), [job], NOW)
    assert kinds(result) == ["Stop", "Record", "Spawn"]


def test_record_from_previous_boot_starts_fresh_without_counting_a_crash() -> None:
    want = desired(service())
    job = replace(running_job(want), boot_id="boot-old")
    result = plan(want, observed(), [job], NOW)
    assert kinds(result) == ["Record", "Spawn"]
    assert result.steps[-1].job.restart_count == job.restart_count  # type: ignore[union-attr]


def test_down_stops_running_jobs_and_records_the_rest() -> None:
    want = desired(service("a"), service("b"))
    a = running_job(desired(service("a")), pid=500)
    b = replace(running_job(desired(service("b")), pid=501), id="j2")
    result = plan_down(observed(proc(500)), [a, b], NOW, frozenset({("a", None), ("b", None)}))
    assert kinds(result) == ["Stop", "Record"]
    assert all(s.job.phase == "stopped" for s in result.steps)  # type: ignore[union-attr]
    assert want.services == {"a", "b"}


@pytest.mark.parametrize("failures", range(1, 12))
def test_restart_delay_grows_is_capped_and_jittered(failures: int) -> None:
    backoff = Backoff.model_validate({"initial": "200ms", "max": "30s", "factor": 2})
    delay = restart_delay(failures, backoff, "job")
    if failures == 1:
        assert delay == 0
        return
    base = min(0.2 * 2 ** (failures - 2), 30.0)
    assert base * 0.8 <= delay <= base * 1.2
    assert retry_delay(failures, backoff, "job") == retry_delay(failures, backoff, "job")


def test_restart_delay_never_overflows_in_an_endless_crash_loop() -> None:
    backoff = Backoff.model_validate({"initial": "200ms", "max": "30s", "factor": 10})
    assert 24.0 <= restart_delay(1_000_000, backoff, "job") <= 36.0


def test_commands_in_reasons_are_one_short_line() -> None:
    want = desired(service(tcp_ports=[8080]))
    script = "import time\n" + "x = 1\n" * 100 + "time.sleep(9)"
    squatter = proc(4070, cmd=("python3", "-c", script))
    ports = {8080: PortState(8080, True, (squatter,))}
    job = plan(want, observed(squatter, ports=ports), [], NOW).steps[0].job  # type: ignore[union-attr]
    assert "\n" not in job.reason and len(job.blocked_by[0].cmd) <= 120


def test_unhealthy_process_is_stopped_and_restarted_with_its_class() -> None:
    want = desired(service(health={"tcp": 8080, "failures": 3}))
    job = running_job(want, started_at=NOW - 3600)
    still_failing = observed(proc(500), failing={job.id: 2})
    assert plan(want, still_failing, [job], NOW).steps == ()
    result = plan(want, observed(proc(500), failing={job.id: 3}), [job], NOW)
    assert kinds(result) == ["Stop", "Record", "Spawn"]
    stop, record, spawn = result.steps
    assert isinstance(stop, Stop) and stop.target == job.identity and "unhealthy" in stop.reason
    assert record.job.failure_class == "unhealthy"  # type: ignore[union-attr]
    assert isinstance(spawn, Spawn) and spawn.job.id == job.id and spawn.job.restart_count == 1


def test_failures_before_ready_are_not_unhealthy() -> None:
    want = desired(service(health={"tcp": 8080, "failures": 1}))
    job = running_job(want, ready=False, phase="starting")
    assert plan(want, observed(proc(500), failing={job.id: 5}), [job], NOW).steps == ()


def test_restart_stops_running_jobs_and_reruns_stopped_ones() -> None:
    from reconciler.plan import plan_restart

    want = desired(service())
    job = running_job(want)
    result = plan_restart(observed(proc(500)), [job], NOW, frozenset({("web", None)}))
    assert kinds(result) == ["Stop"]
    due = result.steps[0].job  # type: ignore[union-attr]
    assert due.phase == "pending" and due.identity is None
    again = plan(want, observed(), [due], NOW)
    assert kinds(again) == ["Spawn"]
    assert again.steps[0].job.restart_count == 1  # type: ignore[union-attr]
    stopped = replace(job, phase="stopped", pid=None)
    rerun = plan_restart(observed(), [stopped], NOW, frozenset({("web", "api")}))
    assert kinds(rerun) == ["Record"] and rerun.steps[0].job.phase == "pending"  # type: ignore[union-attr]
    other = plan_restart(observed(proc(500)), [job], NOW, frozenset({("other", None)}))
    assert other.steps == ()


def test_adopting_an_uncommitted_respawn_counts_the_restart() -> None:
    """The controller respawned a crashed process and died before committing: the record
    still names the dead run, the enrollment the live one. That respawn happened."""
    want = desired(service())
    job = running_job(want, restart_count=2)  # pid 500, now dead
    enrolled = Enrollment(job.id, "web", "api", job.generation, Identity(BOOT, 600, 9),
                          ("python3",), NOW - 1)
    result = plan(want, observed(proc(600, start=9)), [job], NOW,
                  enrollments={job.id: enrolled})
    assert kinds(result) == ["Adopt"]
    adopted = result.steps[0].job  # type: ignore[union-attr]
    assert adopted.pid == 600 and adopted.restart_count == 3 and adopted.started_at == NOW - 1
