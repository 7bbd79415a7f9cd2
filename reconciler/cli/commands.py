"""The commands of `reconcile`: each reads its flags, asks the controller, the store or the
host, and hands the result to `render`. No reconciling logic and no host access live here.

Read-only commands (`status`, `events`, `logs`, `info`, `diff`, `validate`, `schema`, `top`,
`stats`) open the state through `reconciler.state.reader` and create nothing, so they work on
a read-only state dir and leave a fresh one absent. Commands that act (`--once`, the daemon,
`down`, `restart`, `repair`) check and bind the state dir first.
"""

from __future__ import annotations

import os
import sys
import time

from reconciler import logpaths
from reconciler.cli import render
from reconciler.cli.errors import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, UsageError
from reconciler.cli.flags import (
    METRICS_ADDR_ENV,
    MIN_TOP_INTERVAL,
    allow_empty_of,
    duration,
    parse_target,
    rebind_of,
    resync_of,
    sample_interval_of,
    settings_from,
)
from reconciler.cli.status import cmd_status
from reconciler.cli.validate import cmd_validate
from reconciler.settings import Settings
from reconciler.state.reader import open_reader, read_jobs
from reconciler.text import printable

# Each command imports what only it needs where it runs (issue 13): `status` must not pay for
# the spec model (pydantic), the daemon (watchfiles, the scheduler), sqlite-utils or
# prometheus_client, nor for what only other commands use (`stats`' `cli/resources`, the
# daemon's `logging`); tests/test_cli_imports.py checks which modules each command loads.
TYPE_CHECKING = False  # not `typing`'s: status need not import it for this
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence

    from reconciler.controller import PassResult
    from reconciler.metrics import Metrics
    from reconciler.metrics_server import MetricsAddress, MetricsServer
    from reconciler.state.records import JobRecord

if TYPE_CHECKING:
    Command = Callable[[argparse.Namespace], int]


def run(args: argparse.Namespace) -> int:
    command: str | None = args.command
    return COMMANDS[command](args)


def emit(lines: str | Sequence[str]) -> None:
    for line in [lines] if isinstance(lines, str) else lines:
        print(line)


def bind(settings: Settings, rebind: bool, *, daemon: bool = False) -> None:
    """Before anything acts: check the state dir, refuse another specs dir than the bound
    one (unless `rebind`), and bind an unbound state dir to this one (first use).

    A rebind is refused while a daemon runs (unless we are that daemon, holding its lock):
    it would go on serving the old specs dir, and the two would undo each other's passes.
    """
    from reconciler.controller import prepare_state_dir
    from reconciler.state import statedir
    from reconciler.state.lock import DaemonLock

    prepare_state_dir(settings, rebind=rebind)
    if rebind and not daemon and not statedir.binding(settings).matches:
        with DaemonLock(settings.daemon_lock_path, ": stop it before --rebind"):
            statedir.bind(settings)
        return
    statedir.bind(settings)


# --- commands that act ----------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from reconciler.controller import Reconciler

    settings = settings_from(args)
    wait = duration(args.wait, "--wait")
    resync = resync_of(args)
    if args.once:
        if args.metrics_addr:
            raise UsageError("--metrics-addr serves a running daemon; with --once, write "
                             "--metrics-textfile for node_exporter")
        bind(settings, rebind_of(args))
        with Reconciler(settings, allow_empty=allow_empty_of(args)) as reconciler:
            started = time.monotonic()
            result = reconciler.converge(wait)
            code = report_pass(result, args.output)
        if args.metrics_textfile:
            write_metrics_textfile(args.metrics_textfile, result, time.monotonic() - started)
        return code
    if args.metrics_textfile:
        raise UsageError("--metrics-textfile is written by --once; a daemon serves its "
                         "metrics on --metrics-addr")
    return run_daemon(args, settings, resync)


