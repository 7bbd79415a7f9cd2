"""What contrib/ ships is what docs/deploy.md promises: unit files systemd accepts and that
keep the daemon's contract (notify protocol, KillMode=process, watchdog, SIGHUP reload), and a
dashboard and alert rules that only query metrics the daemon really exports.

A dashboard panel on a misspelt metric shows "No data" forever and an alert on one never
fires, and neither is noticed until the day it was needed: so every metric name in every
query is checked against `reconciler.metrics.SAMPLE_NAMES`, the set a scrape can contain.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.metrics import SAMPLE_NAMES

ROOT = Path(__file__).resolve().parents[1]
UNITS = {
    "system": ROOT / "contrib" / "systemd" / "system" / "reconciler.service",
    "user": ROOT / "contrib" / "systemd" / "user" / "reconciler.service",
}
DASHBOARD = ROOT / "contrib" / "grafana" / "reconciler-dashboard.json"
ALERTS = ROOT / "contrib" / "prometheus" / "reconciler-alerts.yaml"

# Every sandbox option of the unit applies to every managed service (its children, in its
# cgroup and namespaces): none of these may come back in a "hardening" pass.
REACHES_SERVICES = (
    "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges",
    "RestrictNamespaces", "CapabilityBoundingSet", "SystemCallFilter",
    "MemoryDenyWriteExecute", "ProtectKernelModules", "ProtectKernelLogs",
    "ProtectKernelTunables", "ProtectControlGroups", "ProtectClock", "ProtectHostname",
    "ReadOnlyPaths", "InaccessiblePaths", "PrivateMounts", "OOMScoreAdjust", "MemoryMax",
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value (systemd keys repeat, e.g. Environment=), with
    comments dropped and backslash continuations joined, as systemd reads them."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    logical: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical.append(line[:-1])
            continue
        line = " ".join([*logical, line]).strip()
        logical = []
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
        else:
            key, sep, value = line.partition("=")
            assert sep and section is not None, f"not a unit file line: {raw!r}"
            section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= should be set once, found {values}"
    return values[0]


def seconds(span: str) -> float:
    """A systemd time span of the simple forms the units use ("60s", "5min", "2")."""
    match = re.fullmatch(r"(\d+)\s*(ms|s|sec|min|m|h)?", span)
    assert match, f"unexpected time span {span!r}"
    factor = {"ms": 0.001, "min": 60, "m": 60, "h": 3600}.get(match[2] or "s", 1)
    return int(match[1]) * factor


def verifiable_copy(unit_file: Path, tmp_path: Path) -> Path:
    """The unit with only its ExecStart binary replaced by a real executable: verify checks
    that the binary exists, and the reconciler is not installed at /opt or ~/.local here."""
    stand_in = tmp_path / "reconcile"
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={stand_in}", unit_file.read_text(), count=1)
    assert str(stand_in) in text
    copy = tmp_path / "units" / unit_file.name
    copy.parent.mkdir()
    copy.write_text(text)
    return copy


def verify(unit_file: Path, scope: str, tmp_path: Path) -> tuple[int, list[str]]:
    """`systemd-analyze [--user] verify` on the file: its exit code and the stderr lines
    about this unit. Lines about other units are dropped: verify also loads the targets the
    unit names (multi-user.target, network-online.target), and on a developer's machine those
    pull in distribution units whose warnings are not ours to fix."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs the systemd package "
                    "from the distribution where it can)")
    env = dict(os.environ)
    command = [tool, "verify", str(unit_file)]
    if scope == "user":
        command.insert(1, "--user")
        # The user manager's lookup needs a runtime dir; a private one keeps it offline.
        runtime = tmp_path / "runtime"
        runtime.mkdir(mode=0o700)
        env["XDG_RUNTIME_DIR"] = str(runtime)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60,
                          check=False)
    if scope == "user" and "Failed to initialize manager" in done.stderr:
        pytest.skip(f"no user manager can be set up here for --user verify: {done.stderr.strip()}")
    ours = [line for line in done.stderr.splitlines()
            if unit_file.name in line or str(unit_file) in line or "ExecStart" in line]
    return done.returncode, ours


