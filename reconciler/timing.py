"""Every poll and wait interval of the reconciler's threads and host layer, in one place.

These are mechanics, not policy: they decide how soon something is noticed when no event
says so (most changes do arrive as events: inotify, pidfds, probe results), or how long one
thread waits for another. What happens to a job (start floors, stop grace, backoff) is the
planner's policy and lives in plan.py. Daemon-level knobs an operator sets (`--resync`,
`--settle`) are flags, not constants here.
"""

# Without pidfds (old kernel, seccomp), waiting for a process to exit means asking this often
# (spawn's Children.wait, an exec probe's wait).
NO_PIDFD_POLL_SECONDS = 0.02
# The exit watcher checks processes it has no pidfd for this often.
EXIT_WATCH_POLL_SECONDS = 0.5
# How long stop() waits for a watcher thread to end before it gives up (and logs it).
THREAD_JOIN_SECONDS = 5.0
# The spec watcher's step (watchfiles): its thread wakes this often, and a change is reported
# one to two steps after it. 100 ms: the watcher was 0.2 % of a core at 50 ms, 0.12 % now;
# what it adds to a save is hidden in the settle window (`--settle`, 200 ms), which a
# change waits out anyway (docs/benchmarks.md, "--once, sixth round").
SPEC_WATCH_STEP_MS = 100
# The daemon loop wakes at least this often without a trigger, to see that it must stop.
DAEMON_WAKE_SECONDS = 1.0
# Every live log is checked this often, whatever inotify says (missed events, new dirs).
LOG_CHECK_SECONDS = 5.0
# After an unexpected error in the log capper's loop, it waits this long before its next step.
LOGCAP_ERROR_PAUSE_SECONDS = 1.0
# Polling a lock someone else holds (the state lock, SQLite's lock while WAL is switched on).
LOCK_RETRY_SECONDS = 0.01
# How often logs are held to `logs.max_size` and old events pruned by passes.
HOUSEKEEPING_SECONDS = 5.0
