"""The Prometheus endpoint and textfile (DESIGN §8.3): a real daemon scraped over real HTTP,
parsed with prometheus_client's own parser."""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from reconciler import __version__, cli
from reconciler.metrics import SAMPLE_NAMES, Metrics, Seen
from reconciler.metrics_server import (
    MAX_CONNECTIONS,
    AddressError,
    MetricsAddress,
    MetricsServer,
    parse_address,
)
from reconciler.settings import Settings
from reconciler.state.records import JobRecord
from tests.helpers import wait_for
from tests.test_daemon import DaemonRunner, jobs, running, sleeper, write_spec

Scrape = dict[str, list[Sample]]


# straight to 127.0.0.1, whatever http_proxy the machine sets
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url: str, accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with _DIRECT.open(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


def scrape(url: str) -> Scrape:
    """A scrape; empty while the daemon is not listening yet."""
    try:
        status, _, text = get(f"{url}/metrics")
    except urllib.error.URLError:  # connection refused: still starting up
        return {}
    assert status == 200
    return parse(text)


def parse(text: str) -> Scrape:
    samples: Scrape = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: Scrape, name: str, **labels: str) -> float | None:
    found = [s.value for s in samples.get(name, [])
             if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else None


@pytest.fixture
def daemon(settings: Settings, tmp_path: Path) -> Iterator[DaemonRunner]:
    runner = DaemonRunner(settings, tmp_path / "daemon.log")
    yield runner
    runner.cleanup()


def test_a_scrape_shows_every_series_and_removed_jobs_vanish(
        settings: Settings, daemon: DaemonRunner, free_port: Callable[[], int],
        capsys: pytest.CaptureFixture[str]) -> None:
    sleeper(settings, "web")
    write_spec(settings, "once.yaml", """\
    name: once
    actions:
      - {name: run, cmd: "exit 3", backoff: {initial: 1h, max: 1h}}
    """)
    url = f"http://127.0.0.1:{free_port()}"
    daemon.start("--metrics-addr", url.removeprefix("http://"))
    job = wait_for(running(settings, capsys, "web.main"), message="web.main running")

    def failed_once() -> Scrape | None:
        samples = scrape(url)
        return samples if value(samples, "reconciler_job_last_exit_code",
                                service="once", action="run") == 3 else None

    samples = wait_for(failed_once, message="the one-shot's exit code in a scrape")
    # every series the contract names, and no other (no job here shows an anomaly)
    assert set(samples) == SAMPLE_NAMES - {"reconciler_job_anomaly"}
    web = {"service": "web", "action": "main"}
    assert value(samples, "reconciler_job_phase", phase="running", **web) == 1
    assert value(samples, "reconciler_job_phase", phase="backoff", **web) == 0
    assert value(samples, "reconciler_job_phase", phase="backoff",
                 service="once", action="run") == 1
    assert value(samples, "reconciler_job_ready", **web) == 1
    assert value(samples, "reconciler_job_restarts_total", **web) == 0
    assert value(samples, "reconciler_job_start_time_seconds", **web) == pytest.approx(
        job["started_at"])
    rss = value(samples, "reconciler_job_resident_memory_bytes", **web)
    assert rss is not None and rss > 1024 * 1024
    fds = value(samples, "reconciler_job_open_fds", **web)
    assert fds is not None and fds >= 3
    assert value(samples, "reconciler_jobs", phase="running") == 1
    assert value(samples, "reconciler_jobs", phase="backoff") == 1
    assert value(samples, "reconciler_spec_file_errors") == 0
    assert (value(samples, "reconciler_reconcile_total", result="success") or 0) >= 1
    assert value(samples, "reconciler_build_info", version=__version__) == 1
    (source,) = samples["reconciler_source_info"]
    assert source.labels["revision"] == "unknown"  # not in git, and no --revision
    churning = [s for name, series in samples.items() if not name.endswith("_info")
                for s in series if {"pid", "revision", "job_id"} & set(s.labels)]
    assert not churning  # labels that change on every restart or commit: _info series only

    assert get(f"{url}/healthz")[0] == 200
    assert get(f"{url}/nothing-here")[0] == 404
    status, content_type, _ = get(f"{url}/metrics", "application/openmetrics-text")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")

    (settings.specs_dir / "web.yaml").unlink()
    wait_for(lambda: (samples := scrape(url)) and not any(
        s.labels.get("service") == "web" for series in samples.values() for s in series),
             message="the removed job's series to vanish")
    assert "web.main" not in jobs(settings, capsys)


def test_a_broken_spec_file_counts_in_spec_file_errors(
        settings: Settings, daemon: DaemonRunner, free_port: Callable[[], int]) -> None:
    write_spec(settings, "broken.yaml", "name: broken\nactions: [\n")
    url = f"http://127.0.0.1:{free_port()}"
    daemon.start("--metrics-addr", url.removeprefix("http://"), "--allow-empty")
    wait_for(lambda: value(scrape(url), "reconciler_spec_file_errors") == 1,
             message="one broken file counted")


def test_healthz_says_503_until_a_pass_succeeded_and_when_the_last_is_too_old(
        free_port: Callable[[], int]) -> None:
    now = [1000.0]
    metrics = Metrics(process=False, monotonic=lambda: now[0])
    server = MetricsServer(metrics, parse_address(f"127.0.0.1:{free_port()}", explicit=True),
                           healthy_within=60.0)
    server.start()
    try:
        status, _, body = get(f"{server.url}/healthz")
        assert status == 503 and "no pass has succeeded yet" in body
        metrics.passed(Seen((), None, None, None, 0), 0.01)
        assert get(f"{server.url}/healthz")[0] == 200
        now[0] += 61
        status, _, body = get(f"{server.url}/healthz")
        assert status == 503 and "61s ago" in body
        metrics.failed(0.5)  # a failed pass does not make it healthy
        assert get(f"{server.url}/healthz")[0] == 503
        samples = parse(get(f"{server.url}/metrics")[2])
        assert value(samples, "reconciler_reconcile_total", result="error") == 1
        assert value(samples, "reconciler_reconcile_duration_seconds_count") == 2
    finally:
        server.stop()


def test_only_the_newest_job_of_an_action_speaks_for_it() -> None:
    """While a new generation replaces an old one both have records; two series with the
    same labels would make the whole scrape unparseable."""
    old = JobRecord(id="a-1", service="a", action="main", generation="g1", phase="stopping",
                    created_at=1.0)
    new = JobRecord(id="a-2", service="a", action="main", generation="g2", phase="pending",
                    created_at=2.0)
    metrics = Metrics(process=False, read_counters=lambda _ids: {})
    metrics.passed(Seen((new, old), "r", "r", False, 0), 0.01)
    samples = parse(metrics.exposition().decode())
    assert value(samples, "reconciler_job_phase", service="a", action="main",
                 phase="pending") == 1
    assert value(samples, "reconciler_jobs", phase="stopping") == 1  # still counted


@pytest.mark.parametrize(("text", "host", "port"), [
    ("9464", "127.0.0.1", 9464), (":9464", "127.0.0.1", 9464),
    ("127.0.0.1:1", "127.0.0.1", 1), ("[::1]:9464", "::1", 9464),
    ("localhost:9464", "localhost", 9464),
])
def test_loopback_addresses_are_served_from_the_flag_or_the_environment(
        text: str, host: str, port: int) -> None:
    for explicit in (True, False):
        address = parse_address(text, explicit=explicit)
        assert (address.host, address.port) == (host, port)


def test_a_non_loopback_address_must_be_written_in_the_flag() -> None:
    assert parse_address("0.0.0.0:9464", explicit=True).host == "0.0.0.0"
    with pytest.raises(AddressError, match="not a loopback address"):
        parse_address("0.0.0.0:9464", explicit=False)


@pytest.mark.parametrize("text", ["", ":", "x", "1:0", ":65536", "::1:80", "[::1]80",
                                  "host:-1", "[::1", "1:٣"])
def test_bad_addresses_are_clear_errors(text: str) -> None:
    with pytest.raises(AddressError):
        parse_address(text, explicit=True)


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert cli.main(argv) == 2
    return capsys.readouterr().err


def test_the_cli_refuses_what_it_cannot_serve(settings: Settings,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--specs", str(settings.specs_dir), "--state-dir", str(settings.state_dir)]
    assert "--metrics-textfile" in cli_error([*common, "--once", "--metrics-addr", "9464"],
                                             capsys)
    assert "--once" in cli_error([*common, "--metrics-textfile", "/tmp/x.prom"], capsys)
    with monkeypatch.context() as env:
        env.setenv("RECONCILER_METRICS_ADDR", "0.0.0.0:9464")
        err = cli_error(common, capsys)
    assert "$RECONCILER_METRICS_ADDR" in err and "not a loopback address" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = cli_error([*common, "--metrics-addr", f"127.0.0.1:{port}"], capsys)
    assert "cannot listen" in err and "Traceback" not in err


def test_once_writes_the_textfile_atomically(settings: Settings, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    write_spec(settings, "job.yaml", """\
    name: job
    actions:
      - {name: run, cmd: "true"}
    """)
    out = tmp_path / "textfile"
    out.mkdir()
    path = out / "reconciler.prom"
    argv = ["--specs", str(settings.specs_dir), "--state-dir", str(settings.state_dir),
            "--once", "--metrics-textfile", str(path)]
    assert cli.main(argv) == 0
    first = os.stat(path).st_ino
    samples = parse(path.read_text())
    assert value(samples, "reconciler_job_phase", service="job", action="run",
                 phase="succeeded") == 1
    assert value(samples, "reconciler_job_last_exit_code", service="job", action="run") == 0
    assert value(samples, "reconciler_reconcile_total", result="success") == 1
    assert not any(name.startswith("process_") for name in samples)  # a process long gone
    assert cli.main(argv) == 0
    assert os.stat(path).st_ino != first  # replaced by a rename, never rewritten in place
    assert [p.name for p in out.iterdir()] == ["reconciler.prom"]  # no temp file left
    capsys.readouterr()


def test_docs_list_every_series_and_no_other() -> None:
    text = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    documented = set(re.findall(r"`((?:reconciler|process)_[a-z_]+)`", text))
    histogram = "reconciler_reconcile_duration_seconds"
    exported = {n for n in SAMPLE_NAMES if not n.startswith(f"{histogram}_")} | {histogram}
    assert documented == exported


def test_the_host_restart_counter_never_goes_down() -> None:
    """`reconciler_restarts_total` is a counter: when a job that restarted goes away (removed,
    or replaced by a new generation that starts at 0), the host's total must not drop, or
    rate()/increase() read the drop as a reset and count every remaining restart again."""
    a = JobRecord(id="a-1", service="a", action="main", generation="g1", phase="running",
                  restart_count=5, created_at=1.0)
    b = JobRecord(id="b-1", service="b", action="main", generation="g1", phase="running",
                  restart_count=2, created_at=1.0)
    a2 = JobRecord(id="a-2", service="a", action="main", generation="g2", phase="running",
                   created_at=2.0)
    metrics = Metrics(process=False, read_counters=lambda _ids: {})

    def total() -> float | None:
        return value(parse(metrics.exposition().decode()), "reconciler_restarts_total")

    metrics.passed(Seen((a, b), "r", "r", False, 0), 0.01)
    assert total() == 7
    b = replace(b, restart_count=3)  # b restarted once more; a new generation replaced a
    metrics.passed(Seen((a2, b), "r", "r", False, 0), 0.01)
    assert total() == 8
    metrics.passed(Seen((), "r", "r", False, 0), 0.01)  # every service removed
    assert total() == 8


def test_the_textfile_is_never_written_through_a_planted_symlink(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The textfile directory is often shared; root writing there must not follow a link
    someone planted at the temp file's name (prometheus_client's is `PATH.<pid>.<thread>`,
    opened without O_EXCL or O_NOFOLLOW), and node_exporter (another user) must read it."""
    out = tmp_path / "textfile"
    out.mkdir()
    path = out / "reconciler.prom"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (out / f"reconciler.prom.{os.getpid()}.{threading.get_ident()}").symlink_to(victim)
    argv = ["--specs", str(settings.specs_dir), "--state-dir", str(settings.state_dir),
            "--once", "--allow-empty", "--metrics-textfile", str(path)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink() and "reconciler_build_info" in path.read_text()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_a_scraper_hanging_up_mid_request_prints_no_traceback(
        free_port: Callable[[], int], capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """A scrape that times out on Prometheus' side, a curl cut short: socketserver printed
    a traceback straight to stderr for each, past the log format (raw lines in the journal,
    non-JSON lines in a JSON log).

    The client resets the connection before its headers end, so the server is still
    reading when the reset lands and must meet ECONNRESET. Hanging up after a whole
    request raced the reply: a server that wrote it first saw no error at all, and the
    test timed out (CI, stop 20)."""
    caplog.set_level(logging.DEBUG, logger="reconciler.metrics_server")
    metrics = Metrics(process=False, read_counters=lambda _ids: {})
    metrics.passed(Seen((), None, None, None, 0), 0.01)
    server = MetricsServer(metrics, parse_address(f"127.0.0.1:{free_port()}", explicit=True),
                           healthy_within=60.0)
    server.start()
    stderr: list[str] = []
    try:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as client:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line yet
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # closed with a reset while the server waits for the rest of the headers

        def handled() -> bool:
            stderr.append(capsys.readouterr().err)
            return "Connection" in "".join(stderr) or any(
                "hung up" in r.getMessage() for r in caplog.records)

        wait_for(handled, message="the reset connection handled")
        assert get(f"{server.url}/healthz")[0] == 200  # and the server still serves
    finally:
        server.stop()
    assert "Traceback" not in "".join(stderr) and "Exception occurred" not in "".join(stderr)


def test_healthz_measures_the_age_of_the_last_pass_on_the_monotonic_clock() -> None:
    """The wall clock steps (NTP at boot, a VM resumed): stepped back an hour, it kept a hung
    daemon 'healthy' for that hour; stepped forward, it failed a healthy one."""
    wall, steady = [1_000_000.0], [50.0]
    metrics = Metrics(process=False, clock=lambda: wall[0], monotonic=lambda: steady[0])
    metrics.passed(Seen((), None, None, None, 0), 0.01)
    wall[0] -= 3600  # stepped back
    steady[0] += 61
    assert not metrics.healthy(60.0)
    assert metrics.seconds_since_success() == pytest.approx(61)
    metrics.passed(Seen((), None, None, None, 0), 0.01)
    wall[0] += 7200  # stepped forward
    assert metrics.healthy(60.0)


def test_the_server_binds_the_address_that_was_checked(free_port: Callable[[], int]) -> None:
    """The loopback rule checks what the name resolved to; the server binds that address and
    never resolves the name again (a second answer could be another address)."""
    checked = parse_address(f"localhost:{free_port()}", explicit=False)
    assert checked.bind in ("127.0.0.1", "::1")
    unresolvable = MetricsAddress("no-such-host.invalid", free_port(), "127.0.0.1")
    server = MetricsServer(Metrics(process=False), unresolvable, healthy_within=60.0)
    try:
        assert server.url.startswith("http://127.0.0.1:")
    finally:
        server.stop()


def test_idle_connections_cannot_pile_up_threads(free_port: Callable[[], int]) -> None:
    """Connections that send nothing hold a thread each until they time out: beyond
    MAX_CONNECTIONS at once the server closes new ones unanswered, and serves again as soon
    as the idle ones go."""
    metrics = Metrics(process=False)
    server = MetricsServer(metrics, parse_address(f"127.0.0.1:{free_port()}", explicit=True),
                           healthy_within=60.0)
    before = threading.active_count()
    server.start()
    port = int(server.url.rsplit(":", 1)[1])
    idle = []
    full = before + 1 + MAX_CONNECTIONS  # the serve loop and one thread per idle connection
    try:
        for _ in range(MAX_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        wait_for(lambda: threading.active_count() == full, message="every idle one accepted")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as extra:
            extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert extra.recv(100) == b""  # closed unanswered
        assert threading.active_count() == full
    finally:
        for conn in idle:
            conn.close()
    wait_for(lambda: _answers(f"{server.url}/healthz"), message="served again")
    server.stop()


def _answers(url: str) -> bool:
    try:
        return get(url)[0] in (200, 503)
    except (urllib.error.URLError, ConnectionError):
        return False