def run_daemon(args: argparse.Namespace, settings: Settings, resync: float) -> int:
    """The controller as a service: its log format, systemd's notify socket and the metrics
    endpoint are settled (and a busy metrics port refused) before the first pass."""
    import logging

    from reconciler import __version__, logformat
    from reconciler.controller import prepare_state_dir
    from reconciler.daemon import Daemon
    from reconciler.host.memory import limit_malloc_arenas
    from reconciler.sdnotify import Notifier
    from reconciler.state.lock import DaemonLock

    limit_malloc_arenas()  # before any thread starts: host/memory.py says why
    address = metrics_address_of(args)
    sample_interval = sample_interval_of(args, os.environ)
    log_format = args.log_format or logformat.default_format(os.environ, sys.stderr)
    prepare_state_dir(settings, rebind=rebind_of(args))
    with DaemonLock(settings.daemon_lock_path):
        bind(settings, rebind_of(args), daemon=True)
        record_daemon(settings)
        logformat.configure(log_format, sys.stderr)
        log = logging.getLogger("reconciler")
        metrics, serve = serve_metrics(address, healthy_within=2 * resync)
        notifier = Notifier.from_environ(os.environ, os.getpid())
        log.info("reconciler %s starting (pid %d): specs dir %s, state dir %s, resync %gs%s%s",
                 __version__, os.getpid(), printable(str(settings.specs_dir)),
                 printable(str(settings.state_dir)), resync,
                 f", metrics on {serve.url}/metrics" if serve else "",
                 ", notifying systemd" if notifier.enabled else "")
        daemon = Daemon(settings, allow_empty=allow_empty_of(args), resync=resync,
                        notifier=notifier, metrics=metrics, serve=serve,
                        sample_interval=sample_interval)
        daemon.install_signal_handlers()
        code = daemon.run()
        log.info("reconciler %s stopped (pid %d)", __version__, os.getpid())
        return code


def metrics_address_of(args: argparse.Namespace) -> MetricsAddress | None:
    """`--metrics-addr` (any host, written on purpose), else `$RECONCILER_METRICS_ADDR`
    (loopback only), else None: no endpoint."""
    text, explicit = args.metrics_addr, True
    if not text:
        text, explicit = os.environ.get(METRICS_ADDR_ENV, ""), False
    if not text:
        return None
    from reconciler.metrics_server import AddressError, parse_address

    flag = "--metrics-addr" if explicit else f"${METRICS_ADDR_ENV}"
    try:
        return parse_address(text, explicit=explicit)
    except AddressError as err:
        raise UsageError(f"{flag}: {err}") from None


def serve_metrics(address: MetricsAddress | None, healthy_within: float
                  ) -> tuple[Metrics | None, MetricsServer | None]:
    """The registry and its listening endpoint, or (None, None) without an address.
    prometheus_client is imported only here: a daemon without metrics never loads it."""
    if address is None:
        return None, None
    from reconciler.metrics import Metrics
    from reconciler.metrics_server import MetricsServer

    metrics = Metrics()
    try:
        return metrics, MetricsServer(metrics, address, healthy_within)
    except OSError as err:
        raise UsageError(f"--metrics-addr {address}: cannot listen: "
                         f"{err.strerror or err}") from None


def write_metrics_textfile(path: str, result: PassResult, seconds: float) -> None:
    """`--once --metrics-textfile`: the same series as the endpoint (without the
    short-lived process's own `process_*`), replaced atomically (temp file and rename in
    the same directory), so node_exporter never reads half a file. The convergence counts
    as one pass."""
    from pathlib import Path

    from reconciler.metrics import Metrics, seen_of

    metrics = Metrics(process=False)
    metrics.passed(seen_of(result), seconds)
    try:
        metrics.write_textfile(Path(path))
    except OSError as err:
        raise OSError(f"--metrics-textfile {path}: {err.strerror or err}") from None


def record_daemon(settings: Settings) -> None:
    """For `info`: which daemon serves this state dir, since when (it is up only while it
    holds daemon.lock, so a record left by a dead daemon says nothing)."""
    from reconciler.state.store import Store

    with Store.open(settings.db_path) as store:
        store.save_daemon(os.getpid(), time.time())


def report_pass(result: PassResult, output: str) -> int:
    render.print_problems(result.loaded, result.plan)
    jobs = [j for j in result.jobs if j.phase != "removed"]
    if output == "json":
        emit(render.pass_json(result.converged, pass_source(result), result.loaded,
                              render.jobs_list(jobs, suspended=result.suspended)))
    else:
        emit(render.status_table(jobs, suspended=result.suspended))
    if not result.loaded.ok or result.plan.prune_held:
        return EXIT_ERROR
    return EXIT_OK if result.converged else EXIT_CHANGES


def pass_source(result: PassResult) -> dict[str, str | bool | None]:
    """`source` of `--once -o json`: `{revision, applied_revision, dirty}` (DESIGN §8.2), as
    this pass saw it (null revision: the specs dir is not in git and no label names it)."""
    return {"revision": result.source.revision, "applied_revision": result.applied_revision,
            "dirty": result.source.dirty}


