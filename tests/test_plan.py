"""Unit tests of the pure planner: hand-built snapshots, no processes, no I/O."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.backoff import restart_delay, retry_delay
from reconciler.desired import Desired, DesiredAction, desired_from_services
from reconciler.identity import Identity
from reconciler.observed import Exit, Observed, PidfileState, PortState, ProcInfo, SocketState
from reconciler.plan import (
    STARTUP_SECONDS,
    Adopt,
    Cleanup,
    Kill,
    Plan,
    Spawn,
    UpdateJob,
    plan,
    plan_down,
    plan_restart,
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
                     spec=action.job_spec(), created_at=NOW - 100)
    return replace(base, **fields)


def running_oneshot(action: DesiredAction) -> JobRecord:
    """`action`'s one-shot job, started at NOW and running as pid 42 (start time 7)."""
    return JobRecord(id="j9", service=action.service, action=action.name,
                     generation=action.generation, phase="running", process=False, pid=42,
                     boot_id=BOOT, starttime_ticks=7, started_at=NOW, spec=action.job_spec())


def kinds(result: Plan) -> list[str]:
    return [type(s).__name__ for s in result.steps]


def test_new_process_action_is_spawned() -> None:
    want = desired(service())
    result = plan(want, observed(), [], NOW)
    assert kinds(result) == ["Spawn"]
    spawn = result.steps[0]
    assert isinstance(spawn, Spawn)
    assert spawn.job.restart_count == 0
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
    assert kinds(result) == ["Kill", "UpdateJob"]
    stop, waiting = result.steps
    assert isinstance(stop, Kill) and stop.scope == "session" and stop.job is not None
    assert stop.job.phase == "stopping" and stop.job.stop_then == "removed"
    assert stop.job.stop_deadline == NOW + 10.0
    assert isinstance(waiting, UpdateJob) and waiting.job.id != job.id
    assert "previous generation to stop" in waiting.job.reason
    assert result.requeue_at is not None and result.requeue_at <= NOW + 10.0
    # the next pass, once the old process is gone: the old job is retired, the new starts
    later = plan(new, observed(), [stop.job, waiting.job], NOW + 1)
    assert kinds(later) == ["UpdateJob", "Spawn"]
    retired, spawn = later.steps
    assert isinstance(retired, UpdateJob) and retired.job.phase == "removed"
    assert isinstance(spawn, Spawn) and spawn.job.id == waiting.job.id
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
    assert kinds(result) == ["UpdateJob", "Spawn"]
    spawn = result.steps[-1]
    assert isinstance(spawn, Spawn)
    assert spawn.job.id == job.id and spawn.job.restart_count == 1
    assert spawn.job.last_exit_code == -9


def test_crash_loop_backs_off_instead_of_spawning() -> None:
    want = desired(service())
    job = running_job(want, started_at=NOW - 1, consecutive_failures=3)
    result = plan(want, observed(), [job], NOW)
    assert kinds(result) == ["UpdateJob"]
    record = result.steps[-1]
    assert isinstance(record, UpdateJob) and record.job.phase == "backoff"
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
        record = plan(want, observed(), [job], NOW).steps[0]
        assert isinstance(record, UpdateJob)
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
    assert kinds(result) == ["UpdateJob"]
    assert result.steps[-1].job.phase == "stopped"  # type: ignore[union-attr]
    stopped = result.steps[-1].job  # type: ignore[union-attr]
    assert plan(want, observed(), [stopped], NOW + 60).steps == ()


def test_foreign_port_holder_blocks_without_kill_others() -> None:
    want = desired(service(tcp_ports=[8080]))
    squatter = proc(4070, cmd=("python3", "-m", "http.server"))
    ports = {8080: PortState(8080, True, (squatter,))}
    result = plan(want, observed(squatter, ports=ports), [], NOW)
    assert kinds(result) == ["UpdateJob"]
    job = result.steps[0].job  # type: ignore[union-attr]
    assert job.phase == "blocked"
    assert job.blocked_by[0].pid == 4070 and job.blocked_by[0].resource == ":8080"
    assert "held by pid 4070 (python3 -m http.server)" in job.reason


