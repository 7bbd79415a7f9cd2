"""The cycle collector while a command loads what lives as long as its process.

Importing pydantic and building the spec models (`validate`), or the controller's modules
(`--once`, the daemon), makes 40-56k objects that stay: the collector ran ~80 times while
they were made, to find next to nothing (10-20 ms of a command), and walked them again at
every full collection after. Both callers pause it the same way; they differ only in what
they freeze for good (docs/benchmarks.md, "--once, sixth round").
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused(*, freeze: bool) -> Iterator[None]:
    """The collector off while the block runs. Afterwards what the block made joins the
    oldest generation, as if it had survived the collections it skipped: re-enabled
    without that, the collector would run one young collection over all of it at the next
    allocation, costing back what was saved. `freeze`: and stays out of every collection
    for the process's life; only for a process that ends soon and may keep whatever garbage
    the block left (`--once`). As the program only: frozen, a test process's garbage would
    never be collected."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if not freeze:
            gc.unfreeze()
        if was_enabled:
            gc.enable()


def freeze_at_exit() -> None:
    """At exit the interpreter collects cycles over every object still alive (the models,
    pydantic's schemas: ~40k objects): ~20-50 ms of `validate`, a sixth of it, to free memory
    the process is about to give back anyway. Frozen objects are skipped, so freeze them, at
    exit only (atexit runs before those collections): a process that runs `validate` and
    goes on (a test) keeps its collector as it was until then. Registered once, however often
    a process asks."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