def cmd_down(args: argparse.Namespace) -> int:
    from reconciler.controller import Reconciler

    settings = settings_from(args)
    targets = frozenset([parse_target(args.target)]) if args.target else None
    bind(settings, rebind_of(args))
    with Reconciler(settings) as reconciler:
        if targets is not None:
            require_known(args.target, targets, reconciler.store.jobs())
            refuse_suspended(targets, reconciler.store.suspended())
        stopped = reconciler.down(targets)
    emit(render.step_lines(stopped.steps, none="nothing to stop"))
    return EXIT_OK


def require_known(text: str, targets: frozenset[tuple[str, str | None]],
                  jobs: Sequence[JobRecord]) -> None:
    known = {(j.service, j.action) for j in jobs}
    for service, action in targets:
        if not any(s == service and action in (None, a) for s, a in known):
            raise UsageError(f"no job named {text} in this state dir "
                             "(`reconcile status` lists them)")


def cmd_restart(args: argparse.Namespace) -> int:
    from reconciler.controller import Reconciler

    settings = settings_from(args)
    target = parse_target(args.target)
    require_known(args.target, frozenset([target]), read_jobs(settings))
    bind(settings, rebind_of(args))
    with Reconciler(settings) as reconciler:
        refuse_suspended(frozenset([target]), reconciler.store.suspended())
        stopped = reconciler.restart(frozenset({target}))
        started = reconciler.reconcile()
    emit(render.step_lines([*stopped.steps, *started.plan.changes]))
    return EXIT_OK


def refuse_suspended(targets: frozenset[tuple[str, str | None]],
                     suspended: frozenset[str]) -> None:
    """`down`/`restart` of a suspended service is refused (like `flux reconcile` of a
    suspended resource): it is out of the controller's hands until `resume`."""
    for service, _ in targets:
        if service in suspended:
            raise UsageError(f"{service} is suspended: `reconcile resume {service}` first")


def cmd_suspend(args: argparse.Namespace) -> int:
    return set_suspended(args, suspend=True)


def cmd_resume(args: argparse.Namespace) -> int:
    return set_suspended(args, suspend=False)


def set_suspended(args: argparse.Namespace, *, suspend: bool) -> int:
    """Suspend or resume a service the specs name or the state dir has jobs of (or, to
    resume, one still suspended after its spec and jobs are gone). A resume runs one pass at
    once, so the service heals (or, removed from the specs meanwhile, is pruned) now."""
    from dataclasses import replace

    from reconciler.controller import Reconciler
    from reconciler.spec.load import load_specs

    settings = settings_from(args)
    service: str = args.service
    bind(settings, rebind_of(args))
    if getattr(args, "labels", None) is None:  # place as the daemon's last pass did
        with open_reader(settings) as store:
            recorded = store.controller_facts().labels
        settings = replace(settings, labels=recorded or settings.labels)
    with Reconciler(settings) as reconciler:
        known = {j.service for j in reconciler.store.jobs()} | set(
            load_specs(settings.specs_dir, state_dir=settings.state_dir).services)
        if service not in known and service not in reconciler.store.suspended():
            raise UsageError(f"no service named {service} in the specs or this state dir "
                             "(`reconcile status` lists them)")
        changed = reconciler.set_suspended(service, suspend)
        verb = "suspended" if suspend else "resumed"
        emit(f"{service} {verb}" if changed else
             f"{service} was {'already' if suspend else 'not'} suspended")
        if changed and not suspend:
            emit(render.step_lines(reconciler.reconcile().plan.changes))
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    from reconciler.state.repair import repair

    emit(repair(settings_from(args)).lines())
    return EXIT_OK


