"""The records `reconcile status` shows besides its jobs, as named tuples that need neither
`dataclasses` nor `typing` to build: a blocking process (`BlockedBy`), a broken resource rule
(`Anomaly`) and the controller's own facts (`ControllerFacts`). `state/records.py` re-exports
them: they are records like the rest, kept here only so the status path can import them
without what records.py's dataclasses cost (issue 13). Plain data, no I/O (pure core).
"""

from __future__ import annotations

from reconciler.tuples import NamedTuple  # typing's, without importing typing

TYPE_CHECKING = False  # not typing's
if TYPE_CHECKING:
    from typing import Any


class BlockedBy(NamedTuple):
    """A foreign process holding one of our declared resources."""

    resource: str  # "/run/web/api.sock" or ":8080"
    pid: int | None  # None: listening, but the owner is invisible to us
    cmd: str

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "cmd": self.cmd, "resource": self.resource}


class Anomaly(NamedTuple):
    """A resource rule a job breaks now (docs/resources.md), since when, and the numbers."""

    job_id: str
    service: str
    action: str
    rule: str  # "fds", "rss-growth", "threads-growth", "d-state", "zombies", "oom-score"
    since: float
    detail: str


class ControllerFacts(NamedTuple):
    """What `reconcile info` and the `status` header say about the controller itself: its
    last pass, the revision it saw and the one it applied, and the daemon that runs it."""

    last_pass_at: float | None = None
    last_pass_ok: bool | None = None  # every spec file loaded cleanly and the pass completed
    last_pass_duration_ms: int | None = None
    revision: str | None = None
    # The latest revision at which every file loaded cleanly (see DESIGN §8.2).
    applied_revision: str | None = None
    dirty: bool = False
    revision_error: str | None = None  # why the revision is `unknown`
    daemon_pid: int | None = None  # as last recorded: alive only while it holds daemon.lock
    daemon_started_at: float | None = None
    # The labels the last pass placed by, and the services they kept off this host (and
    # why): what `info` shows, and what a pass started by a CLI command places by.
    labels: tuple[tuple[str, str], ...] = ()
    unplaced: tuple[tuple[str, str], ...] = ()
