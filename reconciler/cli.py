"""`reconcile`: argument parsing and output. No reconciling logic lives here.

Exit codes follow `kubectl diff` / `flux diff`: 0 clean, 1 differences or not converged,
2 errors (invalid specs, refused configuration or state dir), 141 when stdout was closed
early (`reconcile status | head -1`: quiet, like a tool killed by SIGPIPE). No traceback
reaches a user: expected failures print one line `reconcile: error: ...`; anything unexpected
prints one line and how to get the details.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from reconciler import __version__, logs
from reconciler.controller import PassResult, Reconciler, prepare_state_dir
from reconciler.daemon import Daemon
from reconciler.host.identity import identity_of
from reconciler.host.usage import Usage, usage
from reconciler.plan import Plan
from reconciler.settings import Settings, SettingsError, default_state_dir, resolve
from reconciler.spec.load import LoadResult, load_specs
from reconciler.spec.model import spec_json_schema
from reconciler.spec.units import parse_duration
from reconciler.state import statedir
from reconciler.state.errors import StateError
from reconciler.state.lock import DaemonLock, LockTimeout
from reconciler.state.records import JobRecord
from reconciler.state.repair import repair
from reconciler.state.store import Store, is_damage
from reconciler.text import PrintableFormatter, printable

EXIT_OK, EXIT_CHANGES, EXIT_ERROR = 0, 1, 2
EXIT_PIPE = 128 + 13  # SIGPIPE: what `yes | head -1` reports for `yes`


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit 2."""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        if sys.stdout is not None:  # None when started with stdout closed (`>&-`)
            sys.stdout.flush()  # inside the try: a closed pipe often shows only at this flush
        return code
    except BrokenPipeError:
        # The reader went away (`| head`). Python's documented recipe: point stdout at
        # /dev/null so the flush at interpreter exit cannot raise again, and end quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_PIPE


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (SettingsError, StateError, LockTimeout, UsageError) as err:
        return _error(str(err))
    except sqlite3.DatabaseError as err:
        if is_damage(err):
            return _error(f"the state database is damaged ({err}). Managed processes keep "
                          "running. Run `reconcile repair` with the same --state-dir")
        return _error(f"state database: {err}")
    except BrokenPipeError:
        raise  # main() ends quietly
    except OSError as err:  # the host said no (permissions, full disk): not our bug
        return _error(str(err))
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # the last line of defence: one line, never a traceback
        if os.environ.get("RECONCILER_DEBUG"):
            raise
        print(f"reconcile: internal error: {type(err).__name__}: {printable(str(err))} "
              "(set RECONCILER_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_ERROR


def _error(message: str) -> int:
    print(f"reconcile: error: {printable(message)}", file=sys.stderr)
    return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--specs", metavar="DIR", default=argparse.SUPPRESS,
                        help="specs directory (default: $RECONCILER_SPECS or ./specs)")
    common.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="state directory (default: $RECONCILER_STATE_DIR or per-user)")
    common.add_argument("--rebind", action="store_true", default=argparse.SUPPRESS,
                        help="let this state dir serve this --specs dir from now on (it "
                             "refuses another specs dir than the one it serves)")
    # SUPPRESS: a subcommand's -o only overrides the top level's when given, so
    # `reconcile -o json status` and `reconcile status -o json` mean the same
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog="reconcile", parents=[common],
        description="Make this host run what the specs dir says, and keep it that way.")
    # its own action, not the parent's: set_defaults on a shared action would change the
    # subcommands' default too
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--once", action="store_true",
                        help="converge once, print a table and exit (0 ok, 1 not converged, "
                             "2 invalid specs)")
    parser.add_argument("--wait", default="60s", help="with --once: how long to wait")
    parser.add_argument("--allow-empty", action="store_true",
                        help="let an empty specs dir prune every running service")
    parser.add_argument("--settle", default="200ms",
                        help="read a changed spec file once it has been quiet this long "
                             "(a half-written file is never read; 0s to read at once)")
    parser.add_argument("--resync", default="30s",
                        help="daemon: full resync interval (a safety net; events trigger passes)")
    parser.set_defaults(func=cmd_run)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Any, help_text: str, *parents: argparse.ArgumentParser
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common, *parents], help=help_text,
                           description=help_text)
        p.set_defaults(func=func)
        return p

    diff = add("diff", cmd_diff, "print the steps a pass would take, change nothing", output)
    diff.add_argument("--allow-empty", action="store_true")
    add("status", cmd_status, "show services, jobs, phases and why", output)
    validate = add("validate", cmd_validate, "check specs: file:line:column: message", output)
    validate.add_argument("dir", nargs="?", help="specs dir to check")
    add("schema", cmd_schema, "print the JSON Schema of the spec format")
    down = add("down", cmd_down, "stop a service or one action (all when none is named)")
    down.add_argument("target", nargs="?", metavar="SERVICE[.ACTION]")
    restart = add("restart", cmd_restart,
                  "stop a job and start it again now (counts in restart_count)")
    restart.add_argument("target", metavar="SERVICE[.ACTION]")
    events = add("events", cmd_events, "what was killed, cleaned, spawned, adopted, and why",
                 output)
    events.add_argument("service", nargs="?")
    events.add_argument("-n", "--limit", type=int, default=50)
    log_cmd = add("logs", cmd_logs, "show a job's log")
    log_cmd.add_argument("target", metavar="SERVICE[.ACTION]")
    log_cmd.add_argument("--previous", action="store_true", help="the previous run's log")
    log_cmd.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    log_cmd.add_argument("-n", "--lines", type=int, default=100)
    add("repair", cmd_repair, "rebuild the jobs from run/ after damage to state.db")
    return parser