def test_foreign_port_holder_is_stopped_with_kill_others() -> None:
    want = desired(service(tcp_ports=[8080], kill_others=True))
    squatter = proc(4070)
    ports = {8080: PortState(8080, True, (squatter,))}
    result = plan(want, observed(squatter, ports=ports), [], NOW)
    assert kinds(result) == ["Kill", "UpdateJob"]
    stop, waiting = result.steps
    assert isinstance(stop, Kill) and stop.scope == "process" and stop.target.pid == 4070
    assert stop.signal == signal.SIGTERM
    assert isinstance(waiting, UpdateJob) and waiting.job.phase == "pending"
    assert waiting.job.stop_deadline == NOW + 10.0 and "pid 4070" in waiting.job.reason
    # still there before the deadline: no second signal; after it: SIGKILL; gone: start
    assert plan(want, observed(squatter, ports=ports), [waiting.job], NOW + 5).steps == ()
    late = plan(want, observed(squatter, ports=ports), [waiting.job], NOW + 10)
    assert [s.signal for s in late.steps if isinstance(s, Kill)] == [signal.SIGKILL]
    gone = plan(want, observed(), [waiting.job], NOW + 10)
    assert kinds(gone) == ["Spawn"]
    assert gone.steps[0].job.stop_deadline is None  # type: ignore[union-attr]


def test_port_listening_with_invisible_owner_blocks() -> None:
    want = desired(service(tcp_ports=[8080], kill_others=True))
    result = plan(want, observed(ports={8080: PortState(8080, True, ())}), [], NOW)
    assert kinds(result) == ["UpdateJob"]
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
    assert kinds(result) == ["UpdateJob"]
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
    assert kinds(result) == ["Kill", "UpdateJob"]
    assert result.steps[0].target.pid == 888  # type: ignore[union-attr]
    assert "singleton" in result.steps[0].reason


def test_after_waits_for_oneshot_and_starts_in_the_pass_it_succeeds() -> None:
    svc = Service.model_validate({"name": "web", "actions": [
        {"name": "api", "process": True, "cmd": ["api"], "after": ["migrate"]},
        {"name": "migrate", "cmd": ["migrate"]},
    ]})
    want = desired(svc)
    first = plan(want, observed(), [], NOW)
    assert [type(s).__name__ for s in first.steps] == ["Spawn", "UpdateJob"]
    migrate = first.steps[0].job  # type: ignore[union-attr]
    assert migrate.action == "migrate"
    assert first.steps[1].job.reason == "waiting for migrate"  # type: ignore[union-attr]
    ran = replace(migrate, phase="running", pid=42, boot_id=BOOT, starttime_ticks=7,
                  started_at=NOW)
    pending_api = first.steps[1].job  # type: ignore[union-attr]
    done = plan(want, observed(exits={42: Exit(Identity(BOOT, 42, 7), 0)}),
                [ran, pending_api], NOW + 1)
    assert kinds(done) == ["UpdateJob", "Spawn"]
    assert done.steps[0].job.phase == "succeeded"  # type: ignore[union-attr]
    assert done.steps[1].job.action == "api"  # type: ignore[union-attr]


def test_failed_oneshot_retries_with_backoff() -> None:
    want = desired(Service.model_validate({"name": "w", "actions": [
        {"name": "migrate", "cmd": ["migrate"]}]}))
    action = want.actions[0]
    job = running_oneshot(action)
    result = plan(want, observed(exits={42: Exit(Identity(BOOT, 42, 7), 3)}), [job], NOW + 1)
    assert kinds(result) == ["UpdateJob"]
    failed = result.steps[0].job  # type: ignore[union-attr]
    assert failed.phase == "backoff" and failed.last_exit_code == 3
    assert failed.next_start_at > NOW + 1


def test_removed_service_is_stopped_and_retired() -> None:
    keep, gone = service("keep"), service("gone")
    job = running_job(desired(gone))
    result = plan(desired(keep), observed(proc(500)), [job], NOW)
    stop = result.steps[0]
    assert isinstance(stop, Kill) and stop.job is not None and stop.job.phase == "stopping"
    assert stop.job.stop_then == "removed"
    assert kinds(result) == ["Kill", "Spawn"]  # the other service does not wait
    gone = plan(desired(keep), observed(), [stop.job], NOW + 1)
    assert kinds(gone) == ["UpdateJob", "Spawn"] and gone.steps[0].job.phase == "removed"  # type: ignore[union-attr]


