"""`limits:` per action (DESIGN §8.4, docs/spec.md Limits): the spec, the generation, the
record, and the rlimits a real process starts with (read back from /proc/<pid>/limits)."""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.controller import Reconciler
from reconciler.host.identity import identity_of
from reconciler.host.limits import child_fd_limit, unraisable_hard_limits
from reconciler.host.spawn import GATE_ARGV0, Children, SpawnError
from reconciler.identity import Identity
from reconciler.settings import Settings
from reconciler.spec.load import SpecErrors, parse_text
from reconciler.spec.model import UNLIMITED, Action
from reconciler.state.records import JobRecord, JobSpec
from tests.helpers import wait_for
from tests.test_reconcile import write_spec, yaml_list

PY = sys.executable
SLEEPER = [PY, "-c", "import time; time.sleep(3600)"]
NR_OPEN = int(Path("/proc/sys/fs/nr_open").read_text())


def spec(limits: str) -> str:
    return (f"name: web\nactions:\n  - name: api\n    process: true\n"
            f"    cmd: {yaml_list(SLEEPER)}\n    limits: {limits}\n")


def action(limits: str) -> Action:
    return parse_text(spec(limits), "web.yaml")[0].actions[0]


def errors(limits: str) -> list[str]:
    with pytest.raises(SpecErrors) as caught:
        parse_text(spec(limits), "web.yaml")
    return [str(e) for e in caught.value.errors]


