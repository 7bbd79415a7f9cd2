"""The plan a pass would execute now (`reconcile diff`), computed without writing anything.

A `Reconciler` prepares the state dir when it is built (creates it, `run/` and `logs/`), opens
and migrates the writer's database and sweeps stale temp files: `diff` through one left
`state.db`, `logs/` and `run/` behind on a fresh state dir, and failed on a read-only one.
Here a pass's own sequence (`controller.plan_for`: resolve, observe, plan) runs on a
read-only store, after loading the specs with the last good versions the store keeps. No
lock is taken, so enrollments are read in full; spec files are read as they are now, without
waiting for them to settle.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Mapping

from reconciler.controller import plan_for
from reconciler.plan import Plan
from reconciler.settings import Settings
from reconciler.spec.load import LoadResult, last_good_of, load_specs
from reconciler.state import statedir
from reconciler.state.enrollment import read_enrollments
from reconciler.state.reader import open_reader
from reconciler.state.store import check_integrity, damaged, is_damage


def preview(settings: Settings, *, allow_empty: bool = False, rebind: bool = False,
            clock: Callable[[], float] = time.time
            ) -> tuple[LoadResult, Plan, Mapping[str, str]]:
    """What a pass would do (its steps, and in `Plan.waiting` the actions that start in a
    later pass, for the whole diff). Refuses what a pass would refuse (a state dir that is not
    private, an emptied database, another specs dir unless `rebind`), so `diff` never shows
    a plan the pass then cannot run; `rebind` previews the new specs dir without binding."""
    if os.path.lexists(settings.state_dir):
        statedir.check_private(settings.state_dir)
    statedir.check_not_emptied(settings)
    if not rebind:
        statedir.check_binding(settings)
    with open_reader(settings) as store:
        try:
            check_integrity(store.db)  # as the writer does: a truncated file is damage too
        except sqlite3.DatabaseError as err:
            if is_damage(err):
                raise damaged(settings.db_path, str(err)) from None
            raise
        previous = store.spec_records()
        records = store.jobs()
        suspended = store.suspended()
    last_good = last_good_of(previous)
    loaded = load_specs(settings.specs_dir, last_good, settle=0.0,
                        state_dir=settings.state_dir)
    desired, _, planned = plan_for(settings, loaded, records, read_enrollments(settings.run_dir),
                             clock(), allow_empty=allow_empty, suspended=suspended)
    return loaded, planned, desired.unplaced