MAX_SETTLE_SECONDS = 60.0  # longer would mean an edit is not applied for minutes
MIN_RESYNC_SECONDS = 1.0  # a safety net, not a poll: `--resync 1ms` busy-looped the daemon


def settings_from(args: argparse.Namespace) -> Settings:
    settings = resolve(getattr(args, "specs", None), getattr(args, "state_dir", None))
    settle = getattr(args, "settle", None)
    if settle is None:
        return settings
    seconds = _duration(settle, "--settle")
    if seconds > MAX_SETTLE_SECONDS:
        raise UsageError(f"--settle: at most {MAX_SETTLE_SECONDS:g}s")
    return replace(settings, settle=seconds)


def rebind_of(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "rebind", False))


def bind(settings: Settings, rebind: bool, *, daemon: bool = False) -> None:
    """Before anything acts: check the state dir, refuse another specs dir than the bound
    one (unless `rebind`), and bind an unbound state dir to this one (first use).

    A rebind is refused while a daemon runs (unless we are that daemon, holding its lock):
    it would go on serving the old specs dir, and the two would undo each other's passes.
    """
    prepare_state_dir(settings, rebind=rebind)
    if rebind and not daemon and not statedir.binding(settings).matches:
        with DaemonLock(settings.daemon_lock_path, ": stop it before --rebind"):
            statedir.bind(settings)
        return
    statedir.bind(settings)


# --- commands -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    wait = _duration(args.wait, "--wait")
    resync = _duration(args.resync, "--resync")
    if resync < MIN_RESYNC_SECONDS:
        raise UsageError(f"--resync: at least {MIN_RESYNC_SECONDS:g}s (events trigger passes; "
                         "the resync is only a safety net)")
    if args.once:
        bind(settings, rebind_of(args))
        with Reconciler(settings, allow_empty=args.allow_empty) as reconciler:
            return report_pass(reconciler.converge(wait), args.output)
    prepare_state_dir(settings, rebind=rebind_of(args))
    with DaemonLock(settings.daemon_lock_path):
        bind(settings, rebind_of(args), daemon=True)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(message)s"))
        logging.basicConfig(level=logging.INFO, handlers=[handler])
        daemon = Daemon(settings, allow_empty=args.allow_empty, resync=resync)
        daemon.install_signal_handlers()
        return daemon.run()


def report_pass(result: PassResult, output: str) -> int:
    _print_problems(result.loaded, result.plan)
    jobs = [j for j in result.jobs if j.phase != "removed"]
    if output == "json":
        print(json.dumps([job_json(j) for j in jobs], indent=2))
    else:
        print(status_table(jobs))
    if not result.loaded.ok or result.plan.prune_held:
        return EXIT_ERROR
    return EXIT_OK if result.converged else EXIT_CHANGES


