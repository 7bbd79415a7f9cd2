"""`after:` across services, env_file and placement as the loader sees them (real files)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.settings import Settings
from reconciler.spec.load import load_specs
from reconciler.state.store import Store


def write(specs_dir: Path, name: str, text: str, mode: int = 0o644) -> Path:
    path = specs_dir / name
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


DB = "name: db\nactions:\n  - name: migrate\n    cmd: [x]\n  - name: serve\n    cmd: [y]\n"


def test_cross_service_targets_load(specs_dir: Path) -> None:
    write(specs_dir, "a.yaml", DB)
    write(specs_dir, "b.yaml", "name: web\nactions:\n  - name: api\n    cmd: [x]\n"
                               "    after: [db.migrate, db]\n")
    loaded = load_specs(specs_dir)
    assert loaded.ok, loaded.errors
    assert loaded.services["web"].actions[0].after == ["db.migrate", "db"]


def test_unknown_targets_are_reported_with_every_other_error(specs_dir: Path) -> None:
    write(specs_dir, "a.yaml", DB)
    write(specs_dir, "b.yaml", "name: web\nactions:\n  - name: api\n    cmd: [x]\n"
                               "    after: [db.migrat, dbx, nope.x]\n    restrat: never\n")
    loaded = load_specs(specs_dir)
    texts = [str(e) for e in loaded.errors]
    assert any(":5:13: actions[0].after[0]: service 'db' has no action 'migrat' "
               "(did you mean 'migrate'?)" in t for t in texts), texts
    assert any(":5:24: actions[0].after[1]: unknown action or service 'dbx'" in t
               for t in texts), texts
    assert any(":5:29: actions[0].after[2]: unknown service 'nope'" in t for t in texts)
    assert any("unknown key 'restrat'" in t for t in texts)  # in the same run
    assert "web" not in loaded.services and "db" in loaded.services


def test_ambiguous_name_is_an_error(specs_dir: Path) -> None:
    write(specs_dir, "a.yaml", DB)
    write(specs_dir, "b.yaml", "name: web\nactions:\n  - name: db\n    cmd: [x]\n"
                               "  - name: api\n    cmd: [x]\n    after: [db]\n")
    [error] = load_specs(specs_dir).errors
    assert error.line == 7 and "'db' is both an action of this service and a service" in \
        error.message


def test_cycle_across_files_is_reported_at_the_closing_entry(specs_dir: Path) -> None:
    write(specs_dir, "a.yaml", "name: db\nactions:\n  - name: migrate\n    cmd: [x]\n"
                               "    after: [web.api]\n")
    write(specs_dir, "b.yaml", "name: web\nactions:\n  - name: api\n    cmd: [x]\n"
                               "    after: [db]\n")
    loaded = load_specs(specs_dir)
    [error] = loaded.errors
    assert error.message.endswith("cycle web.api -> db.migrate -> web.api") or \
        error.message.endswith("cycle db.migrate -> web.api -> db.migrate")
    assert (error.line, error.column) == (5, 13)
    assert len(loaded.services) == 1  # the refused file (no last good) is not in force


def test_a_bad_cross_reference_keeps_the_last_good_version(specs_dir: Path) -> None:
    good = "name: web\nactions:\n  - name: api\n    cmd: [x]\n"
    write(specs_dir, "b.yaml", good + "    after: [dbx]\n")
    loaded = load_specs(specs_dir, {"b.yaml": good})
    assert loaded.files["b.yaml"].used_last_good and "web" in loaded.services


def test_deleting_a_dependency_never_drops_the_dependent(specs_dir: Path) -> None:
    text = "name: web\nactions:\n  - name: api\n    cmd: [x]\n    after: [db]\n"
    write(specs_dir, "b.yaml", text)
    loaded = load_specs(specs_dir, {"b.yaml": text})
    assert loaded.errors and "web" in loaded.services


def test_env_file_is_merged_under_env_and_changes_the_generation(specs_dir: Path) -> None:
    write(specs_dir, "app.env", '# c\n\nexport A=1\nB="two words\\n"\nC=\'lit $x\'\nD=x # c\n',
          0o600)
    write(specs_dir, "a.yaml", "name: app\nactions:\n  - name: run\n    cmd: [x]\n"
                               "    env_file: app.env\n    env: {A: override}\n")
    action = load_specs(specs_dir).services["app"].actions[0]
    assert action.env == {"A": "override", "B": "two words\n", "C": "lit $x", "D": "x"}
    first = action.generation()
    (specs_dir / "app.env").write_text("B=3\n")
    assert load_specs(specs_dir).services["app"].actions[0].generation() != first


def test_env_file_errors_point_at_the_entry(specs_dir: Path) -> None:
    write(specs_dir, "bad.env", "OK=1\nnot a line\n")
    write(specs_dir, "a.yaml", "name: app\nactions:\n  - name: run\n    cmd: [x]\n"
                               "    env_file: [missing.env, bad.env]\n")
    texts = [str(e) for e in load_specs(specs_dir).errors]
    assert any(":5:16: actions[0].env_file[0]: cannot read env file missing.env" in t
               for t in texts), texts
    assert any(":5:29: actions[0].env_file[1]: env file bad.env: line 2: expected KEY=VALUE"
               in t for t in texts), texts
    write(specs_dir, "a.yaml", "name: app\nactions:\n  - {name: run, cmd: [x], "
                               "env_file: ../x.env}\n")
    [error] = load_specs(specs_dir).errors
    assert "env_file[0]: must be a path inside the specs dir" in error.message


def test_env_file_symlink_out_of_the_specs_dir_is_refused(specs_dir: Path,
                                                            tmp_path: Path) -> None:
    (tmp_path / "secret.env").write_text("X=1\n")
    (specs_dir / "link.env").symlink_to(tmp_path / "secret.env")
    write(specs_dir, "a.yaml", "name: app\nactions:\n  - {name: run, cmd: [x], "
                               "env_file: link.env}\n")
    [error] = load_specs(specs_dir).errors
    assert "outside the specs dir" in error.message and error.line == 3


def test_bad_host_glob_is_an_error_at_its_position(specs_dir: Path) -> None:
    write(specs_dir, "a.yaml", "name: app\nplacement:\n  hosts: ['web-[12']\n"
                               "actions:\n  - {name: run, cmd: [x]}\n")
    [error] = load_specs(specs_dir).errors
    assert (error.line, error.column) == (3, 11) and "placement.hosts[0]" in error.message


def test_a_missing_env_file_keeps_the_version_in_force_as_it_was(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """A controller that never read the env file (restarted, or `--once` in a new process)
    keeps the last good version with the values it was good with: the running job is not
    restarted with its variables gone."""
    write(settings.specs_dir, "web.env", "APP_MODE=production\n")
    write(settings.specs_dir, "web.yaml", """\
        name: web
        actions:
          - name: app
            process: true
            env_file: web.env
            cmd: "exec sleep 1000"
        """)
    with Reconciler(settings) as rec:
        [before] = rec.converge(wait=20).jobs
    (settings.specs_dir / "web.env").unlink()
    once = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "--once", "--wait", "10s", "-o", "json",
         "--specs", str(settings.specs_dir), "--state-dir", str(settings.state_dir)],
        capture_output=True, text=True, timeout=60, check=False,
        cwd=Path(__file__).resolve().parents[1])
    assert once.returncode == 2  # the spec file is refused: its env file is gone
    [after] = json.loads(once.stdout)["jobs"]
    assert (after["job_id"], after["pid"], after["restart_count"]) == (
        before.id, before.pid, 0)
    with Store.open_readonly(settings.db_path) as store:
        record = store.spec_records()["web.yaml"]
    assert record.env_files == (("web.env", (("APP_MODE", "production"),)),)


def test_a_long_cycle_is_reported_on_one_short_line(specs_dir: Path) -> None:
    n = 2000
    for i in range(n):
        write(specs_dir, f"s{i:04d}.yaml", f"""\
            name: s{i:04d}
            actions:
              - {{name: a, cmd: "true", after: [s{(i + 1) % n:04d}.a]}}
            """)
    errors = [e for e in load_specs(specs_dir).errors if "cycle" in e.message]
    assert len(errors) == 1 and len(errors[0].message) < 600 and "more" in errors[0].message