def proc_limits(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/<pid>/limits as {name: (soft, hard)}, e.g. {"Max open files": ("256", "256")}."""
    rows = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {row[:26].strip(): (row[26:47].strip(), row[47:68].strip()) for row in rows}


# --- the spec --------------------------------------------------------------------------------

def test_every_limit_is_read_in_its_unit() -> None:
    limits = action("{max_rss: 100MiB, nofile: 256, nproc: unlimited, core: 0, "
                    "memlock: 64KiB, as: 1GiB, fsize: 1MiB}").limits
    assert limits.max_rss == 100 * 1024**2
    assert limits.rlimits() == (("nofile", 256), ("nproc", UNLIMITED), ("core", 0),
                                ("memlock", 64 * 1024), ("as", 1024**3), ("fsize", 1024**2))


@pytest.mark.parametrize("limits, message", [
    ("{max_rss: 512KiB}", "actions[0].limits.max_rss: must be at least 1MiB"),
    ("{max_rss: 2TiB}", "actions[0].limits.max_rss: must be at most 1TiB"),
    ("{nofile: 0}", "actions[0].limits.nofile: must be at least 1"),
    ("{nofile: unlimited}", "actions[0].limits.nofile: must be a number, not a string"),
    ("{nofile: 2000000000}", "actions[0].limits.nofile: must be at most 1073741824"),
    ("{nproc: 5000000}", "actions[0].limits.nproc: must be at most 4194304"),
    ("{core: 10}", "actions[0].limits.core: sizes need a unit"),
    ("{as: 4KiB}", "actions[0].limits.as: must be at least 1MiB"),
    ("{fsize: true}", "actions[0].limits.fsize: must be a size"),
    ("{nofiles: 10}", "actions[0].limits: unknown key 'nofiles' (did you mean 'nofile'?)"),
    ("{as_: 1GiB}", "actions[0].limits: unknown key 'as_' (did you mean 'as'?)"),
])
def test_a_bad_limit_is_an_error_at_its_line_and_column(limits: str, message: str) -> None:
    found = errors(limits)
    assert len(found) == 1
    assert found[0].startswith("web.yaml:6:"), found
    assert message in found[0]


def test_the_schema_declares_as_not_as_underscore() -> None:
    from reconciler.spec.model import spec_json_schema
    properties = spec_json_schema()["$defs"]["Limits"]["properties"]
    assert "as" in properties and "as_" not in properties


# --- the generation and the record ------------------------------------------------------------

def test_limits_are_part_of_the_generation() -> None:
    base = action("{nofile: 256}").generation()
    assert action("{nofile: 512}").generation() != base
    assert action("{nofile: 256, max_rss: 100MiB}").generation() != base
    assert action("{nofile: 256}").generation() == base


def test_an_action_without_limits_keeps_the_generation_it_had_before_limits_existed() -> None:
    """Upgrading the reconciler must not restart every job: the hash is the one computed
    before `limits:` was added (for this very action)."""
    old = Action.model_validate({"name": "a", "cmd": ["srv", "--x"], "process": True,
                                 "env": {"A": "1"}, "tcp_ports": [80]})
    assert old.generation() == "a57a07e52307cdef"
    assert Action.model_validate({"name": "a", "cmd": ["srv", "--x"], "process": True,
                                  "env": {"A": "1"}, "tcp_ports": [80],
                                  "limits": {}}).generation() == "a57a07e52307cdef"


def test_max_rss_is_kept_in_the_record_and_an_old_record_loads_without_it() -> None:
    spec_ = JobSpec(argv=("srv",), max_rss=100 * 1024**2)
    assert JobSpec.from_dict(spec_.to_dict()) == spec_
    old = {k: v for k, v in spec_.to_dict().items() if k != "max_rss"}
    assert JobSpec.from_dict(old).max_rss is None
    assert JobSpec.from_dict({**old, "max_rss": "lots"}).max_rss is None


def test_max_rss_reaches_the_desired_action_and_the_job_spec(
        settings: Settings, reconciler: Reconciler) -> None:
    write_spec(settings.specs_dir, "web.yaml", spec("{max_rss: 100MiB, core: 0}"))
    desired = reconciler.reconcile().desired.actions[0]
    assert desired.max_rss == 100 * 1024**2
    assert desired.rlimits == (("core", 0),)
    assert desired.job_spec().max_rss == 100 * 1024**2
    stored = wait_for(lambda: [j for j in reconciler.store.jobs() if j.action == "api"])
    assert isinstance(stored[0], JobRecord) and stored[0].spec.max_rss == 100 * 1024**2


# --- the rlimits of a real process -----------------------------------------------------------

def test_a_spawned_process_has_the_rlimits_it_was_given(tmp_path: Path) -> None:
    children = Children()
    try:
        identity = children.spawn(SLEEPER, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                                  log_path=tmp_path / "log", rlimits=(
                                      ("nofile", 256), ("core", 0), ("fsize", 1024**2),
                                      ("nproc", 4096), ("memlock", 64 * 1024),
                                      ("as", UNLIMITED)))
        _wait_running(identity.pid)
        limits = proc_limits(identity.pid)
        assert limits["Max open files"] == ("256", "256")
        assert limits["Max core file size"] == ("0", "0")
        assert limits["Max file size"] == (str(1024**2), str(1024**2))
        assert limits["Max processes"] == ("4096", "4096")
        assert limits["Max locked memory"] == (str(64 * 1024), str(64 * 1024))
        assert limits["Max address space"] == ("unlimited", "unlimited")
    finally:
        for pid in children.pids():
            os.kill(pid, 9)
        wait_for(lambda: (children.reap(), not children.pids())[1], message="reaped")
        children.close()


def test_the_spec_nofile_wins_over_the_open_file_limit_the_gate_gives_back(
        tmp_path: Path) -> None:
    """The gate's shell sets the soft limit the controller was started with (`ulimit -S
    -n "$1"`), maybe after our prlimit: with a spec `nofile` above that soft limit the job
    would run with soft ≠ hard. So with a spec `nofile` the gate gets no `$1` (seen on the
    waiting gate's command line, from `enroll`), and the job has exactly the spec's."""
    gate_args: list[list[str]] = []

    def look(identity: Identity) -> None:
        # the spawner resumes (vfork) while the child's exec is still placing its arguments:
        # the command line reads empty until then
        raw = wait_for(Path(f"/proc/{identity.pid}/cmdline").read_bytes,
                       message="the gate's command line")
        gate_args.append(raw.decode().split("\0")[3:5])

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = min(hard, NR_OPEN, 4096)
    children = Children()
    try:
        identity = children.spawn(SLEEPER, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                                  log_path=tmp_path / "log", rlimits=(("nofile", wanted),),
                                  enroll=look)
        _wait_running(identity.pid)
        assert proc_limits(identity.pid)["Max open files"] == (str(wanted), str(wanted))
        without = children.spawn(SLEEPER, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                                 log_path=tmp_path / "log", enroll=look)
        _wait_running(without.pid)
        assert gate_args == [[GATE_ARGV0, ""], [GATE_ARGV0, str(child_fd_limit())]]
        assert proc_limits(without.pid)["Max open files"][0] == str(child_fd_limit())
    finally:
        for pid in children.pids():
            os.kill(pid, 9)
        children.close()


def _wait_running(pid: int) -> None:
    """The gate execs the command in place: once its cmdline is the command, it runs."""
    wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(PY.encode()),
             message="the command to run")


def test_a_limit_that_cannot_be_set_is_a_spawn_error_and_the_command_never_runs(
        tmp_path: Path) -> None:
    """Above fs.nr_open even root gets EPERM: the error names the limit, the gate closes."""
    marker = tmp_path / "ran"
    children = Children()
    try:
        with pytest.raises(SpawnError) as caught:
            children.spawn(["/bin/sh", "-c", f"touch {marker}"], cwd=tmp_path,
                           env={"PATH": "/usr/bin:/bin"}, log_path=tmp_path / "log",
                           rlimits=(("core", 0), ("nofile", NR_OPEN + 1)))
        assert str(caught.value) == (f"limits.nofile: cannot set it to {NR_OPEN + 1}: "
                                     f"Operation not permitted (the kernel's fs.nr_open is "
                                     f"{NR_OPEN})")
        exits = wait_for(children.reap, message="the gated child to exit")
        assert [e.returncode for e in exits.values()] == [125]  # the gate closed: never ran
        assert not marker.exists()
    finally:
        children.close()


def test_a_job_runs_with_its_limits_and_a_change_restarts_it(
        settings: Settings, reconciler: Reconciler) -> None:
    write_spec(settings.specs_dir, "web.yaml", spec("{nofile: 256, core: 0, fsize: 1MiB}"))
    first = wait_for(lambda: _running(reconciler), message="the job to run")
    limits = proc_limits(first.pid or 0)
    assert limits["Max open files"] == ("256", "256")
    assert limits["Max core file size"] == ("0", "0")
    assert limits["Max file size"] == (str(1024**2), str(1024**2))

    write_spec(settings.specs_dir, "web.yaml", spec("{nofile: 512, core: 0, fsize: 1MiB}"))
    second = wait_for(lambda: _running(reconciler, other_than=first.generation),
                      message="the new generation to run")
    assert second.pid != first.pid
    assert proc_limits(second.pid or 0)["Max open files"] == ("512", "512")
    wait_for(lambda: _gone(reconciler, first), message="the old generation to stop")


def test_a_job_whose_limit_cannot_be_set_backs_off_naming_the_limit(
        settings: Settings, reconciler: Reconciler) -> None:
    """With CAP_SYS_RESOURCE validation lets any bounded nofile through, but the kernel
    refuses one above fs.nr_open: a spawn error naming the limit, and backoff."""
    if unraisable_hard_limits() is not None:
        pytest.skip("without CAP_SYS_RESOURCE validation refuses it first (next test)")
    write_spec(settings.specs_dir, "web.yaml", spec(f"{{nofile: {NR_OPEN + 1}}}"))
    result = reconciler.reconcile()
    (job,) = result.jobs
    assert job.phase == "backoff" and job.failure_class == "spawn-error"
    assert job.reason.startswith(f"spawn-error: limits.nofile: cannot set it to {NR_OPEN + 1}")
    assert job.pid is None


def test_a_job_whose_limit_is_above_our_hard_limit_is_not_started(
        settings: Settings, reconciler: Reconciler) -> None:
    """Without CAP_SYS_RESOURCE the controller knows at load time that the limit can never
    be set: the file is an error (file:line:column) and nothing starts."""
    hard = unraisable_hard_limits()
    if hard is None:
        pytest.skip("with CAP_SYS_RESOURCE any bounded limit may be set")
    write_spec(settings.specs_dir, "web.yaml", spec(f"{{nofile: {hard['nofile'] + 1}}}"))
    result = reconciler.reconcile()
    assert result.jobs == ()
    (error,) = [str(e) for e in result.loaded.errors]
    assert ":6:" in error, error
    assert "limits.nofile" in error and "above the reconciler's own hard limit" in error


# --- validation against the controller's own hard limits --------------------------------------

def _cap_sys_resource() -> bool:
    status = Path("/proc/self/status").read_text()
    caps = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(caps, 16) >> 24 & 1)


def test_unraisable_hard_limits_are_ours_unless_we_can_raise_them() -> None:
    found = unraisable_hard_limits()
    if _cap_sys_resource():
        assert found is None
    else:
        assert found is not None
        assert found["nofile"] == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        assert found["as"] == resource.getrlimit(resource.RLIMIT_AS)[1]


HARD = {"nofile": 4096, "memlock": 8 * 1024**2, "core": UNLIMITED}


@pytest.mark.parametrize("limits, message", [
    ("{nofile: 100000}", "actions[0].limits.nofile: 100000 is above the reconciler's own hard "
                         "limit 4096, which it cannot raise without CAP_SYS_RESOURCE: lower the "
                         "value, or raise the reconciler's hard limit (systemd: LimitNOFILE=)"),
    ("{memlock: unlimited}", "actions[0].limits.memlock: unlimited is above the reconciler's "
                             "own hard limit 8MiB"),
    ("{core: 0, memlock: 9MiB}", "actions[0].limits.memlock: 9MiB is above"),
])
def test_a_limit_above_a_hard_limit_we_cannot_raise_is_a_validation_error(
        limits: str, message: str) -> None:
    with pytest.raises(SpecErrors) as caught:
        parse_text(spec(limits), "web.yaml", hard_limits=HARD)
    (found,) = [str(e) for e in caught.value.errors]
    assert found.startswith("web.yaml:6:") and message in found, found


def test_limits_within_the_hard_limits_pass_validation() -> None:
    (service,) = parse_text(spec("{nofile: 4096, memlock: 8MiB, core: unlimited}"),
                            "web.yaml", hard_limits=HARD)
    assert service.actions[0].limits.nofile == 4096


def test_validate_checks_the_controllers_own_hard_limits(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """The path `reconcile validate` takes, on this host's real limits."""
    hard = unraisable_hard_limits()
    if hard is None or hard["memlock"] == resource.RLIM_INFINITY:
        pytest.skip("this controller can raise its hard limits")
    write_spec(settings.specs_dir, "web.yaml", spec("{memlock: unlimited}"))
    code = cli.main(["validate", "--specs", str(settings.specs_dir),
                     "--state-dir", str(settings.state_dir)])
    out = capsys.readouterr()
    assert code == 2
    assert "web.yaml:6:" in out.out + out.err
    assert "limits.memlock: unlimited is above the reconciler's own hard limit" in (
        out.out + out.err)


def test_raising_a_hard_limit_without_the_capability_is_a_spawn_error(tmp_path: Path) -> None:
    """What validation cannot know (the controller gained no capability since, but a spec
    that bypassed it, e.g. a last-good one from before): prlimit's EPERM, named."""
    if _cap_sys_resource():
        pytest.skip("this controller can raise its hard limits")
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no finite memlock hard limit to exceed")
    children = Children()
    try:
        with pytest.raises(SpawnError) as caught:
            children.spawn(SLEEPER, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
                           log_path=tmp_path / "log", rlimits=(("memlock", hard + 4096),))
        assert str(caught.value) == (f"limits.memlock: cannot raise the hard limit from {hard} "
                                     f"to {hard + 4096}: Operation not permitted")
        exits = wait_for(children.reap, message="the gated child to exit")
        assert [e.returncode for e in exits.values()] == [125]
    finally:
        children.close()


def _running(reconciler: Reconciler, other_than: str | None = None) -> JobRecord | None:
    result = reconciler.reconcile()
    for job in result.jobs:
        if job.phase == "running" and job.pid and job.generation != other_than:
            return job
    return None


def _gone(reconciler: Reconciler, job: JobRecord) -> bool:
    reconciler.reconcile()
    return job.identity is not None and identity_of(job.pid or 0) != job.identity


def test_limits_dump_as_written_and_load_back() -> None:
    given = action("{max_rss: 100MiB, nofile: 256, nproc: unlimited, core: 0, as: 1GiB}")
    dumped = given.model_dump()
    assert dumped["limits"]["as"] == "1GiB" and dumped["limits"]["nproc"] == "unlimited"
    assert Action.model_validate(dumped) == given


def test_max_rss_on_a_one_shot_is_an_error_not_silently_ignored() -> None:
    """Only a process action is stopped for its memory (plan's `_plan_process`): a one-shot
    with `max_rss` would run unbounded while the spec says otherwise."""
    text = (f"name: web\nactions:\n  - name: once\n"
            f"    cmd: {yaml_list(SLEEPER)}\n    limits: {{max_rss: 100MiB}}\n")
    with pytest.raises(SpecErrors) as caught:
        parse_text(text, "web.yaml")
    found = [str(e) for e in caught.value.errors]
    assert len(found) == 1 and "web.yaml:5:" in found[0], found
    assert "only process actions can set limits.max_rss" in found[0]
    # the rlimits are set before exec for a one-shot too
    text = text.replace("max_rss: 100MiB", "nofile: 256")
    assert parse_text(text, "web.yaml")[0].actions[0].limits.nofile == 256
