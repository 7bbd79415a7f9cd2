"""What the commands print: tables, JSON documents, ages and problem lines.

Pure functions of records (and `now`): no state dir, no host. The JSON shapes are the CLI
contract (docs/operations.md); tables are for people and may change.
"""

from __future__ import annotations

import sys
import time

from reconciler.text import printable

# `status` loads this module: json is imported where a JSON document is written, typing and
# the types of other commands only for annotations (issue 13)
TYPE_CHECKING = False  # not typing's
if TYPE_CHECKING:  # `status` loads no planner (it pulls in the spec model: pydantic)
    from collections.abc import Iterable, Sequence
    from typing import Any

    from reconciler.host.usage import Usage
    from reconciler.info import Info
    from reconciler.plan import Plan, Step, Waiting
    from reconciler.spec.load import LoadResult, SpecError
    from reconciler.state.reader import JobView
    from reconciler.state.records import Anomaly, Event, JobRecord

    Job = JobRecord | JobView  # a job as status shows it: the same attribute names


def to_json(value: object) -> str:
    import json

    return json.dumps(value, indent=2)


def job_json(job: Job, now: float | None = None, usage: Usage | None = None, *,
             suspended: bool = False, anomalies: Sequence[Anomaly] = ()) -> dict[str, Any]:
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
        "revision": job.revision,
        "uptime_seconds": round(now - job.started_at, 3) if job.pid and job.started_at else None,
        "last_exit_at": job.last_exit_at,
        "cpu_percent": round(usage.cpu_percent, 1) if usage else None,
        "rss_bytes": usage.rss_bytes if usage else None,
        "suspended": suspended,
        "anomalies": [{"rule": a.rule, "since": a.since, "detail": a.detail}
                      for a in anomalies],
    }


def jobs_json(jobs: Iterable[Job], usages: dict[str, Usage] | None = None,
              suspended: frozenset[str] = frozenset(),
              anomalies: Sequence[Anomaly] = ()) -> str:
    return to_json(jobs_list(jobs, usages, suspended, anomalies))


def jobs_list(jobs: Iterable[Job], usages: dict[str, Usage] | None = None,
              suspended: frozenset[str] = frozenset(),
              anomalies: Sequence[Anomaly] = ()) -> list[dict[str, Any]]:
    """The job objects of `status -o json` (also inside `--once -o json`)."""
    usages = usages or {}
    by_job = anomalies_by_job(anomalies)
    return [job_json(j, usage=usages.get(j.id), suspended=j.service in suspended,
                     anomalies=by_job.get(j.id, ())) for j in jobs]


def anomalies_by_job(anomalies: Iterable[Anomaly]) -> dict[str, list[Anomaly]]:
    found: dict[str, list[Anomaly]] = {}
    for anomaly in anomalies:
        found.setdefault(anomaly.job_id, []).append(anomaly)
    return found


def describe_reason(job: Job, now: float | None = None) -> str:
    """The stored reason plus how long until the next attempt, computed at display time."""
    now = time.time() if now is None else now
    if job.phase in ("backoff", "blocked") and job.next_start_at is not None:
        wait = max(job.next_start_at - now, 0.0)
        return f"{job.reason}, next start in {wait:.0f}s"
    return job.reason


def status_table(jobs: Sequence[Job], usages: dict[str, Usage] | None = None,
                 suspended: frozenset[str] = frozenset(),
                 anomalies: Sequence[Anomaly] = ()) -> str:
    now = time.time()
    usages = usages or {}
    by_job = anomalies_by_job(anomalies)
    rows = [("SERVICE", "ACTION", "PHASE", "READY", "PID", "RESTARTS", "UPTIME", "CPU%", "RSS",
             "LAST EXIT", "SUSPENDED", "ANOMALIES", "REASON")]
    for job in jobs:  # 13 cells of every job: `status`' run, kept to plain expressions
        pid, started, used, rules = job.pid, job.started_at, usages.get(job.id), by_job.get(job.id)
        rows.append((job.service, job.action, job.phase,
                     ("yes" if job.ready else "no") if job.process else "-",
                     str(pid) if pid else "-", str(job.restart_count),
                     age(now - started) if pid and started else "-",
                     f"{used.cpu_percent:.1f}" if used else "-",
                     f"{used.rss_bytes / 2**20:.1f}MiB" if used else "-",
                     "-" if job.last_exit_code is None else str(job.last_exit_code),
                     "yes" if job.service in suspended else "-",
                     (",".join([a.rule for a in rules]) or "-") if rules else "-",
                     describe_reason(job, now)))
    return aligned(rows)


def aligned(rows: Sequence[tuple[str, ...]]) -> str:
    """Rows as lines of columns two spaces apart, each column as wide as its widest cell
    (the last one unpadded). One `%` format per line rather than an `ljust` per cell: `status`
    lays out thousands of cells, and its start is a goal of issue 13."""
    *padded, _ = (max(map(len, column)) for column in zip(*rows, strict=True))
    line = "".join(f"%-{width}s  " for width in padded) + "%s"
    return "\n".join([line % row for row in rows])


