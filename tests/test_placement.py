"""Placement: host labels files, hostname globs, cross-service waits, pruning when un-placed."""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.controller import Reconciler
from reconciler.desired import desired_from_services
from reconciler.host.labels import LabelsError, LabelsReader, host_labels, read_labels
from reconciler.settings import Settings
from reconciler.spec.load import load_specs
from reconciler.spec.model import Service


def svc(name: str, **extra: object) -> Service:
    return Service.model_validate({"name": name, "actions": [{"name": "run", "cmd": "x"}],
                                   **extra})


def write_web_only_and_everywhere(specs_dir: Path, web_only: tuple[str, str] = ("a", "run"),
                                  everywhere: tuple[str, str] = ("b", "run")) -> None:
    """Two sleeping services (service, action): one placed on `role: web` hosts only, one
    on every host."""
    for (service, action), placement in ((web_only, "placement: {labels: {role: web}}\n"),
                                         (everywhere, "")):
        write(specs_dir, f"{service}.yaml",
              f"name: {service}\n{placement}actions:\n"
              f"  - {{name: {action}, process: true, cmd: \"exec sleep 1000\"}}\n")


def test_labels_file_plus_automatic_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.yaml"
    path.write_text("role: web\nzone: 'eu-1'\n")
    labels = host_labels(path)
    assert labels["role"] == "web" and labels["zone"] == "eu-1"
    assert {"hostname", "os", "arch"} <= set(labels)


