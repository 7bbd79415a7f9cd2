"""Secrets stay out of what operators paste into tickets (`status`, `events`, `diff`), and
the state dir is private: 0700 directories, 0600 files, even under a permissive umask."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.settings import Settings
from tests.security.common import PY, run_cli, write_spec

SECRETS = {"API_TOKEN": "tok-5ecr3t-aaaa", "DB_PASSWORD": "pw-5ecr3t-bbbb",
           "CLIENT_SECRET": "cs-5ecr3t-cccc", "SSH_KEY": "key-5ecr3t-dddd",
           "github_token": "gh-5ecr3t-eeee"}
SLEEP = "import time; time.sleep(3600)"


def outputs(settings: Settings) -> dict[str, str]:
    """Every listing an operator may share, in both formats."""
    found = {}
    for args in (("status",), ("status", "-o", "json"), ("events", "-n", "1000"),
                 ("events", "-o", "json", "-n", "1000"), ("diff",), ("diff", "-o", "json")):
        code, out, err = run_cli(settings, *args)
        assert code in (0, 1), (args, code, err)
        found[" ".join(args)] = out + err
    return found


def leaks(texts: dict[str, str], secrets: dict[str, str]) -> list[tuple[str, str]]:
    return [(where, name) for where, text in texts.items() for name, value in secrets.items()
            if value in text]


def env_spec(secrets: dict[str, str], cmd: list[str] | str) -> str:
    env = json.dumps({**secrets, "PLAIN": "visible"})
    return f"""\
    name: app
    actions:
      - name: main
        process: true
        cmd: {json.dumps(cmd)}
        env: {env}
    """


def test_secret_env_values_never_appear_in_status_events_or_diff(
        settings: Settings, reconciler: Reconciler) -> None:
    write_spec(settings.specs_dir, "app.yaml", env_spec(SECRETS, [PY, "-c", SLEEP]))
    before = outputs(settings)  # diff shows the spawn it would do
    assert reconciler.converge(wait=20).converged
    running = outputs(settings)
    changed = {k: "9" + v for k, v in SECRETS.items()}
    write_spec(settings.specs_dir, "app.yaml", env_spec(changed, [PY, "-c", SLEEP]))
    pending = outputs(settings)  # diff shows the kill + respawn of a changed env
    assert reconciler.converge(wait=20).converged
    after = outputs(settings)
    found = leaks(before | running, SECRETS) + leaks(pending | after, {**SECRETS, **changed})
    assert found == []


def test_secret_values_on_the_command_line_are_redacted(
        settings: Settings, reconciler: Reconciler) -> None:
    cmd = (f"API_TOKEN={SECRETS['API_TOKEN']} exec {PY} -c '{SLEEP}' "
           f"--password={SECRETS['DB_PASSWORD']}")
    write_spec(settings.specs_dir, "app.yaml", env_spec({}, cmd))
    assert reconciler.converge(wait=20).converged
    assert leaks(outputs(settings), SECRETS) == []


def test_validation_errors_do_not_echo_env_values(settings: Settings) -> None:
    """A value refused for its type is located, not quoted."""
    write_spec(settings.specs_dir, "app.yaml", """\
    name: app
    actions:
      - name: main
        cmd: [a]
        env: {API_TOKEN: [tok-5ecr3t-aaaa], DB_PASSWORD: {x: pw-5ecr3t-bbbb}}
    """)
    code, out, err = run_cli(settings, "validate")
    assert code == 2
    assert leaks({"validate": out + err}, SECRETS) == []


def _modes(root: Path) -> tuple[list[tuple[str, str]], int]:
    bad, checked = [], 0
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            checked += 1
            if mode != 0o700:
                bad.append((os.path.join(dirpath, name), oct(mode)))
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISSOCK(st.st_mode):
                continue  # a managed process's own socket: its mode is its business
            checked += 1
            if stat.S_IMODE(st.st_mode) & 0o077:
                bad.append((os.path.join(dirpath, name), oct(stat.S_IMODE(st.st_mode))))
    return bad, checked


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_state_dir_is_0700_and_every_file_in_it_0600(settings: Settings, umask: int) -> None:
    old = os.umask(umask)
    try:
        write_spec(settings.specs_dir, "a.yaml", f"""\
        name: a
        actions:
          - {{name: once, cmd: "echo hi"}}
          - name: main
            process: true
            singleton: true
            after: [once]
            cmd: "echo run; exec {PY} -c '{SLEEP}'"
        """)
        with Reconciler(settings) as rec:
            assert rec.converge(wait=20).converged
            [main] = [j for j in rec.store.jobs() if j.action == "main"]
            assert main.pid is not None
            code, _, _ = run_cli(settings, "restart", "a.main")  # rotates the log
            assert code == 0
            rec.reconcile()
        assert stat.S_IMODE(settings.state_dir.stat().st_mode) == 0o700
        bad, checked = _modes(settings.state_dir)
        assert bad == []
        names = {p.name for p in settings.state_dir.rglob("*")}
        assert {"state.db", "main.log", "main.log.1", "a.main.pid"} <= names, names
        assert any(n.endswith(".enroll.json") for n in names) and checked >= 8
    finally:
        os.umask(old)