def age(seconds: float) -> str:
    """`42s`, `3m5s`, `2h10m`, `4d3h`: two units at most, like `kubectl get`'s AGE."""
    rest = int(max(seconds, 0))
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def events_json(events: Sequence[tuple[int, Event]]) -> str:
    return to_json([{"id": i, "at": e.at, "kind": e.kind, "service": e.service,
                     "action": e.action, "job_id": e.job_id, "reason": e.reason,
                     "detail": e.detail, "revision": e.revision} for i, e in events])


def event_lines(events: Sequence[tuple[int, Event]]) -> list[str]:
    if not events:
        return ["no events"]
    lines = []
    for _, event in events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.at))
        target = f"{event.service}.{event.action}" if event.service else "-"
        lines.append(f"{when}  {event.kind:<12} {target:<24} {event.reason}")
    return lines


# --- diff: the whole change ------------------------------------------------------------------


def diff_json(planned: Plan) -> str:
    """`diff -o json`: a list of `{verb, service, action, job_id, reason, waits_for}`; the
    steps a pass takes now (`waits_for` empty), then the actions that start later, as verb
    `spawn` with what they wait for ("service.action" names)."""
    return to_json([*(step_entry(s) for s in planned.changes),
                    *(waiting_entry(w) for w in planned.waiting)])


def step_entry(step: Step) -> dict[str, Any]:
    """A step as a diff entry. A cleanup belongs to no job (its path is in `reason`), nor
    does a kill of a foreign process (its pid and command are)."""
    from reconciler.plan import Cleanup, Kill

    if isinstance(step, Cleanup):
        return _entry(step.verb, None, step.path + ": " + step.reason)
    if isinstance(step, Kill):
        what = f"pid {step.target.pid} {step.cmd}".rstrip()
        return _entry(step.verb, step.job, f"{what}: {step.reason}")
    return _entry(step.verb, step.job, step.reason)


def _entry(verb: str, job: JobRecord | None, reason: str) -> dict[str, Any]:
    return {"verb": verb, "service": job.service if job else None,
            "action": job.action if job else None, "job_id": job.id if job else None,
            "reason": reason, "waits_for": []}


def waiting_entry(waiting: Waiting) -> dict[str, Any]:
    return {"verb": "spawn", "service": waiting.service, "action": waiting.action,
            "job_id": waiting.job_id, "reason": waiting.reason,
            "waits_for": list(waiting.waits_for)}


def diff_lines(planned: Plan) -> list[str]:
    """The steps, then one `later:` line per action that starts in a later pass."""
    lines = [step.describe() for step in planned.changes]
    lines += [f"later: spawn {w.service}.{w.action}: {w.reason}" for w in planned.waiting]
    return lines or ["no changes"]


def step_lines(steps: Sequence[Step], *, none: str | None = None) -> list[str]:
    """One line per step; `none` is what to say when there are none (or nothing)."""
    lines = [step.describe() for step in steps]
    return lines if lines or none is None else [none]


# --- validation and CI output ----------------------------------------------------------------


def spec_errors(loaded: LoadResult) -> list[dict[str, Any]]:
    """Every problem as `{file, line, column, message}`; a specs dir that cannot be read at
    all has no line: `file` is null then, and the message names the dir."""
    errors = [error_json(e) for e in loaded.errors]
    if loaded.dir_error:
        errors.insert(0, {"file": None, "line": None, "column": None,
                          "message": loaded.dir_error})
    return errors


def error_json(error: SpecError) -> dict[str, Any]:
    return {"file": error.file, "line": error.line, "column": error.column,
            "message": error.message}


def validation_json(loaded: LoadResult) -> str:
    """`validate -o json`: `{valid, errors: [{file, line, column, message}]}`."""
    return to_json({"valid": loaded.ok, "errors": spec_errors(loaded)})


def pass_json(converged: bool, source: dict[str, Any], loaded: LoadResult,
              jobs: list[dict[str, Any]]) -> str:
    """`reconcile --once -o json`: `{converged, source, errors, jobs}`."""
    return to_json({"converged": converged, "source": source,
                    "errors": spec_errors(loaded), "jobs": jobs})


def github_annotations(loaded: LoadResult) -> list[str]:
    """`validate --format github`: one GitHub Actions `::error` workflow command per problem,
    shown on the pull request's diff. As GitHub's toolkit escapes them: `%`, CR and LF in the
    message; also `:` and `,` in property values (they end the command and separate
    properties)."""
    return [github_annotation(e["message"], e["file"], e["line"], e["column"])
            for e in spec_errors(loaded)]


def github_annotation(message: str, file: str | None, line: int | None,
                column: int | None) -> str:
    props = ",".join(f"{key}={_gh_property(str(value))}" for key, value in
                     (("file", file), ("line", line), ("col", column)) if value is not None)
    return f"::error{' ' + props if props else ''}::{_gh_data(message)}"


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def validation_summary(loaded: LoadResult) -> str:
    return f"{len(loaded.services)} services in {len(loaded.files)} files: valid"


