"""The store's index of job records (state/jobindex.py): every way of asking agrees with a
walk over all records, through puts, replacements and removals."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.state.jobindex import JobIndex
from reconciler.state.records import JobRecord
from reconciler.state.store import Store
from tests.test_plan import desired, running_job, service


def job(name: str, pid: int | None, job_id: str, **fields: object) -> JobRecord:
    return replace(running_job(desired(service(name)), pid=pid or 1, id=job_id),
                   pid=pid, **fields)


def walk_of(index: JobIndex, services: set[str]) -> list[str]:
    return sorted(j.id for j in index.by_id.values()
                  if j.service in services or j.phase == "stopping")


def test_every_question_matches_a_walk_over_all_records() -> None:
    index = JobIndex([job("a", 11, "j1"), job("b", 12, "j2"), job("c", 13, "j3")])
    index.put(job("b", 12, "j2", phase="stopping"))  # replaced in place
    index.put(job("a", None, "j4", generation="g2"))  # a second job of a's action
    assert sorted(j.id for j in index.of({"a"})) == walk_of(index, {"a"}) == ["j1", "j2", "j4"]
    assert sorted(index.keys()) == [("a", "api"), ("b", "api"), ("c", "api")]
    assert sorted(j.id for j in index.with_key(("a", "api"))) == ["j1", "j4"]
    assert [j.id for j in index.with_pids([12, 13, 99])] == ["j2", "j3"]
    index.put(job("a", None, "j1", phase="removed"))
    index.put(job("b", 14, "j2"))  # no longer stopping, a new main process
    assert sorted(j.id for j in index.of({"a"})) == walk_of(index, {"a"}) == ["j4"]
    assert [j.id for j in index.with_pids([11, 12, 14])] == ["j2"]
    assert sorted(index.keys()) == [("a", "api"), ("b", "api"), ("c", "api")]
    index.put(job("a", None, "j4", phase="removed"))
    assert sorted(index.keys()) == [("b", "api"), ("c", "api")] and len(index) == 2
    assert index.of({"a"}) == []


def test_in_order_is_by_action_then_first_put_and_follows_updates() -> None:
    index = JobIndex([job("b", 1, "j1"), job("a", 2, "j2")])
    index.put(job("a", 3, "j3", generation="g2"))
    assert [j.id for j in index.in_order()] == ["j2", "j3", "j1"]
    index.put(job("a", 4, "j2"))  # an update keeps its place and shows its new fields
    assert [(j.id, j.pid) for j in index.in_order()] == [("j2", 4), ("j3", 3), ("j1", 1)]
    index.put(job("a", 2, "j2", phase="removed"))
    assert [j.id for j in index.in_order()] == ["j3", "j1"]


# --- every question against a walk, after any sequence of writes (hypothesis) -------------

_PHASES = ("running", "stopping", "pending", "removed")
# a job's id names its action for good (no writer moves a job to another action)
_KEYS = {"j1": ("a", "api"), "j2": ("a", "api"), "j3": ("a", "web"), "j4": ("b", "api"),
         "j5": ("c", "api")}
_write = st.tuples(st.sampled_from(sorted(_KEYS)), st.sampled_from(_PHASES),
                   st.sampled_from((None, 11, 12, 13)))


def _record(write: tuple[str, str, int | None]) -> JobRecord:
    job_id, phase, pid = write
    service, action = _KEYS[job_id]
    return replace(job(service, pid, job_id), action=action, phase=phase)  # type: ignore[arg-type]


def _check(index: JobIndex, table: dict[str, JobRecord], wanted: dict[tuple[str, str], int],
           in_order: list[JobRecord] | None = None) -> None:
    """`table`: every record not removed, as last written, in the order first written since
    it was last removed (the store's rowid order, but for a removed job written again: the
    index puts it after its action's other jobs, the table where it was; only a tie in
    `created_at` could tell, see plan's `live`)."""
    live = list(table.values())
    for services in ({"a"}, {"b", "c"}, set()):
        assert sorted(j.id for j in index.of(services)) == sorted(
            j.id for j in live if j.service in services or j.phase == "stopping")
    assert sorted(j.id for j in index.with_pids([11, 13])) == sorted(
        j.id for j in live if j.pid in (11, 13))
    assert set(index.ids()) == {j.id for j in live} and len(index) == len(live)
    assert set(index.keys()) == {j.key for j in live}
    assert index.keys_outside(wanted) == {j.key for j in live} - wanted.keys()
    for key in _KEYS.values():
        assert sorted(j.id for j in index.with_key(key)) == sorted(
            j.id for j in live if j.key == key)
    expected = sorted(live, key=lambda j: j.key)  # stable: first written first
    assert (in_order if in_order is not None else index.in_order()) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(_write, max_size=40), st.lists(st.integers(0, 39), max_size=8))
def test_every_question_matches_a_walk_after_any_writes(
        writes: list[tuple[str, str, int | None]], checks: list[int]) -> None:
    """Puts that add, update in place, move a job to another pid or phase, remove, and
    write a removed job again (a record rebuilt from its enrollment)."""
    index, table = JobIndex(), {}
    wanted = {("a", "api"): 0, ("b", "web"): 1}  # the same mapping each time: memoized
    for n, write in enumerate(writes):
        record = _record(write)
        index.put(record)
        if record.phase == "removed":
            table.pop(record.id, None)
        else:
            table[record.id] = record
        if n in checks:
            _check(index, table, wanted)
    _check(index, table, wanted)
    _check(JobIndex(table.values()), table, dict(wanted))  # as read afresh


class _Boom(Exception):
    pass


# a batch of writes, and how it lands: committed by us, by us in a savepoint that is rolled
# back inside a transaction that commits, or committed by another connection
_batch = st.tuples(st.lists(_write, min_size=1, max_size=4),
                   st.sampled_from(("ours", "savepoint-undone", "other-writer")))


@settings(max_examples=40, deadline=None)
@given(st.lists(_batch, max_size=8))
def test_the_stores_index_answers_what_a_fresh_select_does(
        batches: list[tuple[list[tuple[str, str, int | None]], str]]) -> None:
    """`Store.job_index()` is kept from the store's own writes, dropped on a rollback and
    read again when another connection committed (PRAGMA data_version); after each batch
    it holds exactly the rows a new reader finds."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        with Store.open(path) as store, Store.open(path) as other:
            store.job_index()  # cached from the start
            for writes, how in batches:
                records = [_record(w) for w in writes]
                if how == "ours":
                    store.upsert_jobs(records)
                elif how == "other-writer":
                    other.upsert_jobs(records)
                else:
                    with store.atomic():
                        store.upsert_jobs(records[:1])
                        with contextlib.suppress(_Boom), store.atomic():
                            store.upsert_jobs(records[1:])
                            store.job_index()  # read inside the savepoint, then undone
                            raise _Boom
                with Store.open_readonly(path) as reader:
                    fresh = reader.jobs()
                index = store.job_index()
                assert {j.id: j for j in index.in_order()} == {j.id: j for j in fresh}
                assert [j.key for j in index.in_order()] == [j.key for j in fresh]
                assert sorted(j.id for j in index.of({"a"})) == sorted(
                    j.id for j in fresh if j.service == "a" or j.phase == "stopping")
                assert sorted(j.id for j in index.with_pids([11, 12])) == sorted(
                    j.id for j in fresh if j.pid in (11, 12))
