"""The job records a writer holds between its passes, indexed the ways a keyed pass asks.

A keyed pass (docs/architecture.md, "Keyed passes") plans a few services. Reading, sorting
or even walking every job record for that made a respawn cost grow with the number of jobs
(docs/benchmarks.md, "Respawn at N=2000"). The store keeps its cache of non-removed records
in a `JobIndex`, so a keyed pass gets the records of its services, the jobs being stopped,
the job ids and the action keys without a walk over all of them. Pure data: the store
(state/store.py) decides when the index is current.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, KeysView, Mapping

from reconciler.state.records import JobRecord


class JobIndex:
    """Non-removed job records by id (in the order first put: the store's rowid order), by
    service, by action key (how many jobs each), by main pid, and those being stopped."""

    def __init__(self, records: Iterable[JobRecord] = ()) -> None:
        self.by_id: dict[str, JobRecord] = {}
        self._by_service: dict[str, dict[str, JobRecord]] = {}
        self._key_counts: dict[tuple[str, str], int] = {}
        self._stopping: dict[str, JobRecord] = {}
        self._by_pid: dict[int, dict[str, JobRecord]] = {}
        self._order: list[str] | None = None  # ids by (service, action), then first put
        self._outside: tuple[Mapping[tuple[str, str], object], set[tuple[str, str]]] | None \
            = None  # `keys_outside`'s last answer, for that very mapping
        for record in records:
            self.put(record)

    def put(self, job: JobRecord) -> None:
        """A record as written: replaces the job's previous one, a removed job leaves."""
        old = self.by_id.get(job.id)
        if job.phase == "removed":
            if old is not None:
                self._forget(old)
            return
        if old is not None and old.key != job.key:  # not done by any writer; kept exact anyway
            self._forget(old)
            old = None
        if old is None:
            self._order = None
        elif old.pid is not None:
            self._unlink_pid(old)
        self.by_id[job.id] = job
        if job.pid is not None:
            self._by_pid.setdefault(job.pid, {})[job.id] = job
        self._by_service.setdefault(job.service, {})[job.id] = job
        if old is None:
            count = self._key_counts.get(job.key, 0)
            self._key_counts[job.key] = count + 1
            if not count:
                self._outside = None
        if job.phase == "stopping":
            self._stopping[job.id] = job
        else:
            self._stopping.pop(job.id, None)

    def _forget(self, job: JobRecord) -> None:
        self._order = None
        del self.by_id[job.id]
        jobs = self._by_service[job.service]
        del jobs[job.id]
        if not jobs:
            del self._by_service[job.service]
        left = self._key_counts[job.key] - 1
        if left:
            self._key_counts[job.key] = left
        else:
            del self._key_counts[job.key]
            self._outside = None
        self._stopping.pop(job.id, None)
        if job.pid is not None:
            self._unlink_pid(job)

    def _unlink_pid(self, job: JobRecord) -> None:
        assert job.pid is not None
        jobs = self._by_pid[job.pid]
        del jobs[job.id]
        if not jobs:
            del self._by_pid[job.pid]

    def in_order(self) -> list[JobRecord]:
        """By service and action, in the order first put within an action (sorted once,
        until a job comes or goes: a pass mostly updates jobs in place)."""
        if self._order is None:
            ordered = sorted(self.by_id.values(), key=lambda j: j.key)  # stable
            self._order = [j.id for j in ordered]
            return ordered
        return [self.by_id[job_id] for job_id in self._order]

    def of(self, services: Collection[str]) -> list[JobRecord]:
        """The jobs of `services` and every job being stopped, of any service (their
        processes are no conflicts for what starts: plan's `being_stopped`)."""
        found = [job for service in services for job in self._by_service.get(service, {})
                 .values()]
        found += [job for job in self._stopping.values() if job.service not in services]
        return found

    def with_pids(self, pids: Iterable[int]) -> list[JobRecord]:
        """The jobs whose main process has one of these pids (as recorded: the caller
        compares identities)."""
        return [job for pid in pids for job in self._by_pid.get(pid, {}).values()]

    def ids(self) -> KeysView[str]:
        return self.by_id.keys()

    def keys(self) -> KeysView[tuple[str, str]]:
        """The (service, action) keys that have a job."""
        return self._key_counts.keys()

    def keys_outside(self, wanted: Mapping[tuple[str, str], object]) -> set[tuple[str, str]]:
        """The action keys that have a job but are not in `wanted` (the desired actions),
        remembered until a key comes or goes or `wanted` is another mapping: every keyed
        pass asks, and the answer changes with the specs."""
        if self._outside is None or self._outside[0] is not wanted:
            self._outside = (wanted, self._key_counts.keys() - wanted.keys())
        return self._outside[1]

    def with_key(self, key: tuple[str, str]) -> list[JobRecord]:
        return [j for j in self._by_service.get(key[0], {}).values() if j.key == key]

    def __len__(self) -> int:
        return len(self.by_id)