def invalid_summary(loaded: LoadResult) -> str:
    """The last line of a failed `validate`: how many problems, in how many files, so a
    reader of a long CI log knows the list above is complete."""
    broken = len({e.file for e in loaded.errors})
    problems = len(loaded.errors) + (1 if loaded.dir_error else 0)
    return (f"reconcile: invalid: {problems} problem{'s' if problems != 1 else ''} "
            f"in {broken} of {len(loaded.files)} files")


def print_problems(loaded: LoadResult, planned: Plan | None) -> None:
    """Spec errors, last-good fallbacks and plan notes, to stderr (stdout stays parseable)."""
    if loaded.dir_error:
        print(f"reconcile: {loaded.dir_error}", file=sys.stderr)
    for error in loaded.errors:
        print(str(error), file=sys.stderr)
    for name, outcome in loaded.files.items():
        if outcome.used_last_good:
            print(f"reconcile: {name} is invalid; its last good version stays in force",
                  file=sys.stderr)
    for note in planned.notes if planned else ():
        print(f"reconcile: {note}", file=sys.stderr)


# --- `reconcile info` and the `status` header (DESIGN §8.2) ---------------------------------


def info_json(info: Info) -> dict[str, Any]:
    """The documented shape: `source.error` (why the revision is `unknown`) is an addition."""
    facts = info.facts
    daemon = None
    if info.daemon_pid is not None:
        daemon = {"pid": info.daemon_pid, "started_at": info.daemon_started_at}
    return {
        "version": info.version,
        "specs_dir": info.specs_dir,
        "state_dir": info.state_dir,
        "daemon": daemon,
        "last_pass": {"at": facts.last_pass_at, "ok": facts.last_pass_ok,
                      "duration_ms": facts.last_pass_duration_ms},
        "source": {"revision": facts.revision, "applied_revision": facts.applied_revision,
                   "dirty": facts.dirty, "error": facts.revision_error},
        "files": [{"file": f.file, "state": f.state, "error": f.error} for f in info.files],
        "labels": dict(info.labels),
        "unplaced": dict(info.unplaced),  # an addition: services placement keeps off this host
    }


def info_lines(info: Info, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    facts = info.facts
    lines = [f"version:          {info.version}",
             f"specs dir:        {info.specs_dir}",
             f"state dir:        {info.state_dir}",
             f"daemon:           {_daemon_text(info, now)}",
             f"last pass:        {_last_pass_text(facts.last_pass_at, facts.last_pass_ok, now)}"
             + (f" ({facts.last_pass_duration_ms} ms)"
                if facts.last_pass_duration_ms is not None else ""),
             f"revision:         {_revision_text(facts.revision, facts.dirty)}"
             + (f" ({facts.revision_error})" if facts.revision_error else ""),
             f"applied revision: {facts.applied_revision or '-'}"]
    lines.append(f"files:            {len(info.files)}, {len(info.files_not_ok)} not ok")
    lines += [f"  {f.file}: {f.state}" + (f": {f.error}" if f.error else "")
              for f in info.files_not_ok]
    labels = ", ".join(f"{k}={v}" for k, v in sorted(info.labels.items()))
    lines.append(f"labels:           {labels or '-'}")
    lines += [f"not placed here:  {service}: {why}" for service, why in info.unplaced.items()]
    return [printable(line) for line in lines]  # labels, revision labels: operators' text


def status_header(info: Info, now: float | None = None) -> str:
    """One line above the `status` table: daemon, last pass, revision, files not ok."""
    now = time.time() if now is None else now
    facts = info.facts
    revision = _revision_text(_short_revision(facts.revision), facts.dirty)
    if facts.applied_revision != facts.revision:
        revision += f" (applied {_short_revision(facts.applied_revision) or '-'})"
    bad = info.files_not_ok
    files = "all files ok" if not bad else f"{len(bad)} file(s) not ok: " + ", ".join(
        f"{f.file} ({f.state})" for f in bad)
    return printable(f"daemon {_daemon_text(info, now)} · last pass "
                     f"{_last_pass_text(facts.last_pass_at, facts.last_pass_ok, now)} · "
                     f"revision {revision} · {files}")


def _daemon_text(info: Info, now: float) -> str:
    if info.daemon_pid is None:
        return "down"
    started = info.daemon_started_at
    return f"up (pid {info.daemon_pid}" + (f", {age(now - started)}" if started else "") + ")"


def _last_pass_text(at: float | None, ok: bool | None, now: float) -> str:
    if at is None:
        return "never"
    return f"{age(now - at)} ago, {'ok' if ok else 'not ok'}"


def _revision_text(revision: str | None, dirty: bool) -> str:
    return (revision or "-") + (" +dirty" if dirty else "")


def _short_revision(revision: str | None) -> str | None:
    """`main@sha1:0123456789ab`: 12 hex digits are plenty on one line."""
    if revision is None:
        return None
    name, sep, sha = revision.rpartition("sha1:")
    return f"{name}{sep}{sha[:12]}" if sep else revision