@pytest.mark.parametrize("scope", sorted(UNITS))
def test_unit_passes_systemd_analyze_verify(scope: str, tmp_path: Path) -> None:
    code, warnings = verify(verifiable_copy(UNITS[scope], tmp_path), scope, tmp_path)
    assert (code, warnings) == (0, [])


def test_verify_reports_what_systemd_would_ignore(tmp_path: Path) -> None:
    """verify exits 0 on a misspelt value (systemd ignores the line and warns): the test
    above holds only because it also reads stderr, which this proves."""
    copy = verifiable_copy(UNITS["system"], tmp_path)
    copy.write_text(copy.read_text().replace("KillMode=process", "KillMode=proces"))
    code, warnings = verify(copy, "system", tmp_path)
    assert code == 0
    assert any("kill mode" in line.lower() for line in warnings), warnings


@pytest.mark.parametrize("scope", sorted(UNITS))
def test_unit_keeps_the_daemon_contract(scope: str) -> None:
    unit = parse_unit(UNITS[scope].read_text())
    service = "Service"
    assert one(unit, service, "Type") == "notify"  # notify-reload needs systemd 253
    assert one(unit, service, "NotifyAccess") == "main"
    # The default control-group would kill every managed service on a restart.
    assert one(unit, service, "KillMode") == "process"
    assert one(unit, service, "ExecReload").split() == ["/bin/kill", "-HUP", "$MAINPID"]
    assert one(unit, service, "Restart") == "on-failure"
    assert one(unit, service, "OOMPolicy") == "continue"
    # A cold pass over 1000 jobs takes seconds: the watchdog must not fire on one.
    assert seconds(one(unit, service, "WatchdogSec")) >= 30
    assert seconds(one(unit, service, "TimeoutStartSec")) >= 60
    assert one(unit, service, "TasksMax") == "infinity"
    # Metrics on loopback only, whatever the host: a remote scrape is an explicit choice.
    start = one(unit, service, "ExecStart").split()
    assert start[start.index("--metrics-addr") + 1].startswith("127.0.0.1:")
    assert [key for key in REACHES_SERVICES if key in unit[service]] == []
    wanted = {"system": "multi-user.target", "user": "default.target"}[scope]
    assert one(unit, "Install", "WantedBy") == wanted


def test_system_unit_runs_the_venv_with_a_private_state_dir() -> None:
    unit = parse_unit(UNITS["system"].read_text())
    assert one(unit, "Service", "ExecStart").split()[0] == "/opt/reconciler/bin/reconcile"
    assert "RECONCILER_SPECS=/etc/reconciler/specs" in unit["Service"]["Environment"]
    assert "RECONCILER_STATE_DIR=/var/lib/reconciler" in unit["Service"]["Environment"]
    assert one(unit, "Service", "StateDirectory") == "reconciler"
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    nofile = one(unit, "Service", "LimitNOFILE").split(":")
    assert nofile[0] == "1024" and int(nofile[1]) >= 65536  # services get 1024, as usual


def test_user_unit_runs_pipx_without_privileged_options() -> None:
    unit = parse_unit(UNITS["user"].read_text())
    assert one(unit, "Service", "ExecStart").split()[0] == "%h/.local/bin/reconcile"
    # In a user manager these imply NoNewPrivileges=yes or need privileges.
    for key in ("LockPersonality", "LimitNOFILE", "StateDirectory", "User", "Group"):
        assert key not in unit["Service"], key


def test_parse_unit_reads_what_systemd_reads() -> None:
    unit = parse_unit("# c\n[Service]\nEnvironment=A=1\n; c\nEnvironment=B=2\n"
                      "ExecStart=/bin/x \\\n  --y\n")
    assert unit["Service"]["Environment"] == ["A=1", "B=2"]
    assert unit["Service"]["ExecStart"][0].split() == ["/bin/x", "--y"]


# --- dashboard and alert rules -------------------------------------------------------------

METRIC = re.compile(r"\b(?:reconciler|process)_[a-zA-Z0-9_]*[a-zA-Z0-9]")


