"""Reading a state dir without writing to it: what `status`, `events`, `logs` and `diff` use.

A reader creates no directory, no file and no `-wal`/`-shm`, chmods nothing and migrates
nothing (see `Store.open_readonly`), so these commands work on a read-only state dir, on one
they may not write, and on one that does not exist yet ("no jobs yet"). `status`, `events` and
`logs` do not refuse a state dir that is not private either: reading cannot make it worse.
`diff` does (`preview.py`), because it shows a plan that a pass would then refuse to run.
Damage is still reported, including a database emptied beside enrollments.
"""

from __future__ import annotations

from reconciler.settings import Settings
from reconciler.state import statedir
from reconciler.state.records import JobRecord
from reconciler.state.store import Store


def open_reader(settings: Settings) -> Store:
    statedir.check_not_emptied(settings)
    return Store.open_readonly(settings.db_path)


def read_jobs(settings: Settings, *, include_removed: bool = False) -> list[JobRecord]:
    with open_reader(settings) as store:
        return store.jobs(include_removed=include_removed)