# --- read-only commands ---------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    from reconciler.preview import preview

    # --rebind here previews the new specs dir without binding to it: diff changes nothing
    loaded, planned, unplaced = preview(settings_from(args), allow_empty=allow_empty_of(args),
                                        rebind=rebind_of(args))
    render.print_problems(loaded, planned)
    for service, why in sorted(unplaced.items()):  # stderr, like notes: stdout stays parseable
        print(printable(f"reconcile: {service} is not placed on this host: {why}"),
              file=sys.stderr)
    emit(render.diff_json(planned) if args.output == "json" else render.diff_lines(planned))
    if not loaded.ok or planned.prune_held:
        return EXIT_ERROR
    # only steps that run now count, as before: an action that waits comes with the step it
    # waits for, or waits on something no pass can change now (a backoff, a `down`)
    return EXIT_CHANGES if planned.changes else EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from reconciler.spec.model import spec_json_schema

    emit(render.to_json(spec_json_schema()))
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from reconciler.info import read_info

    info = read_info(settings_from(args))
    emit(render.to_json(render.info_json(info)) if args.output == "json"
         else render.info_lines(info))
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    with open_reader(settings_from(args)) as store:
        events = store.events(service=args.service, limit=args.limit)
    emit(render.events_json(events) if args.output == "json" else render.event_lines(events))
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    from reconciler import logs

    settings = settings_from(args)
    keys = logged_jobs(settings, args.target)
    paths = [logpaths.log_path(settings.logs_dir, service, action) for service, action in keys]
    for (service, action), path in zip(keys, paths, strict=True):
        if len(keys) > 1:
            print(f"==> {service}.{action} <==")
        shown = logpaths.previous_path(path) if args.previous else path
        emit([line.rstrip("\n") for line in logs.tail(shown, args.lines)])
    if args.follow:
        if len(keys) > 1 or args.previous:
            raise UsageError("-f follows the current log of one action: name SERVICE.ACTION")
        for line in logs.follow(paths[0]):
            print(line, flush=True)
    return EXIT_OK


def logged_jobs(settings: Settings, target: str) -> list[tuple[str, str]]:
    """The (service, action) pairs `logs TARGET` shows: of every job the state dir has
    recorded, removed ones included (the log of a service taken out of the specs, or renamed,
    stays readable), else a log on disk under that name (a database rebuilt by `repair`)."""
    service, action = parse_target(target)
    jobs = read_jobs(settings, include_removed=True)
    keys = list(dict.fromkeys((j.service, j.action) for j in jobs if j.service == service
                              and (not action or j.action == action)))
    if not keys and action and _has_log(settings, service, action):
        keys = [(service, action)]
    if not keys:
        raise UsageError(f"no job named {target}")
    return keys


def _has_log(settings: Settings, service: str, action: str) -> bool:
    try:
        path = logpaths.log_path(settings.logs_dir, service, action)
    except ValueError:  # not a name that can be a path part: no log by that name
        return False
    return os.path.lexists(path) or os.path.lexists(logpaths.previous_path(path))


def cmd_top(args: argparse.Namespace) -> int:
    from reconciler.cli.top import run_top  # curses is loaded only by `top`

    interval = duration(args.interval, "--interval")
    if interval < MIN_TOP_INTERVAL:
        raise UsageError(f"--interval: at least {MIN_TOP_INTERVAL:g}s")
    return run_top(settings_from(args), args.sort, interval)


MAX_ANOMALY_EVENTS = 50  # anomaly events `stats` shows: the newest


def cmd_stats(args: argparse.Namespace) -> int:
    """A job's history in the sample window. A name the state dir never knew is an error,
    like `logs`; a known one without samples (no daemon samples it yet) is not."""
    from reconciler.cli import resources  # what stats and top show: only they load it

    settings = settings_from(args)
    service, action = parse_target(args.target)
    since = time.time() - duration(args.since, "--since")
    with open_reader(settings) as store:
        samples = store.samples(service=service, action=action, since=since)
        known = samples or store.has_samples(service, action) or any(
            j.service == service and action in (None, j.action)
            for j in store.jobs(include_removed=True))
        if not known:
            raise UsageError(f"no job named {args.target} in this state dir "
                             "(`reconcile status` lists them)")
        events = store.events(service=service, action=action, since=since,
                              kinds=resources.ANOMALY_EVENT_KINDS, limit=MAX_ANOMALY_EVENTS)
        jobs = resources.histories(samples, store.anomalies(), [e for _, e in events])
    if args.output == "json":
        emit(render.to_json(resources.stats_json(jobs)))
    elif not jobs:
        emit(f"no samples of {args.target} since {resources.clock(since)} (the daemon samples "
             "running jobs every --sample-interval, 5s by default)")
    else:
        emit(resources.stats_lines(jobs))
    return EXIT_OK


COMMANDS: dict[str | None, Command] = {
    None: cmd_run, "diff": cmd_diff, "status": cmd_status, "validate": cmd_validate,
    "schema": cmd_schema, "down": cmd_down, "restart": cmd_restart, "events": cmd_events,
    "logs": cmd_logs, "repair": cmd_repair, "info": cmd_info, "suspend": cmd_suspend,
    "resume": cmd_resume, "top": cmd_top, "stats": cmd_stats,
}


