"""The store's index of job records (state/jobindex.py): every way of asking agrees with a
walk over all records, through puts, replacements and removals."""

from __future__ import annotations

from dataclasses import replace

from reconciler.state.jobindex import JobIndex
from reconciler.state.records import JobRecord
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