def test_empty_specs_prune_nothing_without_allow_empty() -> None:
    job = running_job(desired(service()))
    held = plan(Desired(actions=()), observed(proc(500)), [job], NOW)
    assert held.steps == () and held.prune_held and held.notes
    pruned = plan(Desired(actions=()), observed(proc(500)), [job], NOW, allow_empty=True)
    assert kinds(pruned) == ["Kill"] and not pruned.prune_held


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
    assert kinds(result) == ["UpdateJob", "Spawn"]


def test_record_from_previous_boot_starts_fresh_without_counting_a_crash() -> None:
    want = desired(service())
    job = replace(running_job(want), boot_id="boot-old")
    result = plan(want, observed(), [job], NOW)
    assert kinds(result) == ["UpdateJob", "Spawn"]
    assert result.steps[-1].job.restart_count == job.restart_count  # type: ignore[union-attr]


def test_down_stops_running_jobs_and_records_the_rest() -> None:
    want = desired(service("a"), service("b"))
    a = running_job(desired(service("a")), pid=500)
    b = replace(running_job(desired(service("b")), pid=501), id="j2")
    result = plan_down(observed(proc(500)), [a, b], NOW, frozenset({("a", None), ("b", None)}))
    assert kinds(result) == ["Kill", "UpdateJob"]
    stopping, recorded = (s.job for s in result.steps)  # type: ignore[union-attr]
    assert stopping.phase == "stopping" and stopping.stop_then == "stopped"
    assert recorded.phase == "stopped"
    assert want.services == {"a", "b"}
    # driven again before the deadline nothing happens; after it SIGKILL; once gone: stopped
    assert plan_down(observed(proc(500)), [stopping], NOW + 1).steps == ()
    late = plan_down(observed(proc(500)), [stopping], NOW + 10)
    assert [s.signal for s in late.steps if isinstance(s, Kill)] == [signal.SIGKILL]
    done = plan_down(observed(), [stopping], NOW + 11)
    assert [s.job.phase for s in done.steps if isinstance(s, UpdateJob)] == ["stopped"]


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
    assert kinds(result) == ["Kill"]
    stop = result.steps[0]
    assert isinstance(stop, Kill) and stop.target == job.identity and "unhealthy" in stop.reason
    assert stop.job is not None and stop.job.phase == "stopping"
    assert stop.job.stop_then == "restart" and stop.job.failure_class == "unhealthy"
    restarted = plan(want, observed(), [stop.job], NOW + 1)
    assert kinds(restarted) == ["UpdateJob", "Spawn"]
    spawn = restarted.steps[-1]
    assert isinstance(spawn, Spawn) and spawn.job.id == job.id and spawn.job.restart_count == 1


def test_failures_before_ready_are_not_unhealthy() -> None:
    want = desired(service(health={"tcp": 8080, "failures": 1}))
    job = running_job(want, ready=False, phase="starting")
    assert plan(want, observed(proc(500), failing={job.id: 5}), [job], NOW).steps == ()


def test_restart_stops_running_jobs_and_reruns_stopped_ones() -> None:

    want = desired(service())
    job = running_job(want)
    result = plan_restart(observed(proc(500)), [job], NOW, frozenset({("web", None)}))
    assert kinds(result) == ["Kill"]
    stopping = result.steps[0].job  # type: ignore[union-attr]
    assert stopping.phase == "stopping" and stopping.stop_then == "restart"
    assert plan(want, observed(proc(500)), [stopping], NOW + 1).steps == ()  # still going
    again = plan(want, observed(), [stopping], NOW + 1)
    assert kinds(again) == ["UpdateJob", "Spawn"]
    assert again.steps[-1].job.restart_count == 1  # type: ignore[union-attr]
    stopped = replace(job, phase="stopped", pid=None)
    rerun = plan_restart(observed(), [stopped], NOW, frozenset({("web", "api")}))
    assert kinds(rerun) == ["UpdateJob"] and rerun.steps[0].job.phase == "pending"  # type: ignore[union-attr]
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


# --- asynchronous stops, daemonized processes, rate bounds ------------------------------------


