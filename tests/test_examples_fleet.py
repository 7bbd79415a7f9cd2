"""examples/fleet/ works as docs/gitops.md says: one repository, each kind of host running
what its labels place on it, checked the way its CI workflow checks it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reconciler import cli
from tests.helpers import wait_for

FLEET = Path(__file__).resolve().parents[1] / "examples" / "fleet"
# What each kind of host runs; the CI runner's hostname is not web-0*, so no canary.
EXPECTED = {
    "web-01": {"agent.beat", "web.app"},
    "db-01": {"agent.beat", "db.migrate", "db.server"},
}


@pytest.fixture
def fleet_specs(tmp_path: Path) -> Path:
    """A copy of the example's specs, so the test leaves the repository untouched."""
    specs = tmp_path / "fleet-specs"
    shutil.copytree(FLEET / "specs", specs)
    specs.chmod(0o755)
    return specs


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_every_example_file_validates(fleet_specs: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "validate", "--specs", str(fleet_specs), "-o", "json")
    assert code == 0 and json.loads(out) == {"valid": True, "errors": []}


@pytest.mark.parametrize("host", sorted(EXPECTED))
def test_each_kind_of_host_would_run_what_its_labels_place_on_it(
        host: str, fleet_specs: Path, state_dir: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    labels = FLEET / "hosts" / f"{host}.labels.yaml"
    code, out = run(capsys, "diff", "--specs", str(fleet_specs), "--state-dir",
                    str(state_dir), "--labels", str(labels), "-o", "json")
    assert code == 1  # a fresh host: everything is a change
    planned = {f"{row['service']}.{row['action']}" for row in json.loads(out)}
    assert planned == EXPECTED[host]


def test_a_web_host_comes_up_and_goes_down(fleet_specs: Path, state_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The integration workflow: --once --wait -o json, then down."""
    common = ["--specs", str(fleet_specs), "--state-dir", str(state_dir)]
    labels = ["--labels", str(FLEET / "hosts" / "web-01.labels.yaml")]
    code, out = run(capsys, "--once", "--wait", "30s", "-o", "json", *common, *labels)
    result = json.loads(out)
    assert code == 0 and result["converged"] is True and result["errors"] == []
    running = {f"{j['service']}.{j['action']}" for j in result["jobs"]}
    assert running == EXPECTED["web-01"]
    log = state_dir / "logs" / "web" / "app.log"
    wait_for(lambda: log.exists() and "mode production" in log.read_text(),
             message="web.app got APP_MODE from web.env")
    assert run(capsys, "down", *common)[0] == 0
