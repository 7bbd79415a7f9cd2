"""`reconcile status`: the jobs of a state dir, their CPU and memory, and a header line.

Run without `cli/commands.py` (as `validate` is) and without what it imports, because issue
13 wants `status` within 2.5× of `python -c pass`: the state dir comes from `dirs.py` as a
string (no `Settings`: dataclasses, pathlib), the rows from `state/reader.py` on a plain
sqlite3 connection, only the columns the output shows (no `Store`, no `JobRecord`, no spec
JSON), the CPU and memory from one /proc read per job (`host/usage.py`). The output is the
one `render` gives any job (tests/test_cli_status.py, tests/test_status_read.py);
tests/test_cli_imports.py pins what this loads.
"""

import os

from reconciler import dirs
from reconciler.cli import render
from reconciler.cli.errors import EXIT_OK
from reconciler.cli.flags import DEFAULT_SETTLE, specs_flag, state_dir_flag
from reconciler.host.usage import read_now
from reconciler.info import status_info
from reconciler.state import reader, statedir

TYPE_CHECKING = False  # not typing's
if TYPE_CHECKING:
    import argparse


def cmd_status(args: "argparse.Namespace") -> int:
    state_dir, specs_dir = status_dirs(args)
    statedir.check_not_emptied_at(state_dir)
    conn, tables = reader.connect_readonly(os.path.join(state_dir, dirs.DB_FILE))
    try:  # one read-only open for the jobs and the header
        jobs = reader.job_views(conn, tables)
        suspended = reader.suspended(conn, tables)
        anomalies = reader.anomalies(conn, tables)
        info = (status_info(conn, tables, state_dir, specs_dir) if args.output != "json"
                else None)
    finally:
        conn.close()
    usages = read_now({j.id: ident for j in jobs if j.pid and (ident := j.identity)})
    if info is None:
        print(render.jobs_json(jobs, usages, suspended, anomalies))  # a list of jobs (§8.2)
    else:
        print(render.status_header(info))
        print(render.status_table(jobs, usages, suspended, anomalies) if jobs else "no jobs")
    return EXIT_OK


def status_dirs(args: "argparse.Namespace") -> tuple[str, str]:
    """The state dir and specs dir (absolute, as `Settings` has them), refusing what
    `settings_from` refuses for any command: the real state dir under the test suite, a bad
    revision label; a `--settle` other than the default is checked by `settings_from`
    itself (status does not use it, but a bad value is an error for every command)."""
    settle = getattr(args, "settle", None)
    if settle is not None and settle != DEFAULT_SETTLE:
        from reconciler.cli.flags import settings_from

        settings_from(args)
    state_dir = dirs.absolute(dirs.state_dir_text(state_dir_flag(args)))
    dirs.check_not_default(state_dir)
    dirs.revision_label_of(getattr(args, "revision", None))
    return state_dir, dirs.absolute(dirs.specs_dir_text(specs_flag(args)))
