"""The environment a service gets: what it inherits from the controller, and nothing more.

No I/O: `desired` resolves every action's environment with it, inside the pure core.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_INHERITED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR"})


def minimal_env(extra: Mapping[str, str],
                inherited: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The controller's own environment (credentials, sockets of the shell that started it,
    …) must not leak into services, and a service must not behave differently depending on
    who restarted the controller: inherit only locale, identity and search path."""
    env = {k: v for k, v in inherited.items() if k in _INHERITED or k.startswith("LC_")}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra)
    return env
