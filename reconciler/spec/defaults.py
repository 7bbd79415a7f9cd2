"""Defaults of the spec format that the job records must agree with.

A job record keeps part of its action's spec (`state.records.JobSpec`) so it can be stopped
after its spec is gone; a record written before a field existed falls back to the spec's
default. Both read them from here, a module with no imports, so neither drags the other in.
"""

DEFAULT_STOP_SIGNAL = "SIGTERM"
DEFAULT_STOP_TIMEOUT = 10.0  # seconds
DEFAULT_LOGS_KEEP = 5  # previous runs' logs kept
