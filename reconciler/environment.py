"""The environment a service gets: what it inherits from the controller, and nothing more.

No I/O and no globals: `desired` resolves every action's environment with it, inside the
pure core, from what `Settings.inherited_env` captured of the controller's environment.
"""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_INHERITED = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR"})


def inheritable(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of the controller's environment services get: locale, identity and search
    path. Its credentials and the sockets of the shell that started it must not leak into
    services, and a service must not behave differently depending on who restarted the
    controller."""
    return {k: v for k, v in environ.items() if k in _INHERITED or k.startswith("LC_")}


def minimal_env(extra: Mapping[str, str], inherited: Mapping[str, str]) -> dict[str, str]:
    """A service's complete environment: what it inherits (see `inheritable`), a default
    PATH if none, then `extra` (the spec's env and ours), which wins."""
    env = inheritable(inherited)
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(extra)
    return env