@pytest.mark.parametrize(("text", "where"), [
    ("- a\n- b\n", ":1:1: labels must be a mapping"),
    ("role: web\nsize: 3\n", ":2:7: must be a string"),
    ("hostname: x\n", ":1:1: 'hostname' is set automatically"),
])
def test_bad_labels_file_is_file_line_col(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "labels.yaml"
    path.write_text(text)
    with pytest.raises(LabelsError) as caught:
        read_labels(path)
    assert f"{path}{where}" in str(caught.value)


def test_desired_filters_by_hostname_glob_and_labels(settings: Settings) -> None:
    here = replace(settings, labels=(("hostname", "web-3"), ("role", "web")))
    desired = desired_from_services([
        svc("a", placement={"hosts": ["web-*"], "labels": {"role": "web"}}),
        svc("b", placement={"hosts": ["db-?"]}),
        svc("c", placement={"labels": {"gpu": "yes-please"}}),
        svc("d")], here)
    assert desired.services == {"a", "d"}
    assert "matches none of db-?" in desired.unplaced["b"]
    assert desired.unplaced["c"] == "label gpu=yes-please wanted, this host has not set"


def test_dependencies_first_across_services(settings: Settings) -> None:
    web = Service.model_validate({"name": "a-web", "actions": [
        {"name": "api", "cmd": "x", "after": ["z-db.migrate"]}]})
    db = Service.model_validate({"name": "z-db", "actions": [{"name": "migrate", "cmd": "x"}]})
    order = [a.key for a in desired_from_services([web, db], settings).actions]
    assert order == [("z-db", "migrate"), ("a-web", "api")]


def write(specs_dir: Path, name: str, text: str) -> None:
    (specs_dir / name).write_text(textwrap.dedent(text))
    (specs_dir / name).chmod(0o644)


def test_a_service_waits_for_another_services_one_shot(settings: Settings,
                                                       reconciler: Reconciler) -> None:
    marker = settings.specs_dir / "migrated"
    write(settings.specs_dir, "db.yaml", f"""\
        name: db
        actions:
          - name: migrate
            cmd: "sleep 0.3; touch {marker}"
        """)
    write(settings.specs_dir, "web.yaml", f"""\
        name: web
        actions:
          - name: api
            process: true
            cmd: "test -e {marker} && exec sleep 1000"
            restart: never
            after: [db.migrate]
        """)
    first = reconciler.reconcile()
    api = next(j for j in first.jobs if j.key == ("web", "api"))
    assert api.phase == "pending" and api.reason == "waiting for db.migrate"
    result = reconciler.converge(wait=20)
    assert result.converged, [(j.key, j.phase, j.reason) for j in result.jobs]
    assert next(j for j in result.jobs if j.key == ("web", "api")).phase == "running"


def test_a_label_change_unplaces_and_prunes_a_running_service(settings: Settings) -> None:
    write_web_only_and_everywhere(settings.specs_dir)
    web = replace(settings, labels=(*settings.labels, ("role", "web")))
    with Reconciler(web) as rec:
        result = rec.converge(wait=20)
        assert {j.service for j in result.jobs if j.phase == "running"} == {"a", "b"}
    with Reconciler(settings) as rec:  # the labels file no longer says role: web
        result = rec.converge(wait=20)
        phases = {j.service: j.phase for j in result.jobs}
        assert phases.get("b") == "running" and phases.get("a") in (None, "removed"), phases


def test_a_running_controller_rereads_a_changed_labels_file(
        settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No restart needed: the daemon's next pass places by the new labels. A labels file
    that turns bad keeps the last good labels (never un-places anything) and is logged."""
    labels_file = tmp_path / "labels.yaml"
    labels_file.write_text("role: web\n")
    write_web_only_and_everywhere(settings.specs_dir)
    web = replace(settings, labels=(*settings.labels, ("role", "web")), labels_file=labels_file)
    with Reconciler(web) as rec:
        result = rec.converge(wait=20)
        assert {j.service for j in result.jobs if j.phase == "running"} == {"a", "b"}
        labels_file.write_text("- not: a mapping\n")  # broken: nothing changes
        result = rec.converge(wait=20)
        assert {j.service for j in result.jobs if j.phase == "running"} == {"a", "b"}
        assert "the last good labels stay in force" in caplog.text
        labels_file.write_text("role: db\n")  # a is not placed here any more: pruned
        result = rec.converge(wait=20)
        phases = {j.service: j.phase for j in result.jobs}
        assert phases.get("b") == "running" and phases.get("a") in (None, "removed"), phases


def test_placement_label_values_must_be_strings(specs_dir: Path) -> None:
    """`n: 1.50` would be read as 1.5 and never match the labels file's "1.50"."""
    write(specs_dir, "a.yaml", """\
        name: a
        placement: {labels: {n: 1.50}}
        actions:
          - {name: run, cmd: "true"}
        """)
    [error] = load_specs(specs_dir).errors
    assert (error.line, "must be a string" in error.message) == (2, True)


def test_a_labels_file_that_is_a_fifo_or_empty_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    with pytest.raises(LabelsError, match="not a regular file"):
        read_labels(fifo)  # never blocks waiting for a writer
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(LabelsError, match="empty"):
        read_labels(empty)
    none = tmp_path / "none.yaml"
    none.write_text("{}\n")
    assert read_labels(none) == {}


def test_a_vanished_or_emptied_labels_file_keeps_the_last_good_labels(tmp_path: Path) -> None:
    labels_file = tmp_path / "labels.yaml"
    labels_file.write_text("role: web\n")
    reader = LabelsReader(labels_file, host_labels(labels_file))
    labels_file.write_text("")  # caught half-written
    assert reader.read()["role"] == "web" and reader.error and "empty" in reader.error
    labels_file.unlink()  # moved away mid-replace
    assert reader.read()["role"] == "web" and reader.error and "gone" in reader.error
    labels_file.write_text("role: db\n")
    assert reader.read()["role"] == "db" and reader.error is None


def test_resume_places_by_the_labels_the_last_pass_used(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The pass `resume` runs must not prune what the daemon placed by its labels, because
    the operator's shell has other ones (or none)."""
    from reconciler import cli

    labels_file = tmp_path / "web.labels.yaml"
    labels_file.write_text("role: web\n")
    write_web_only_and_everywhere(settings.specs_dir, ("web", "app"), ("agent", "beat"))
    dirs = ["--specs", str(settings.specs_dir), "--state-dir", str(settings.state_dir)]
    assert cli.main(["--once", "--labels", str(labels_file), *dirs]) == 0
    assert cli.main(["suspend", "agent", *dirs]) == 0
    capsys.readouterr()
    assert cli.main(["resume", "agent", *dirs]) == 0  # no --labels here
    assert "web.app" not in capsys.readouterr().out  # nothing done to web
    assert cli.main(["status", "-o", "json", *dirs]) == 0
    phases = {(j["service"], j["phase"]) for j in json.loads(capsys.readouterr().out)}
    assert ("web", "running") in phases and ("agent", "running") in phases


def test_a_broken_labels_file_stops_placing_commands_only(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An operator can still look and stop things; what would place by it refuses."""
    from reconciler import cli

    bad = tmp_path / "bad.labels.yaml"
    bad.write_text("- a list\n")
    dirs = ["--specs", str(settings.specs_dir), "--state-dir", str(settings.state_dir),
            "--labels", str(bad)]
    assert cli.main(["status", *dirs]) == 0
    assert cli.main(["down", *dirs]) == 0
    capsys.readouterr()
    assert cli.main(["diff", *dirs]) == 2
    assert "bad.labels.yaml:1:1" in capsys.readouterr().err
    assert cli.main(["--once", *dirs]) == 2
