"""LogCapper: keeps every running job's live log under its `logs.max_size`, even at 100 MB/s.

Children write straight into their log (an inherited O_APPEND fd), so they outlive the
controller; the only way to bound the file is copytruncate (logs.cap_size). Doing that from
the pass every few seconds lets a fast writer put gigabytes in between. This thread notices
growth within milliseconds instead, at almost no idle cost:

- Linux inotify (through ctypes: no dependency) watches each log *directory* for IN_MODIFY.
  A directory watch names the file and survives rotations (a renamed or re-created `.log`
  is the same name in the same directory). The kernel merges an event with the identical
  unread one before it, so a writer costs at most one wakeup per read, whatever its rate.
- Each target's growth rate is tracked, and a fast writer is rotated early (at
  `max_size - rate × REACTION_SECONDS`, never below `max_size / 4`), so the live file stays
  within `max_size + 1 MiB` while the copy of its tail runs. From the trigger to the
  truncate takes the wake-up, the copy and any wait for a CPU, with spikes in the kernel
  copy now and then; a floor of `max_size / 2` left a 100 MB/s writer too little slack, so
  it is `/ 4` (figures: docs/benchmarks.md, Log flood). The price: such a writer's `.log.N`
  files hold about `max_size / 4` plus what came during the rotation, not `max_size`.
  `.log.1` is never more than `max_size` (cap_size copies only the last `max_size` bytes),
  so history stays within `keep × max_size`.
- Where inotify is missing (or a directory cannot be watched yet), targets are polled:
  every few ms while they grow, less often the longer they stay quiet (see
  `_poll_interval`; the bound then holds once a burst has been seen, not for its first ms).
  Every target is also re-checked every `safety_interval` seconds (missed events, watch
  limits, file systems without inotify such as some network mounts).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from reconciler import logs
from reconciler.timing import LOG_CHECK_SECONDS, LOGCAP_ERROR_PAUSE_SECONDS

log = logging.getLogger(__name__)

REACTION_SECONDS = 0.1  # how far ahead of max_size a fast writer is rotated (rate × this)
EARLIEST = 4  # ... but never below max_size / EARLIEST
POLL_MIN, POLL_MAX = 0.002, 1.0  # adaptive polling of targets inotify does not cover
_QUIET_MAX = 0.005  # longest pause between reads while a watched log grows (0.5 MB at 100 MB/s)
_RECENT = 0.5  # a log that changed this recently is polled every few ms (without inotify)

IN_MODIFY, IN_MOVED_TO, IN_CREATE = 0x2, 0x80, 0x100
IN_DELETE_SELF, IN_MOVE_SELF = 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED = 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000
_DIR_MASK = (IN_MODIFY | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF
             | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then `len` bytes of NUL-padded name)


class LogTarget(NamedTuple):
    """One running job's live log and its spec's limits."""

    path: str
    max_size: int
    keep: int


class _Inotify:
    """The few inotify calls we need, through libc. Raises OSError if unavailable."""

    def __init__(self) -> None:
        try:
            self._libc = ctypes.CDLL(None, use_errno=True)
            init = self._libc.inotify_init1
        except (OSError, AttributeError) as err:
            raise OSError(errno.ENOSYS, "inotify is not available") from err
        self.fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise _errno_error("inotify_init1")

    def add(self, directory: str) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory),
                                          ctypes.c_uint32(_DIR_MASK))
        if wd < 0:
            raise _errno_error(directory)
        return int(wd)

    def remove(self, wd: int) -> None:
        self._libc.inotify_rm_watch(self.fd, wd)  # EINVAL if already gone: nothing to do

    def read(self) -> list[tuple[int, int, str]]:
        """Every queued event as (wd, mask, name); [] when none is queued."""
        events: list[tuple[int, int, str]] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return events
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size:offset + _EVENT.size + size]
                events.append((wd, mask, os.fsdecode(raw.rstrip(b"\0"))))
                offset += _EVENT.size + size

    def close(self) -> None:
        os.close(self.fd)


def _errno_error(what: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), what)


@dataclass(slots=True)
class _Watched:
    target: LogTarget
    size: int = 0
    seen_at: float = 0.0
    rate: float = 0.0  # bytes/s, peak-hold decaying by half every second
    changed_at: float = field(default_factory=time.monotonic)  # last seen growing (or new)
    errors: set[str] = field(default_factory=set)

    def observe(self, size: int, now: float) -> None:
        elapsed = max(now - self.seen_at, 0.001)
        grown = size - self.size if size >= self.size else size  # truncated since: all new
        self.rate = max(grown / elapsed, self.rate * 0.5 ** elapsed) if self.seen_at else 0.0
        if size != self.size:
            self.changed_at = now
        self.size, self.seen_at = size, now

    def trigger(self) -> int:
        """Rotate above this size: `max_size`, less what the writer adds while we react."""
        max_size = self.target.max_size
        return max_size - min(max_size - max_size // EARLIEST, int(self.rate * REACTION_SECONDS))


class LogCapper:
    """A daemon thread bounding live logs. `sync(targets)` after every pass; `start()` once;
    `stop()` at shutdown (returns within about a second). Thread-safe."""

    def __init__(self, *, safety_interval: float = LOG_CHECK_SECONDS,
                 use_inotify: bool = True) -> None:
        self.safety_interval = safety_interval
        self._lock = threading.Lock()
        self._wanted: dict[str, LogTarget] = {}
        self._changed = False
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._inotify: _Inotify | None = None
        if use_inotify:
            try:
                self._inotify = _Inotify()
            except OSError as err:
                log.warning("log capping polls instead of using inotify: %s", err)
        # Owned by the thread from start() on:
        self._watched: dict[str, _Watched] = {}
        self._wd_of: dict[str, int] = {}  # directory -> watch descriptor
        self._dir_of: dict[int, str] = {}
        # the targets whose directory has no watch, as of the last change to `_watched` or
        # `_wd_of` (None: to be worked out again): asked twice per wake-up, and walking
        # every target for it held the GIL ~2 ms per wake-up at 2000 jobs, in the middle
        # of every respawn (a rotation is an inotify event)
        self._missing: list[_Watched] | None = None
        # the targets less than _QUIET_MAX from their trigger at their last check (by path):
        # only they can shorten a pause (`_pause_while_far`), and a target's distance
        # changes only when it is checked or its limits change
        self._near: dict[str, _Watched] = {}
        self._poll = POLL_MIN  # new targets are polled fast until they prove quiet

    # --- the caller's side -------------------------------------------------------------

    def sync(self, targets: Iterable[LogTarget]) -> None:
        """The logs to bound from now on (the running jobs' live logs); others are dropped."""
        wanted = {os.fspath(t.path): LogTarget(os.fspath(t.path), t.max_size, t.keep)
                  for t in targets}
        with self._lock:
            if wanted == self._wanted:
                return
            self._wanted, self._changed = wanted, True
        self._wake()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-capper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """False when the thread did not end within `timeout` (logged; its fds stay open)."""
        with self._lock:
            self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("log capper did not stop within %.1fs", timeout)
                return False
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        return True

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wakeup is pending
            os.write(self._wake_w, b"x")

    # --- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        if self._inotify is not None:
            poller.register(self._inotify.fd, select.POLLIN)
        next_sweep = 0.0
        while True:
            try:
                next_sweep = self._step(poller, next_sweep)
            except Exception:  # never let one bad file end capping for every job
                log.exception("log capper step failed")
                time.sleep(LOGCAP_ERROR_PAUSE_SECONDS)
            with self._lock:
                if self._stopping:
                    return

    def _step(self, poller: select.poll, next_sweep: float) -> float:
        self._apply_changes()
        now = time.monotonic()
        if now >= next_sweep:  # every target, watched or not: nothing is missed for long
            self._check(self._watched.values(), now)
            next_sweep = now + self.safety_interval
        timeout = min(next_sweep - now, self._poll if self._unwatched() else next_sweep - now)
        ready = {fd for fd, _ in poller.poll(max(0, int(timeout * 1000)))}
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        now = time.monotonic()
        if self._inotify is not None and self._inotify.fd in ready:
            self._check(self._from_events(self._inotify.read()), now)
            self._pause_while_far()
        unwatched = self._unwatched()
        if unwatched:
            self._check(unwatched, now)
            self._poll = _poll_interval(unwatched, now)
        return next_sweep

    def _apply_changes(self) -> None:
        with self._lock:
            if not self._changed:
                return
            wanted, self._changed = dict(self._wanted), False
        self._missing = None
        for path in list(self._watched):
            if path not in wanted:
                del self._watched[path]
        fresh = []
        for path, target in wanted.items():
            watched = self._watched.get(path)
            if watched is None:
                watched = self._watched[path] = _Watched(target)
                fresh.append(watched)
            watched.target = target
        self._update_watches()
        self._near = {path: w for path, w in self._watched.items() if _near(w)}
        self._check(fresh, time.monotonic())  # a log may already be over its limit
        if fresh:
            self._poll = POLL_MIN

    def _update_watches(self) -> None:
        if self._inotify is None:
            return
        dirs = {os.path.dirname(path) for path in self._watched}
        self._missing = None
        for directory in [d for d in self._wd_of if d not in dirs]:
            wd = self._wd_of.pop(directory)
            self._dir_of.pop(wd, None)
            self._inotify.remove(wd)
        for directory in dirs - self._wd_of.keys():
            try:
                wd = self._inotify.add(directory)
            except OSError:  # not created yet, a symlink, or out of watches: polled instead
                continue
            self._wd_of[directory], self._dir_of[wd] = wd, directory

    def _unwatched(self) -> list[_Watched]:
        if self._inotify is None:
            return list(self._watched.values())
        if self._missing is None:
            self._missing = [w for w in self._watched.values()
                             if os.path.dirname(w.target.path) not in self._wd_of]
        missing = self._missing
        if missing:
            self._update_watches()  # the directory may exist by now
            self._missing = missing = [w for w in missing
                                       if os.path.dirname(w.target.path) not in self._wd_of]
        return missing

    def _from_events(self, events: list[tuple[int, int, str]]) -> list[_Watched]:
        """The targets the events name; all of them after a queue overflow."""
        hit: dict[str, _Watched] = {}
        for wd, mask, name in events:
            if mask & IN_Q_OVERFLOW:
                return list(self._watched.values())
            directory = self._dir_of.get(wd)
            if directory is None:
                continue
            if mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                # The directory went away or moved: watch whatever is at the path later.
                self._dir_of.pop(wd, None)
                if self._wd_of.get(directory) == wd:
                    del self._wd_of[directory]
                    self._missing = None
                continue
            watched = self._watched.get(os.path.join(directory, name))
            if watched is not None:
                hit[watched.target.path] = watched
        return list(hit.values())

    def _check(self, targets: Iterable[_Watched], now: float) -> None:
        """lstat each target, rotate the ones over their trigger."""
        for watched in targets:
            try:
                size = os.lstat(watched.target.path).st_size
            except OSError:
                continue
            watched.observe(size, now)
            if size > watched.trigger():
                self._cap(watched)
            if _near(watched):
                self._near[watched.target.path] = watched
            else:
                self._near.pop(watched.target.path, None)

    def _cap(self, watched: _Watched) -> None:
        path, max_size, keep = watched.target
        with self._lock:
            if self._wanted.get(path) != watched.target:
                return  # dropped (or changed) by a sync() since: no cap after sync returns
        try:
            if logs.cap_size(Path(path), max_size, keep, over=watched.trigger()):
                watched.size = 0
        except OSError as err:
            if str(err) not in watched.errors:  # once per distinct error, not per write
                watched.errors.add(str(err))
                log.warning("cannot cap log %s: %s", path, err)

    def _pause_while_far(self) -> None:
        """Wait (interruptibly) while every fast-growing log is far from its trigger: a
        100 MB/s writer would otherwise wake us once per write(2). Events pile up and merge
        meanwhile; the pause is at most half the time the fastest writer needs to reach it."""
        pause = min([_QUIET_MAX, *(_time_to_trigger(w) for w in self._near.values())])
        if pause > 0.001:  # poll, not select: our fds go far beyond select's 1024
            waker = select.poll()
            waker.register(self._wake_r, select.POLLIN)
            waker.poll(pause * 1000)


def _near(watched: _Watched) -> bool:
    return _time_to_trigger(watched) < _QUIET_MAX


def _time_to_trigger(watched: _Watched) -> float:
    """Half the time the target needs to reach its trigger at its current rate."""
    if watched.rate <= 0:
        return POLL_MAX
    return max(0.0, (watched.trigger() - watched.size) / watched.rate / 2)


def _poll_interval(targets: Iterable[_Watched], now: float) -> float:
    """How long polling may look away. A log that changed in the last `_RECENT` s (or was just
    added) is polled every few ms (a rate estimate from sparse samples is only a lower
    bound); a quiet one less often the longer it has been quiet (a tenth of its quiet time,
    up to POLL_MAX), so a thousand idle logs cost little. The price, without inotify: the
    first burst after a long quiet spell can pass the bound by rate × interval."""
    wait = POLL_MAX
    for watched in targets:
        quiet = now - watched.changed_at
        if quiet < _RECENT:
            wait = min(wait, _QUIET_MAX, _time_to_trigger(watched))
        else:
            wait = min(wait, quiet / 10)
    return min(max(POLL_MIN, wait), POLL_MAX)
