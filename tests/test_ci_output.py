"""Machine-readable output for GitOps and CI (issue 10, parts 3 and 4): the whole diff as
`diff -o json`, `--once -o json`, `validate -o json` and `validate --format github`, each
checked against its documented shape (docs/operations.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.cli.render import github_annotation
from reconciler.settings import Settings
from tests.test_reconcile import SLEEPER, out_of, run_cli, write_sleeper, write_spec

DIFF_KEYS = {"verb", "service", "action", "job_id", "reason", "waits_for"}
ERROR_KEYS = {"file", "line", "column", "message"}


def write_web_with_migration(specs_dir: Path, migrate_exit: int = 0) -> None:
    write_spec(specs_dir, "web.yaml", f"""\
    name: web
    actions:
      - {{name: migrate, cmd: "exit {migrate_exit}"}}
      - {{name: api, process: true, cmd: {json.dumps(SLEEPER)}, after: [migrate]}}
      - {{name: worker, process: true, cmd: {json.dumps(SLEEPER)}, after: [api]}}
    """)


def test_diff_lists_the_server_waiting_for_the_migration_it_starts(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_web_with_migration(settings.specs_dir)
    code, out, _ = out_of(capsys, settings, "diff", "-o", "json")
    assert code == 1
    entries: list[dict[str, Any]] = json.loads(out)
    assert all(set(e) == DIFF_KEYS for e in entries)
    assert [(e["verb"], e["service"], e["action"], e["waits_for"]) for e in entries] == [
        ("spawn", "web", "migrate", []),
        ("spawn", "web", "api", ["web.migrate"]),
        ("spawn", "web", "worker", ["web.api"])]
    assert all(isinstance(e["job_id"], str) and e["reason"] for e in entries)
    code, out, _ = out_of(capsys, settings, "diff")
    assert code == 1
    assert out.splitlines() == [
        "spawn web.migrate: start (new job)",
        "later: spawn web.api: waiting for migrate",
        "later: spawn web.worker: waiting for api"]


def test_diff_with_nothing_to_do_is_empty_and_exits_0(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_web_with_migration(settings.specs_dir)
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    assert out_of(capsys, settings, "diff", "-o", "json")[:2] == (0, "[]\n")
    assert out_of(capsys, settings, "diff")[:2] == (0, "no changes\n")


def test_diff_json_of_a_prune_and_a_cleanup_names_what_they_act_on(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_sleeper(settings.specs_dir, "gone")
    write_sleeper(settings.specs_dir, "keep")
    assert run_cli(settings, "--once", "--wait", "20s") == 0
    spec.unlink()
    code, out, _ = out_of(capsys, settings, "diff", "-o", "json")
    [kill] = json.loads(out)
    assert code == 1 and kill["verb"] == "kill" and kill["waits_for"] == []
    assert (kill["service"], kill["action"]) == ("gone", "main") and "pid " in kill["reason"]


def test_once_json_reports_converged_source_errors_and_jobs(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_web_with_migration(settings.specs_dir)
    write_spec(settings.specs_dir, "bad.yaml", "name: bad\nbogus: 1\nactions: []\n")
    code, out, _ = out_of(capsys, settings, "--once", "--wait", "20s", "-o", "json")
    assert code == 2  # invalid specs, as before
    report = json.loads(out)
    assert set(report) == {"converged", "source", "errors", "jobs"}
    assert report["converged"] is True
    # not in git and no --revision: unknown (a broken file: nothing applied yet)
    assert report["source"] == {"revision": "unknown", "applied_revision": None, "dirty": False}
    assert report["errors"] and all(set(e) == ERROR_KEYS for e in report["errors"])
    assert report["errors"][0]["file"].endswith("bad.yaml") and report["errors"][0]["line"] == 2
    _, status_out, _ = out_of(capsys, settings, "status", "-o", "json")
    status_jobs = json.loads(status_out)
    same = {"service", "action", "job_id", "phase", "pid", "suspended"}
    assert [{k: j[k] for k in same} for j in report["jobs"]] == [
        {k: j[k] for k in same} for j in status_jobs]
    assert set(report["jobs"][0]) == set(status_jobs[0])  # the same objects


def test_once_json_not_converged_exits_1(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_web_with_migration(settings.specs_dir, migrate_exit=3)
    code, out, _ = out_of(capsys, settings, "--once", "--wait", "300ms", "-o", "json")
    report = json.loads(out)
    assert code == 1 and report["converged"] is False and report["errors"] == []


def write_broken(specs_dir: Path) -> None:
    """Two broken files, one of them with several problems."""
    write_spec(specs_dir, "a.yaml", """\
    name: a
    bogus: 1
    actions:
      - {name: m, cmd: [x], tcp_ports: [99999]}
      - {name: n, cmd: 3}
    """)
    write_spec(specs_dir, "b.yaml", "name: b\nactions: [\n")
    write_sleeper(specs_dir, "ok")


def test_validate_reports_every_problem_of_every_file_in_one_run(
        settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    write_broken(settings.specs_dir)
    code, out, err = out_of(capsys, settings, "validate")
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert [line.split(":")[1:3] for line in lines[:-1]] == [
        ["2", "1"], ["4", "37"], ["5", "20"], ["3", "1"]], err
    assert lines[-1] == "reconcile: invalid: 4 problems in 2 of 3 files"
    code, out, _ = out_of(capsys, settings, "validate", "-o", "json")
    report = json.loads(out)
    assert code == 2 and set(report) == {"valid", "errors"} and report["valid"] is False
    assert all(set(e) == ERROR_KEYS for e in report["errors"])
    assert [(Path(e["file"]).name, e["line"], e["column"]) for e in report["errors"]] == [
        ("a.yaml", 2, 1), ("a.yaml", 4, 37), ("a.yaml", 5, 20), ("b.yaml", 3, 1)]


def test_validate_json_of_valid_specs(settings: Settings,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    write_sleeper(settings.specs_dir, "ok")
    code, out, _ = out_of(capsys, settings, "validate", "-o", "json")
    assert code == 0 and json.loads(out) == {"valid": True, "errors": []}
    code, out, err = out_of(capsys, settings, "validate", "--format", "github")
    assert (code, out) == (0, "") and "valid" in err


def test_validate_github_annotations(settings: Settings,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    write_broken(settings.specs_dir)
    code, out, _ = out_of(capsys, settings, "validate", "--format", "github")
    assert code == 2
    lines = out.splitlines()
    a, b = settings.specs_dir / "a.yaml", settings.specs_dir / "b.yaml"
    assert lines[0] == f"::error file={a},line=2,col=1::unknown key 'bogus'"
    assert lines[3].startswith(f"::error file={b},line=3,col=1::YAML syntax error")
    assert len(lines) == 4
    assert run_cli(settings, "validate", "--format", "github", "-o", "json") == 2


def test_github_annotations_escape_data_and_properties() -> None:
    """As GitHub's toolkit does: `%`, CR, LF everywhere; `:` and `,` in properties too."""
    assert github_annotation("50% done\r\nnext: a, b", "/s/x,y:z%.yaml", 3, 4) == (
        "::error file=/s/x%2Cy%3Az%25.yaml,line=3,col=4::50%25 done%0D%0Anext: a, b")
    assert github_annotation("specs dir unreadable", None, None, None) == (
        "::error::specs dir unreadable")


def test_validate_of_an_unreadable_dir_in_every_format(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nosuch"
    capsys.readouterr()
    assert cli.main(["validate", str(missing), "-o", "json"]) == 2
    [error] = json.loads(capsys.readouterr().out)["errors"]
    assert error["file"] is None and error["line"] is None and error["message"]
    assert cli.main(["validate", str(missing), "--format", "github"]) == 2
    assert capsys.readouterr().out.startswith("::error::")


def test_once_json_source_names_the_revision(settings: Settings,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_web_with_migration(settings.specs_dir)
    code, out, _ = out_of(capsys, settings, "--revision", "v1.2", "--once", "--wait", "20s",
                          "-o", "json")
    report = json.loads(out)
    assert code == 0 and report["converged"] is True
    assert report["source"] == {"revision": "v1.2", "applied_revision": "v1.2", "dirty": False}