def test_a_stop_never_waits_and_other_jobs_keep_healing() -> None:
    """One job ignores its stop signal for a long time; another job crashes meanwhile: the
    crashed one is restarted in the same pass that merely looks at the slow stop."""
    slow, other = service("slow", stop={"timeout": "8s"}), service("other")
    slow_job = running_job(desired(slow), pid=500)
    other_job = replace(running_job(desired(other), pid=600), id="j2", started_at=NOW - 3600)
    removing = plan(desired(other), observed(proc(500), proc(600)), [slow_job, other_job], NOW)
    [stop] = removing.steps
    assert isinstance(stop, Kill) and stop.job is not None and stop.job.phase == "stopping"
    assert stop.job.stop_deadline == NOW + 8.0
    crashed = plan(desired(other), observed(proc(500)), [stop.job, other_job], NOW + 2)
    assert kinds(crashed) == ["UpdateJob", "Spawn"]
    assert crashed.steps[-1].job.id == "j2"  # type: ignore[union-attr]
    assert crashed.requeue_at == NOW + 8.0  # the slow stop's deadline


def test_a_stop_is_finished_only_when_every_member_of_the_job_is_gone() -> None:
    want = desired(service())
    job = running_job(want)
    stopping = plan_down(observed(proc(500)), [job], NOW).steps[0].job  # type: ignore[union-attr]
    child = proc(510, session=500)
    leftovers = observed(members={job.id: (child,)})
    assert plan_down(leftovers, [stopping], NOW + 1).steps == ()  # the leader is gone, a child not
    assert plan_down(leftovers, [stopping], NOW + 1).requeue_at == NOW + 1 + 0.25
    late = plan_down(leftovers, [stopping], NOW + 10)
    [kill] = late.steps
    assert isinstance(kill, Kill) and kill.signal == signal.SIGKILL and kill.job is not None
    done = plan_down(observed(), [kill.job], NOW + 11)
    assert [s.job.phase for s in done.steps] == ["stopped"]  # type: ignore[union-attr]


def test_a_daemon_that_forked_into_the_background_is_followed() -> None:
    want = desired(service())
    job = running_job(want, started_at=NOW - 1)
    survivor = proc(700, start=300, session=700)
    snapshot = observed(survivor, exits={500: Exit(job.identity, 0)}, members={job.id: (survivor,)})
    result = plan(want, snapshot, [job], NOW)
    [adopt] = result.steps
    assert isinstance(adopt, Adopt) and adopt.kind == "daemonized"
    assert adopt.job.id == job.id and adopt.job.pid == 700 and adopt.job.restart_count == 0
    assert "daemonized" in adopt.job.reason
    after = plan(want, observed(survivor), [adopt.job], NOW + 1)
    assert after.steps == ()


def test_a_crash_with_leftover_children_stops_them_before_restarting() -> None:
    want = desired(service())
    job = running_job(want, started_at=NOW - 3600)
    child = proc(510, session=500)
    snapshot = observed(child, exits={500: Exit(job.identity, 1)}, members={job.id: (child,)})
    [stop] = plan(want, snapshot, [job], NOW).steps
    assert isinstance(stop, Kill) and stop.job is not None
    assert stop.job.phase == "stopping" and stop.job.stop_then == "restart"
    assert stop.job.last_exit_code == 1
    restarted = plan(want, observed(), [stop.job], NOW + 1)
    assert kinds(restarted) == ["UpdateJob", "Spawn"]


def test_no_job_starts_more_than_once_a_second_whatever_its_backoff() -> None:
    """`reset_after` and `initial` as small as validation allows must not make a hot loop."""
    want = desired(service(backoff={"initial": "10ms", "factor": 1, "reset_after": "1s"}))
    job = running_job(want, started_at=NOW - 0.05, consecutive_failures=0)
    [record] = plan(want, observed(), [job], NOW).steps
    assert isinstance(record, UpdateJob) and record.job.phase == "backoff"
    assert record.job.next_start_at is not None
    assert record.job.next_start_at >= job.started_at + 1.0  # type: ignore[operator]


def test_a_blocked_job_looks_again_within_two_seconds_whatever_its_backoff() -> None:
    want = desired(service(tcp_ports=[8080], backoff={"initial": "20s", "max": "1m"}))
    squatter = proc(4070)
    ports = {8080: PortState(8080, True, (squatter,))}
    job = replace(running_job(want), pid=None, boot_id=None, starttime_ticks=None,
                  phase="blocked", consecutive_failures=5, next_start_at=None)
    [record] = plan(want, observed(squatter, ports=ports), [job], NOW).steps
    assert record.job.phase == "blocked"  # type: ignore[union-attr]
    assert record.job.next_start_at <= NOW + 2.0  # type: ignore[union-attr]