def metric_names(expr: str) -> set[str]:
    """The reconciler and process metric names a PromQL expression reads. Quoted strings
    are left out (label values and templates are not metric names)."""
    return set(METRIC.findall(re.sub(r'"[^"]*"', '""', expr)))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.extend([panel, *panel.get("panels", [])])
    return [panel for panel in panels if panel["type"] != "row"]


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def test_dashboard_has_variables_and_a_query_in_every_panel() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["instance"]["type"] == "query"
    panels = dashboard_panels()
    assert len(panels) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
    ids = [panel["id"] for panel in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_alert_rules_are_complete() -> None:
    for rule in rules():
        assert set(rule) >= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert seconds(rule["for"]) > 0, rule["alert"]


def test_the_alerts_the_issue_asks_for_exist() -> None:
    by_name = {rule["alert"]: rule["expr"] for rule in rules()}
    expected = {  # alert -> a metric its expression must read
        "ReconcilerDown": "up",  # daemon down
        "ReconcilerPassStale": "reconciler_last_successful_reconcile_timestamp_seconds",
        "ReconcilerPassesFailing": "reconciler_reconcile_total",
        "ReconcilerJobCrashLooping": "reconciler_job_restarts_total",
        "ReconcilerJobBlocked": "reconciler_job_phase",
        "ReconcilerRevisionSkew": "reconciler_source_info",
        "ReconcilerSpecErrors": "reconciler_spec_file_errors",
    }
    assert set(by_name) >= set(expected)
    for alert, metric in expected.items():
        assert re.search(rf"\b{metric}\b", by_name[alert]), alert
    assert 'job="reconciler"' in by_name["ReconcilerDown"]
    assert 'phase="blocked"' in by_name["ReconcilerJobBlocked"]
    assert 'phase="backoff"' in by_name["ReconcilerJobCrashLooping"]


def queries() -> dict[str, str]:
    """Every PromQL expression shipped: alert rules, panel targets, template variables."""
    found = {f"alert {rule['alert']}": rule["expr"] for rule in rules()}
    for panel in dashboard_panels():
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            found[f"variable {variable['name']}"] = variable["query"]["query"]
    return found


def test_every_metric_queried_is_exported() -> None:
    """Exact sample names: a histogram is queried as `_bucket`/`_sum`/`_count`, all of
    which SAMPLE_NAMES holds; a bare family name would match no series in Prometheus."""
    unknown = {where: sorted(metric_names(expr) - SAMPLE_NAMES)
               for where, expr in queries().items()}
    assert {where: names for where, names in unknown.items() if names} == {}
    used = set().union(*(metric_names(expr) for expr in queries().values()))
    assert len(used) >= 15  # the extraction found the queries' metrics, not nothing


def test_metric_names_finds_names_and_skips_label_values() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(reconciler_x_bucket[5m]))) '
            '/ process_open_fds{job="reconciler_not_a_metric"}')
    assert metric_names(expr) == {"reconciler_x_bucket", "process_open_fds"}


def test_the_design_metrics_are_exported() -> None:
    """DESIGN §8.3's names, as the dashboard and docs/deploy.md use them."""
    contract = {
        "reconciler_build_info", "reconciler_reconcile_total",
        "reconciler_reconcile_duration_seconds_bucket",
        "reconciler_reconcile_duration_seconds_sum",
        "reconciler_reconcile_duration_seconds_count",
        "reconciler_last_successful_reconcile_timestamp_seconds", "reconciler_source_info",
        "reconciler_spec_file_errors", "reconciler_job_phase", "reconciler_job_ready",
        "reconciler_job_restarts_total", "reconciler_job_start_time_seconds",
        "reconciler_job_last_exit_code", "reconciler_job_cpu_seconds_total",
        "reconciler_job_resident_memory_bytes", "reconciler_job_open_fds", "reconciler_jobs",
        "reconciler_restarts_total", "process_resident_memory_bytes",
        "process_cpu_seconds_total", "process_open_fds",
    }
    assert sorted(contract - SAMPLE_NAMES) == []
