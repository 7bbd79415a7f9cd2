"""Instant exit detection for every managed process, ours or adopted.

SIGCHLD and waitpid only work for our own children, and only the parent may reap; processes
adopted from an earlier controller run are not our children at all. A pidfd works for both:
it becomes readable when the process exits (a zombie counts as exited), and reading its
readiness never reaps, so `Children.reap()` still gets the exit code exactly once.

Each pidfd is opened first and the identity verified second (host/pidfd.py), so no stranger
that got a recycled pid is ever watched in place of the process we meant.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import threading
from collections.abc import Callable, Iterable

from reconciler.host.identity import identity_of
from reconciler.host.pidfd import SYSTEM, NoPidfd, Pidfds
from reconciler.identity import Identity
from reconciler.timing import EXIT_WATCH_POLL_SECONDS, THREAD_JOIN_SECONDS

log = logging.getLogger(__name__)



class ExitWatcher:
    """Wakes the controller the moment a watched process exits, whether it is our own child or
    a process adopted from an earlier controller run: a pidfd per process, in a selector thread.
    Falls back to polling identity_of() every poll_interval where there is no pidfd.

    on_exit(identity) runs on the watcher's thread, at most once per identity while the
    controller keeps syncing it (an exited identity never comes back, so repeating it would
    only make a controller that still lists it spin). It should only kick the controller.
    """

    def __init__(self, on_exit: Callable[[Identity], None], *,
                 poll_interval: float = EXIT_WATCH_POLL_SECONDS, pidfds: Pidfds = SYSTEM) -> None:
        self._on_exit = on_exit
        self._pidfds = pidfds
        self._poll_interval = poll_interval
        self._lock = threading.Lock()
        # Shared under _lock. The pidfds are shared with the other holders (host/pidfd.py) and
        # released only by the thread (or once it is gone), after it unregistered them, so an
        # fd number can never be reused while the selector may still hold it.
        self._watched: dict[Identity, int | None] = {}  # None: no pidfd, polled
        self._closing: list[tuple[Identity, int]] = []  # dropped identities, fds to release
        self._pending: list[tuple[Identity, int]] = []  # added, not registered yet
        self._polled: set[Identity] = set()  # watched without a pidfd
        self._exited: list[Identity] = []  # found gone by sync(), to report from the thread
        self._reported: set[Identity] = set()
        self._stopping = False
        self._stop_event = threading.Event()  # only to cut short a retry pause
        self._closed = False
        # Owned by the thread.
        self._selector = selectors.DefaultSelector()
        self._registered: set[int] = set()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wake_fd, selectors.EVENT_READ)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None or self._closed:
            raise RuntimeError("ExitWatcher already started or stopped")
        self._thread = threading.Thread(target=self._run, name="exit-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Prompt: the thread blocks only in select(), which the wake-up interrupts."""
        with self._lock:
            self._stopping = True
            self._wake()
        self._stop_event.set()
        thread = self._thread
        if thread is None:
            self._close_all()
        elif thread is not threading.current_thread():
            thread.join(THREAD_JOIN_SECONDS)
            if thread.is_alive():
                log.warning("exit watcher did not stop within %.0fs", THREAD_JOIN_SECONDS)

    def sync(self, identities: Iterable[Identity]) -> None:
        """Watch exactly these from now on. Already gone (or recycled) ones are reported
        promptly instead of watched, so a death between observation and sync is not lost."""
        wanted = set(identities)
        with self._lock:
            if self._stopping:
                return
            self._reported &= wanted  # forget what the controller no longer mentions
            changed = False
            for identity in self._watched.keys() - wanted:
                fd = self._watched.pop(identity)
                self._polled.discard(identity)
                if fd is not None:
                    self._closing.append((identity, fd))
                changed = True
            for identity in wanted - self._watched.keys() - self._reported:
                self._add(identity)
                changed = True
            if changed:
                self._wake()

    def update(self, added: Iterable[Identity], removed: Iterable[Identity]) -> None:
        """`sync` for a few changes (what a keyed pass changed): from now on watch the
        last synced identities without `removed`, with `added`; no walk over the rest."""
        with self._lock:
            if self._stopping:
                return
            changed = False
            for identity in removed:
                self._reported.discard(identity)
                fd = self._watched.pop(identity, -1)
                self._polled.discard(identity)
                if fd != -1:
                    if fd is not None:
                        self._closing.append((identity, fd))
                    changed = True
            for identity in added:
                if identity not in self._watched and identity not in self._reported:
                    self._add(identity)
                    changed = True
            if changed:
                self._wake()

    def watching(self) -> frozenset[Identity]:
        with self._lock:
            return frozenset(self._watched)

    # --- helpers called under _lock -----------------------------------------------------

    def _add(self, identity: Identity) -> None:
        try:
            fd = self._pidfds.acquire(identity)
            alive = fd is not None
        except NoPidfd as err:  # no pidfds, or none now: poll this one instead
            log.debug("no pidfd for %s (%s); polling it instead", identity, err)
            fd, alive = None, identity_of(identity.pid) == identity
        if alive:
            self._watched[identity] = fd
            if fd is None:
                self._polled.add(identity)
            else:
                self._pending.append((identity, fd))
            return
        self._reported.add(identity)
        self._exited.append(identity)

    def _wake(self) -> None:
        if not self._closed:
            os.eventfd_write(self._wake_fd, 1)

    # --- the watcher thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    if not self._step():
                        return
                except Exception:  # never lose exit detection to one bad round
                    log.exception("exit watcher round failed; retrying")
                    self._stop_event.wait(self._poll_interval)
        finally:
            self._close_all()

    def _step(self) -> bool:
        """One round: apply syncs, report, wait. False once stopping."""
        with self._lock:
            self._apply()
            exited, self._exited = self._exited, []
            stopping = self._stopping
            polling = bool(self._polled)
        for identity in exited:
            self._report(identity)
        if stopping:
            return False
        # No timeout unless something must be polled: nothing to do means no wake-ups.
        for key, _ in self._selector.select(self._poll_interval if polling else None):
            if key.fd == self._wake_fd:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake_fd)
            else:
                self._ready(key.fd, key.data)
        if polling:
            self._poll()
        return True

    def _apply(self) -> None:
        """Release the dropped fds, then register the added ones that are still watched
        (what changed since the last round, not every watched fd: a round follows every
        exit and every sync). A dropped identity that was added again meanwhile holds the
        same shared fd twice (once in each list): the release comes first, so its
        registration is renewed, not lost."""
        for identity, fd in self._closing:
            if fd in self._registered:
                self._selector.unregister(fd)
                self._registered.discard(fd)
            self._pidfds.release(identity)
        self._closing.clear()
        for identity, fd in self._pending:
            if self._watched.get(identity) == fd and fd not in self._registered:
                self._selector.register(fd, selectors.EVENT_READ, identity)
                self._registered.add(fd)
        self._pending.clear()

    def _ready(self, fd: int, identity: Identity) -> None:
        with self._lock:
            if self._watched.get(identity) != fd:
                return  # dropped by a sync meanwhile: _apply closes it next round
            del self._watched[identity]
            self._reported.add(identity)
            self._selector.unregister(fd)
            self._registered.discard(fd)
            self._pidfds.release(identity)
        self._report(identity)

    def _poll(self) -> None:
        with self._lock:
            polled = list(self._polled)
        gone = [i for i in polled if identity_of(i.pid) != i]  # /proc reads outside the lock
        reported = []
        with self._lock:
            for identity in gone:
                if identity in self._polled:
                    self._polled.discard(identity)
                    del self._watched[identity]
                    self._reported.add(identity)
                    reported.append(identity)
        for identity in reported:
            self._report(identity)

    def _report(self, identity: Identity) -> None:
        log.debug("%s exited", identity)
        try:
            self._on_exit(identity)
        except Exception:
            log.exception("exit callback failed for %s", identity)

    def _close_all(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            held = [(i, fd) for i, fd in self._watched.items() if fd is not None]
            held += self._closing
            self._watched.clear()
            self._closing.clear()
            self._pending.clear()
            self._polled.clear()
            self._registered.clear()
            self._selector.close()
            for identity, _fd in held:
                self._pidfds.release(identity)
            os.close(self._wake_fd)