def test_nothing_is_pruned_while_a_spec_file_is_still_being_written() -> None:
    """A rename or checkout shows a service gone from one file before the other file that
    now holds it has settled: pruning then would stop it only to start it again."""
    job = running_job(desired(service("moving")))
    held = plan(desired(service("other")), observed(proc(500)), [job], NOW, hold_prune=True)
    assert not any(isinstance(s, Kill) for s in held.steps) and not held.prune_held
    pruned = plan(desired(service("other")), observed(proc(500)), [job], NOW)
    assert any(isinstance(s, Kill) for s in pruned.steps)


def test_the_operators_latest_word_decides_what_follows_a_stop_but_removal_wins() -> None:

    job = running_job(desired(service()))
    stopping = plan_down(observed(proc(500)), [job], NOW).steps[0].job  # type: ignore[union-attr]
    assert stopping.stop_then == "stopped"
    [record] = plan_restart(observed(proc(500)), [stopping], NOW + 1,
                            frozenset({("web", None)})).steps
    assert record.job.stop_then == "restart"  # type: ignore[union-attr]
    assert record.job.stop_deadline == stopping.stop_deadline  # type: ignore[union-attr]
    retiring = replace(stopping, stop_then="removed")
    assert plan_restart(observed(proc(500)), [retiring], NOW + 1,
                        frozenset({("web", None)})).steps == ()


def test_a_one_shot_that_left_a_helper_running_succeeds_once_the_helper_is_stopped() -> None:
    want = desired(Service.model_validate({"name": "w", "actions": [
        {"name": "setup", "cmd": ["setup"]}]}))
    action = want.actions[0]
    job = running_oneshot(action)
    helper = proc(43, session=43)
    snapshot = observed(helper, exits={42: Exit(Identity(BOOT, 42, 7), 0)},
                        members={job.id: (helper,)})
    [stop] = plan(want, snapshot, [job], NOW + 1).steps
    assert isinstance(stop, Kill) and stop.job is not None
    assert stop.job.phase == "stopping" and stop.job.stop_then == "succeeded"
    assert stop.job.last_exit_code == 0
    [done] = plan(want, observed(), [stop.job], NOW + 2).steps
    assert isinstance(done, UpdateJob) and done.job.phase == "succeeded"
    assert plan(want, observed(), [done.job], NOW + 3).steps == ()


# --- the whole change: actions that start later (issue 10, part 3) -------------------------


def test_actions_waiting_on_after_are_summarised_with_what_they_wait_for() -> None:
    svc = Service.model_validate({"name": "web", "actions": [
        {"name": "migrate", "cmd": ["migrate"]},
        {"name": "api", "process": True, "cmd": ["api"], "after": ["migrate"]},
        {"name": "worker", "process": True, "cmd": ["worker"], "after": ["api", "migrate"]},
    ]})
    first = plan(desired(svc), observed(), [], NOW)
    assert [s.job.action for s in first.changes] == ["migrate"]  # type: ignore[union-attr]
    assert [(w.service, w.action, w.waits_for) for w in first.waiting] == [
        ("web", "api", ("web.migrate",)), ("web", "worker", ("web.api", "web.migrate"))]
    by_action = {s.job.action: s.job for s in first.steps}  # type: ignore[union-attr]
    assert [w.job_id for w in first.waiting] == [by_action["api"].id, by_action["worker"].id]
    assert first.waiting[0].reason == by_action["api"].reason == "waiting for migrate"


def test_a_new_generation_waits_for_its_previous_one_to_stop() -> None:
    job = running_job(desired(service(cmd=["old"])))
    result = plan(desired(service(cmd=["new"])), observed(proc(500)), [job], NOW)
    [waiting] = result.waiting
    assert waiting.waits_for == ("web.api",) and waiting.job_id != job.id


def test_nothing_waits_when_everything_runs() -> None:
    want = desired(service())
    assert plan(want, observed(proc(500)), [running_job(want)], NOW).waiting == ()


# --- suspended services (issue 10, part 8) ------------------------------------------------


SUSPENDED = frozenset({"web"})


