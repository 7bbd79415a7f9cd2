"""Wake the controller when the specs dir changes.

The watcher only says "something changed"; the pass re-reads the whole directory, so a
batch's change kinds and order do not matter, and a missed or duplicate wake-up costs at most
one extra pass (the periodic resync catches anything that slips through entirely).

inotify watches an inode, not a path: when the specs dir is renamed away, deleted, or a
symlink to it is swapped (all common deployment patterns), the old watch goes silent without
an error. So on every wake-up of the watch loop (at least once per heartbeat) we compare the
directory's (st_dev, st_ino) with the one the current watch was started on, and re-create the
watch on the new directory.

Directory swaps inside the dir count too. A Kubernetes ConfigMap volume (AtomicWriter) shows
each spec as `name -> ..data/name` with `..data -> ..<timestamp>/`; an update writes a new
timestamped dir and renames `..data_tmp` over `..data`, so only hidden `..` names change and
the visible files never get an event. git-sync flips a symlink the same way. So a change to
any `..` name or to any symlink is a change to the specs (the pass re-reads everything).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import watchfiles

# The loader's own rule, so that editor temp files (`.x.yaml.swp`, vim's `4913`, `x.yaml~`,
# `.#x.yaml`) never wake the controller for nothing.
from reconciler.spec.load import is_spec_name
from reconciler.timing import THREAD_JOIN_SECONDS

__all__ = ["SpecWatcher", "is_spec_name", "is_swap_name"]

log = logging.getLogger(__name__)


DirId = tuple[int, int]  # (st_dev, st_ino)
Snapshot = dict[str, tuple[int, int, int, int]]  # name -> (ino, size, mtime_ns, ctime_ns)


def is_swap_name(name: str) -> bool:
    """Kubernetes AtomicWriter internals (`..data`, `..data_tmp`, `..2026_12_01_…`): a
    change to one of them is how a ConfigMap update shows up."""
    return name.startswith("..")


def _relevant_name(directory: str, name: str) -> bool:
    if is_spec_name(name) or is_swap_name(name):
        return True
    return os.path.islink(os.path.join(directory, name))  # a flipped link (git-sync)


def _dir_id(path: Path) -> DirId | None:
    """Follows symlinks on purpose: swapping a `specs -> releases/vN` link is a replacement."""
    try:
        st = os.stat(path)
    except OSError:  # gone, or a path component is not a directory / not readable
        return None
    return (st.st_dev, st.st_ino)


def _snapshot(path: Path) -> Snapshot:
    """Enough metadata per spec file to tell whether it changed between two moments; used to
    cover the window in which no watch exists yet."""
    snap: Snapshot = {}
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                swap = is_swap_name(entry.name)
                if not (swap or is_spec_name(entry.name)):
                    continue
                with contextlib.suppress(OSError):
                    # a spec through its links (what will be read), a `..` name itself
                    # (renaming `..data_tmp` over `..data` gives it another inode)
                    st = entry.stat(follow_symlinks=not swap)
                    snap[entry.name] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        pass
    return snap


class SpecWatcher:
    """Calls on_change() soon after any *.yaml/*.yml in specs_dir is added, modified or deleted.

    Also calls it when the directory itself disappears, appears, or is replaced. Start it
    BEFORE the controller's first pass: any change after `start()` returns is reported.
    on_change runs on the watcher's thread and should only kick the controller.
    """

    def __init__(self, specs_dir: Path, on_change: Callable[[], None], *,
                 debounce_ms: int = 50, step_ms: int = 10, heartbeat_ms: int = 500,
                 force_polling: bool | None = None) -> None:
        self.specs_dir = Path(specs_dir)
        self._on_change = on_change
        self._debounce_ms = debounce_ms
        self._step_ms = step_ms
        self._heartbeat_ms = heartbeat_ms
        self._force_polling = force_polling
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dir: DirId | None = None
        self._baseline: Snapshot = {}
        self._failing: str | None = None  # last watch-creation error, logged once
        # other files whose change matters (the specs' `env_file`s), relative to specs_dir
        self._also: frozenset[str] = frozenset()

    def also_watch(self, paths: Iterable[str]) -> None:
        """Report changes to these files too (relative to the specs dir): the env files the
        loaded specs name, which are part of what runs. The watch is not recursive: one in a
        subdirectory is seen at the next resync."""
        self._also = frozenset(os.path.normpath(p) for p in paths)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("SpecWatcher already started")
        # Taken here, not in the thread, so that a change right after start() returns is
        # seen even if the thread has not set up its watch yet.
        self._dir = _dir_id(self.specs_dir)
        self._baseline = _snapshot(self.specs_dir)
        self._thread = threading.Thread(target=self._run, name="spec-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """watchfiles checks the stop event every `step_ms`, so this returns within tens of
        milliseconds unless on_change itself is blocked."""
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(THREAD_JOIN_SECONDS)
        if thread.is_alive():
            log.warning("spec watcher did not stop within %.0fs", THREAD_JOIN_SECONDS)

    # --- the watcher thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            current = _dir_id(self.specs_dir)
            if current != self._dir:
                log.info("specs dir %s %s", self.specs_dir,
                         "disappeared" if current is None else "was replaced or appeared")
                # Snapshot BEFORE the kick: the pass reads the dir after the kick, so every
                # change before the snapshot is seen by that pass, every change after it by
                # the new watch or by the comparison on its first wake-up.
                self._baseline = _snapshot(self.specs_dir)
                self._dir = current
                self._notify()
            if current is None:
                self._stop.wait(self._heartbeat_ms / 1000)
                continue
            self._watch(current)

    def _watch(self, watched: DirId) -> None:
        """Run one watchfiles watch until stopped or until the directory is no longer the
        one it was started on."""
        first = True
        try:
            for changes in watchfiles.watch(
                    self.specs_dir, watch_filter=None, debounce=self._debounce_ms,
                    step=self._step_ms, stop_event=self._stop, rust_timeout=self._heartbeat_ms,
                    yield_on_timeout=True, raise_interrupt=False,
                    force_polling=self._force_polling, recursive=False):
                # watch_filter=None: filtering here, not in watchfiles, so that a stream of
                # irrelevant events cannot starve the heartbeat (filtered-out batches are
                # never yielded, and then the directory check below would never run).
                self._failing = None
                relevant = self._relevant(p for _, p in changes)
                if first:  # the watch exists now: did anything change while it did not?
                    first = False
                    relevant = relevant or _snapshot(self.specs_dir) != self._baseline
                if relevant:
                    self._notify()
                elif changes:
                    log.debug("ignored spec dir changes: %s", sorted(p for _, p in changes))
                if _dir_id(self.specs_dir) != watched:
                    return
        except Exception as err:  # missing dir (race), inotify limits, permissions, …
            if _dir_id(self.specs_dir) == watched:  # else: the loop notices the change
                self._watch_failed(err)

    def _relevant(self, paths: Iterable[str]) -> bool:
        """Spec files, `..` swap names and symlinks directly in the dir, and the files
        `also_watch` named; events on the dir itself or on other files do not count."""
        base = os.path.normpath(os.path.abspath(self.specs_dir))
        also = self._also
        for path in paths:
            head, name = os.path.split(path)
            if os.path.normpath(head) == base and _relevant_name(base, name):
                return True
            if also and os.path.relpath(path, base) in also:
                return True
        return False

    def _watch_failed(self, err: Exception) -> None:
        """Retry every heartbeat; warn once per distinct error, not once per retry."""
        message = f"{type(err).__name__}: {err}"
        if message != self._failing:
            log.warning("cannot watch specs dir %s (%s); retrying, the periodic resync "
                        "still applies changes", self.specs_dir, message)
            self._failing = message
        self._stop.wait(self._heartbeat_ms / 1000)

    def _notify(self) -> None:
        try:
            self._on_change()
        except Exception:
            log.exception("spec watcher callback failed")
