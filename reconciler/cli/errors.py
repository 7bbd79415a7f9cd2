"""Exit codes and the one error type the command line raises itself.

Exit codes follow `kubectl diff` / `flux diff`: 0 clean, 1 differences or not converged,
2 errors (invalid specs, refused configuration or state dir), 141 when stdout was closed
early (`reconcile status | head -1`: quiet, like a tool killed by SIGPIPE).
"""

EXIT_OK, EXIT_CHANGES, EXIT_ERROR = 0, 1, 2
EXIT_PIPE = 128 + 13  # SIGPIPE: what `yes | head -1` reports for `yes`
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit 2."""
