"""`reconcile --help` exactly as argparse prints it at the default width (80 columns: a pipe,
a file, or an 80-column terminal), so that `--help` is answered without importing argparse
(argparse, re and enum alone cost more than the 1.5× of `python -c pass` issue 13 allows).
Generated from the real parser by `python -m reconciler.cli.helptext`;
tests/test_cli_help.py fails when it differs from what `args.build_parser()` prints. Any
other width, or any other argument, goes through argparse as before.
"""

import os

# not `typing`'s TYPE_CHECKING, and no `from __future__ import annotations` (the annotations
# are strings): each import is a measurable part of `--help`
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

COLUMNS = 80


def terminal_columns(environ: "Mapping[str, str]", stdout_fd: "int | None") -> int:
    """The width argparse formats help for: `shutil.get_terminal_size().columns` ($COLUMNS,
    else the terminal on stdout, else 80), without importing shutil (and with it zlib, bz2
    and lzma)."""
    try:
        columns = int(environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    if stdout_fd is None:
        return 80
    try:
        return os.get_terminal_size(stdout_fd).columns or 80
    except (ValueError, OSError):  # not a terminal
        return 80


def stdout_fd() -> "int | None":
    """`sys.__stdout__`'s descriptor, as shutil asks it (None when it is gone or closed)."""
    import sys

    try:
        return sys.__stdout__.fileno() if sys.__stdout__ is not None else None
    except (AttributeError, ValueError, OSError):
        return None

TOP_HELP = """\
usage: reconcile [-h] [--specs DIR] [--state-dir DIR] [--rebind]
                 [--revision LABEL] [--labels FILE] [--allow-empty]
                 [-o {table,json}] [--version] [--once] [--wait WAIT]
                 [--settle SETTLE] [--resync RESYNC]
                 [--metrics-addr HOST:PORT] [--metrics-textfile PATH]
                 [--sample-interval DURATION]
                 [--log-format {text,json,journal}]
                 COMMAND ...

Make this host run what the specs dir says, and keep it that way.

positional arguments:
  COMMAND
    diff                print the steps a pass would take, change nothing
    status              show services, jobs, phases and why
    validate            check specs: file:line:column: message
    suspend             leave a service alone: observed, never started,
                        stopped, restarted or pruned, until `resume`
    resume              act on a suspended service again (a pass runs at once)
    schema              print the JSON Schema of the spec format
    down                stop a service or one action (all when none is named)
    restart             stop a job and start it again now (counts in
                        restart_count)
    events              what was killed, cleaned, spawned, adopted, and why
    logs                show a job's log
    repair              rebuild the jobs from run/ after damage to state.db
    info                the controller: daemon, last pass, source revision,
                        spec files
    top                 live table of the running jobs' resources (q quits,
                        c/m sort)
    stats               a job's resource history: sparklines, last values,
                        anomalies

options:
  -h, --help            show this help message and exit
  --specs DIR           specs directory (default: $RECONCILER_SPECS or
                        ./specs)
  --state-dir DIR       state directory (default: $RECONCILER_STATE_DIR or
                        per-user)
  --rebind              let this state dir serve this --specs dir from now on
                        (it refuses another specs dir than the one it serves)
  --revision LABEL      name the specs dir's revision (default:
                        $RECONCILER_REVISION, else from git when the specs dir
                        is in a git work tree)
  --labels FILE         this host's labels for placement (YAML mapping;
                        default: $RECONCILER_LABELS or
                        /etc/reconciler/labels.yaml if it exists)
  --allow-empty         let an empty specs dir prune every running service
  -o {table,json}, --output {table,json}
  --version             show program's version number and exit
  --once                converge once, print a table and exit (0 ok, 1 not
                        converged, 2 invalid specs)
  --wait WAIT           with --once: how long to wait
  --settle SETTLE       read a changed spec file once it has been quiet this
                        long (a half-written file is never read; 0s to read at
                        once)
  --resync RESYNC       daemon: full resync interval (a safety net; events
                        trigger passes)
  --metrics-addr HOST:PORT
                        daemon: serve /metrics and /healthz here (PORT alone:
                        127.0.0.1; a non-loopback host only when written here;
                        default: $RECONCILER_METRICS_ADDR, loopback only, else
                        off)
  --metrics-textfile PATH
                        with --once: write the metrics to PATH (atomically)
                        for node_exporter's textfile collector
  --sample-interval DURATION
                        daemon: sample every running job's resources this
                        often (default: $RECONCILER_SAMPLE_INTERVAL or 5s; at
                        least 100ms)
  --log-format {text,json,journal}
                        daemon log lines: text, json, or journal (<N> priority
                        prefixes; the default when stderr is the journal)
"""

if __name__ == "__main__":  # regenerate this file from the parser
    import sys
    from pathlib import Path

    from reconciler.cli.args import top_help

    path = Path(__file__)
    text = path.read_text()
    head, _, _ = text.partition("\nTOP_HELP = ")
    tail = text[text.index("\nif __name__ ==") :]
    help_text = top_help(COLUMNS)
    assert "\\" not in help_text and '"""' not in help_text  # kept verbatim below
    path.write_text(f'{head}\nTOP_HELP = """\\\n{help_text}"""\n{tail}')
    sys.exit(0)