def test_a_suspended_service_gets_no_step_at_all() -> None:
    want = desired(service())
    job = running_job(want)
    crashed = observed(exits={500: Exit(job.identity, 1)})
    assert plan(want, crashed, [job], NOW, suspended=SUSPENDED).steps == ()  # not restarted
    assert plan(want, observed(), [], NOW, suspended=SUSPENDED).steps == ()  # not started
    edited = desired(service(cmd=["new"]))  # a new generation is not applied
    assert plan(edited, observed(proc(500)), [job], NOW, suspended=SUSPENDED).steps == ()
    assert kinds(plan(edited, observed(proc(500)), [job], NOW))[0] == "Kill"  # unsuspended


def test_a_suspended_service_removed_from_the_specs_is_kept_until_resumed() -> None:
    job = running_job(desired(service()))
    other = desired(service("other"))
    kept = plan(other, observed(proc(500)), [job], NOW, suspended=SUSPENDED)
    assert kinds(kept) == ["Spawn"] and not kept.prune_held  # only the other service starts
    assert kinds(plan(other, observed(proc(500)), [job], NOW))[0] == "Kill"  # resumed: pruned
    # only suspended services left in an empty specs dir: nothing to prune, nothing held
    alone = plan(Desired(actions=()), observed(proc(500)), [job], NOW, suspended=SUSPENDED)
    assert alone.steps == () and not alone.prune_held


def test_a_stop_in_progress_of_a_suspended_service_is_not_driven_on() -> None:
    job = running_job(desired(service()), phase="stopping", stop_then="removed",
                      stop_deadline=NOW - 1)
    assert plan(Desired(actions=()), observed(proc(500)), [job], NOW, allow_empty=True,
                suspended=SUSPENDED).steps == ()
    assert kinds(plan(Desired(actions=()), observed(proc(500)), [job], NOW,
                      allow_empty=True)) == ["Kill"]  # SIGKILL once resumed


def test_a_suspended_service_still_owns_its_port() -> None:
    """Its process is ours, not a foreign holder a `kill_others` action may stop."""
    web = running_job(desired(service(tcp_ports=[8080])))
    holder = proc(500)
    both = desired(service(tcp_ports=[8080]),
                   service("grab", tcp_ports=[8080], kill_others=True))
    result = plan(both, observed(holder, ports={8080: PortState(8080, True, (holder,))}), [web],
                  NOW, suspended=SUSPENDED)
    assert not any(isinstance(s, Kill) for s in result.steps)
    assert [s.job.phase for s in result.steps] == ["blocked"]  # type: ignore[union-attr]


def test_down_and_restart_leave_a_suspended_service_alone() -> None:
    job = running_job(desired(service()))
    assert plan_down(observed(proc(500)), [job], NOW, suspended=SUSPENDED).steps == ()
    assert plan_restart(observed(proc(500)), [job], NOW, frozenset({("web", None)}),
                        suspended=SUSPENDED).steps == ()


# --- after: across services -------------------------------------------------------------


def test_waits_for_every_action_of_another_service_then_starts() -> None:
    db = Service.model_validate({"name": "db", "actions": [
        {"name": "migrate", "cmd": "x"}, {"name": "seed", "cmd": "y"}]})
    web = service("web", after=["db"])
    want = desired(db, web)
    first = plan(want, observed(), [], NOW)
    spawned = {s.action.key for s in first.steps if isinstance(s, Spawn)}
    assert spawned == {("db", "migrate"), ("db", "seed")}
    pending = [s for s in first.steps if isinstance(s, UpdateJob) and s.job.service == "web"]
    assert pending and pending[0].job.reason == "waiting for db"
    [waiting] = first.waiting  # diff lists each action of db it waits for
    assert (waiting.service, waiting.waits_for) == ("web", ("db.migrate", "db.seed"))
    done = [replace(s.job, phase="succeeded") for s in first.steps
            if isinstance(s, Spawn)]
    second = plan(want, observed(), done, NOW + 1)
    assert [s.action.key for s in second.steps if isinstance(s, Spawn)] == [("web", "api")]


def test_waiting_text_says_why_a_target_will_not_come() -> None:
    web = service("web", after=["db.migrate"])
    result = plan(desired(web), observed(), [], NOW)
    [update] = [s for s in result.steps if isinstance(s, UpdateJob)]
    assert update.job.reason == "waiting for db.migrate (not defined)"
    assert result.waiting[0].waits_for == ("db.migrate",)
