"""pydantic without its plugin loader: the spec models are built with no pydantic plugins.

pydantic looks for plugins (entry points in the `pydantic` group) when it builds the first
model class: that imports `importlib.metadata`, which imports `email`, `zipfile`, `csv` and
more, and reads the metadata of every installed distribution. It does so even when
`PYDANTIC_DISABLE_PLUGINS` is set (the variable is read after the import). On the reference
machine that was 25–40 ms of the ~300 ms `reconcile validate` took (issue 13), and ~2 MB of
every process that loads specs, for nothing we use: plugins only observe validation (tracing
and the like), none is a dependency of ours, and a supervisor, often run as root, should not
run whatever code an installed package registers in that group anyway.

`disable()` puts a loader that finds no plugins where pydantic imports its own, before any
model is built (`spec/model.py` calls it first). Validation itself is unchanged: without
plugins pydantic builds the plain `SchemaValidator` it builds when none is installed.
"""

from __future__ import annotations

import sys
from types import ModuleType

LOADER = "pydantic.plugin._loader"  # what pydantic/plugin/_schema_validator.py imports


def _no_plugins() -> tuple[()]:
    return ()


def disable() -> None:
    """Make pydantic find no plugins, without importing `importlib.metadata`. A no-op when
    pydantic already loaded its own loader (a model was built before us)."""
    if LOADER in sys.modules:
        return
    loader = ModuleType(LOADER, "No pydantic plugins (reconciler.spec.noplugins).")
    loader.__dict__["get_plugins"] = _no_plugins  # what _schema_validator.py imports
    sys.modules[LOADER] = loader