def cmd_diff(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    # --rebind here previews the new specs dir without binding to it: diff changes nothing
    with Reconciler(settings, allow_empty=args.allow_empty,
                    rebind=rebind_of(args)) as reconciler:
        loaded, steps = reconciler.preview()
    _print_problems(loaded, steps)
    changes = steps.changes
    if args.output == "json":
        print(json.dumps([{"step": s.verb, "description": s.describe(), "reason": s.reason}
                          for s in changes], indent=2))
    else:
        for step in changes:
            print(step.describe())
        if not changes:
            print("no changes")
    if not loaded.ok or steps.prune_held:
        return EXIT_ERROR
    return EXIT_CHANGES if changes else EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    specs_dir = args.dir or getattr(args, "specs", None) or os.environ.get("RECONCILER_SPECS")
    state_dir = (getattr(args, "state_dir", None) or os.environ.get("RECONCILER_STATE_DIR")
                 or default_state_dir())  # validate never writes: no pytest guard needed
    loaded = load_specs(resolve_specs_dir(specs_dir), state_dir=state_dir)
    if args.output == "json":
        print(json.dumps({"errors": [str(e) for e in loaded.errors],
                          "dir_error": loaded.dir_error,
                          "services": sorted(loaded.services)}, indent=2))
    else:
        _print_problems(loaded, None)
        if loaded.ok:
            print(f"{len(loaded.services)} services in {len(loaded.files)} files: valid")
    return EXIT_OK if loaded.ok else EXIT_ERROR


def resolve_specs_dir(value: str | None) -> Path:
    return Path(value or "specs")


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(spec_json_schema(), indent=2))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    jobs = read_jobs(settings)
    usages = sample_usage(jobs)
    if args.output == "json":
        print(json.dumps([job_json(j, usage=usages.get(j.id)) for j in jobs], indent=2))
    else:
        print(status_table(jobs, usages) if jobs else "no jobs")
    return EXIT_OK


def sample_usage(jobs: Sequence[JobRecord], interval: float = 0.1) -> dict[str, Usage]:
    """CPU % is a rate: sample every running job, wait once, sample again."""
    pids = {j.id: j.pid for j in jobs if j.pid and j.identity and identity_of(j.pid) == j.identity}
    for pid in pids.values():
        usage(pid)
    if pids:
        time.sleep(interval)  # the measuring window, not synchronization
    found = {job_id: usage(pid) for job_id, pid in pids.items()}
    return {job_id: u for job_id, u in found.items() if u is not None}


