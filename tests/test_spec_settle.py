"""Half-written spec files never stop services: a file changed less than `settle` ago is not
read yet, and a file with no documents is an error that keeps its last good version."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

from reconciler.controller import PassResult, Reconciler
from reconciler.settings import Settings
from reconciler.spec.load import LoadResult, load_specs
from tests.helpers import wait_for

V1 = "name: web\nactions:\n  - {name: main, process: true, cmd: [srv]}\n"
V2 = "name: web\ndescription: v2\nactions:\n  - {name: main, process: true, cmd: [srv]}\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def settled(specs_dir: Path, last_good: dict[str, str], settle: float) -> LoadResult:
    """Load again and again until no file is too fresh (the change time counts too, so
    backdating the mtime cannot skip the window)."""
    return wait_for(lambda: (r := load_specs(specs_dir, last_good, settle=settle))
                    .unsettled_until is None and r, timeout=5, message="files settle")


def test_a_file_is_read_once_it_has_been_quiet_for_settle(specs_dir: Path) -> None:
    path = write(specs_dir / "web.yaml", V1)
    first = settled(specs_dir, {}, settle=0.3)
    assert first.services["web"].description == ""
    last_good = {"web.yaml": V1}

    write(path, V2)  # just changed: the last good version stays in force
    before = time.time()
    fresh = load_specs(specs_dir, last_good, settle=0.3)
    assert fresh.services["web"].description == ""
    outcome = fresh.files["web.yaml"]
    assert outcome.unsettled and outcome.used_last_good and not outcome.errors
    assert fresh.unsettled_until is not None and fresh.unsettled_until > before

    assert settled(specs_dir, last_good, settle=0.3).services["web"].description == "v2"
    assert fresh.unsettled_until <= time.time()  # it said when to look again, truthfully


def test_a_new_file_is_not_loaded_before_it_settles(specs_dir: Path) -> None:
    write(specs_dir / "web.yaml", V1)
    result = load_specs(specs_dir, settle=60)
    assert result.services == {} and result.errors == () and result.ok
    assert result.files["web.yaml"].unsettled and not result.files["web.yaml"].used_last_good
    assert result.unsettled_until is not None
    assert load_specs(specs_dir, settle=0).services.keys() == {"web"}  # validate, diff


def test_a_future_mtime_is_clock_skew_not_a_write(specs_dir: Path) -> None:
    path = write(specs_dir / "web.yaml", V1)
    tomorrow = time.time() + 86400
    os.utime(path, (tomorrow, tomorrow))
    result = load_specs(specs_dir, settle=0.2)
    assert "web" in result.services and result.unsettled_until is None


def test_an_empty_file_is_an_error_and_keeps_its_last_good(specs_dir: Path) -> None:
    for text in ("", "# soon\n", "---\n"):
        write(specs_dir / "web.yaml", text)
        result = load_specs(specs_dir, {"web.yaml": V1})
        [error] = result.errors
        assert str(error) == (f"{specs_dir / 'web.yaml'}:1:1: has no services: "
                              "delete the file to remove them")
        assert "web" in result.services and result.files["web.yaml"].used_last_good


SLEEPER = f"[{sys.executable}, -c, 'import time; time.sleep(3600)']"
SPEC = f"name: web\nactions:\n  - {{name: main, process: true, cmd: {SLEEPER}}}\n"


def main_job(result: PassResult) -> tuple[str, int | None]:
    [job] = [j for j in result.jobs if j.key == ("web", "main")]
    return job.id, job.pid


def test_truncate_then_write_keeps_the_service_running(settings: Settings) -> None:
    """scp, `curl -o` and shell redirection truncate first and write later (0.3-0.6 s gap
    seen): the service was killed and came back with a new job id."""
    path = settings.specs_dir / "web.yaml"
    write(path, SPEC)
    with Reconciler(dataclasses.replace(settings, settle=0.2)) as rec:
        running = main_job(rec.converge(wait=20))
        assert running[1] is not None

        path.write_text("")  # truncated; the rest follows "later"
        during = rec.reconcile()
        assert during.plan.steps == () and main_job(during) == running
        assert during.loaded.unsettled_until is not None

        path.write_text(SPEC)
        after = wait_for(lambda: (r := rec.reconcile()).loaded.unsettled_until is None and r,
                         timeout=5, message="spec settles")
        assert after.plan.steps == () and main_job(after) == running
        assert not after.loaded.errors


def test_a_file_emptied_for_good_stops_nothing(settings: Settings,
                                               reconciler: Reconciler) -> None:
    path = write(settings.specs_dir / "web.yaml", SPEC)
    running = main_job(reconciler.converge(wait=20))
    path.write_text("")
    result = reconciler.reconcile()
    assert result.plan.steps == () and main_job(result) == running
    assert "has no services" in str(result.loaded.errors[0])