def cmd_down(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    targets = frozenset([parse_target(args.target)]) if args.target else None
    bind(settings, rebind_of(args))
    with Reconciler(settings) as reconciler:
        if targets is not None:
            require_known(args.target, targets, reconciler.store.jobs())
        steps = reconciler.down(targets)
    for step in steps.steps:
        print(step.describe())
    if not steps.steps:
        print("nothing to stop")
    return EXIT_OK


def parse_target(text: str) -> tuple[str, str | None]:
    """`SERVICE[.ACTION]`: names cannot contain a dot, so the first one separates them."""
    service, dot, action = text.partition(".")
    if not service or (dot and not action):
        raise UsageError(f"{text!r} is not SERVICE or SERVICE.ACTION")
    return service, action or None


def require_known(text: str, targets: frozenset[tuple[str, str | None]],
                  jobs: Sequence[JobRecord]) -> None:
    known = {(j.service, j.action) for j in jobs}
    for service, action in targets:
        if not any(s == service and action in (None, a) for s, a in known):
            raise UsageError(f"no job named {text} in this state dir "
                             "(`reconcile status` lists them)")


def cmd_restart(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    target = parse_target(args.target)
    require_known(args.target, frozenset([target]), read_jobs(settings))
    bind(settings, rebind_of(args))
    with Reconciler(settings) as reconciler:
        stopped = reconciler.restart(frozenset({target}))
        started = reconciler.reconcile()
    for step in (*stopped.steps, *started.plan.changes):
        print(step.describe())
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    for line in repair(settings_from(args)).lines():
        print(line)
    return EXIT_OK


def cmd_events(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    store = open_reader(settings)
    try:
        events = store.events(service=args.service, limit=args.limit)
    finally:
        store.close()
    if args.output == "json":
        print(json.dumps([{"id": i, "at": e.at, "kind": e.kind, "service": e.service,
                           "action": e.action, "job_id": e.job_id, "reason": e.reason,
                           "detail": e.detail} for i, e in events], indent=2))
        return EXIT_OK
    if not events:
        print("no events")
    for _, event in events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.at))
        target = f"{event.service}.{event.action}" if event.service else "-"
        print(f"{when}  {event.kind:<12} {target:<24} {event.reason}")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    service, action = parse_target(args.target)
    jobs = [j for j in read_jobs(settings) if j.service == service
            and (not action or j.action == action)]
    if not jobs:
        raise UsageError(f"no job named {args.target}")
    for job in jobs:
        path = logs.log_path(settings.logs_dir, job.service, job.action)
        if args.previous:
            path = logs.previous_path(path)
        if len(jobs) > 1:
            print(f"==> {job.service}.{job.action} <==")
        for line in logs.tail(path, args.lines):
            print(line.rstrip("\n"))
    if args.follow:
        if len(jobs) > 1 or args.previous:
            raise UsageError("-f follows the current log of one action: name SERVICE.ACTION")
        for line in logs.follow(logs.log_path(settings.logs_dir, jobs[0].service, jobs[0].action)):
            print(line, flush=True)
    return EXIT_OK


# --- output helpers -----------------------------------------------------------------------


def open_reader(settings: Settings) -> Store:
    """For read-only commands: writes nothing at all (no directory, no chmod, no migration),
    so they work on a read-only state dir; they do not refuse a state dir that is not
    private either (reading cannot make it worse). Damage is still reported."""
    statedir.check_not_emptied(settings)
    return Store.open_readonly(settings.db_path)


def read_jobs(settings: Settings) -> list[JobRecord]:
    store = open_reader(settings)
    try:
        return store.jobs()
    finally:
        store.close()


def job_json(job: JobRecord, now: float | None = None,
             usage: Usage | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    return {
        "service": job.service,
        "action": job.action,
        "job_id": job.id,
        "phase": job.phase,
        "ready": job.ready,
        "pid": job.pid,
        "restart_count": job.restart_count,
        "last_exit_code": job.last_exit_code,
        "reason": describe_reason(job, now),
        "failure_class": job.failure_class,
        "blocked_by": [b.to_dict() for b in job.blocked_by],
        "started_at": job.started_at,
        "next_start_at": job.next_start_at,
        "generation": job.generation,
        "uptime_seconds": round(now - job.started_at, 3) if job.pid and job.started_at else None,
        "last_exit_at": job.last_exit_at,
        "cpu_percent": round(usage.cpu_percent, 1) if usage else None,
        "rss_bytes": usage.rss_bytes if usage else None,
    }


def describe_reason(job: JobRecord, now: float | None = None) -> str:
    """The stored reason plus how long until the next attempt, computed at display time."""
    now = time.time() if now is None else now
    if job.phase in ("backoff", "blocked") and job.next_start_at is not None:
        wait = max(job.next_start_at - now, 0.0)
        return f"{job.reason}, next start in {wait:.0f}s"
    return job.reason


def status_table(jobs: Sequence[JobRecord], usages: dict[str, Usage] | None = None) -> str:
    now = time.time()
    usages = usages or {}
    rows = [("SERVICE", "ACTION", "PHASE", "READY", "PID", "RESTARTS", "UPTIME", "CPU%", "RSS",
             "LAST EXIT", "REASON")]
    for job in jobs:
        uptime = _age(now - job.started_at) if job.pid and job.started_at else "-"
        used = usages.get(job.id)
        ready = ("yes" if job.ready else "no") if job.process else "-"
        rows.append((job.service, job.action, job.phase, ready,
                     str(job.pid or "-"), str(job.restart_count), uptime,
                     f"{used.cpu_percent:.1f}" if used else "-",
                     f"{used.rss_bytes / 2**20:.1f}MiB" if used else "-",
                     "-" if job.last_exit_code is None else str(job.last_exit_code),
                     describe_reason(job, now)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows)


def _age(seconds: float) -> str:
    rest = int(max(seconds, 0))
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _print_problems(loaded: LoadResult, steps: Plan | None) -> None:
    if loaded.dir_error:
        print(f"reconcile: {loaded.dir_error}", file=sys.stderr)
    for error in loaded.errors:
        print(str(error), file=sys.stderr)
    for name, outcome in loaded.files.items():
        if outcome.used_last_good:
            print(f"reconcile: {name} is invalid; its last good version stays in force",
                  file=sys.stderr)
    for note in steps.notes if steps else ():
        print(f"reconcile: {note}", file=sys.stderr)


def _duration(text: str, flag: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise UsageError(f"{flag}: {err}") from None


if __name__ == "__main__":
    sys.exit(main())
