"""Which specs dir and state dir a command uses, as plain strings: the flag, else the
environment (`RECONCILER_SPECS`, `RECONCILER_STATE_DIR`), else the default, and the guard
against the real state dir in tests. `settings.py` builds its `Path`s from these; `reconcile
status` uses them directly, because `Settings` (a dataclass of `Path`s) costs more to import
than the command's own work (issue 13: dataclasses with inspect, pathlib with urllib).
"""

import os

TYPE_CHECKING = False  # not typing's (issue 13)
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_SPECS_DIR = "specs"  # relative to the working directory, like `./Makefile`
REFUSE_DEFAULT_STATE_DIR = "RECONCILER_REFUSE_DEFAULT_STATE_DIR"
DB_FILE, RUN_DIR, LOGS_DIR, DAEMON_LOCK_FILE = "state.db", "run", "logs", "daemon.lock"


class SettingsError(Exception):
    """A configuration the reconciler refuses to run with."""


def default_state_dir(env: "Mapping[str, str]" = os.environ) -> str:
    if os.geteuid() == 0:
        return "/var/lib/reconciler"
    xdg = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "reconciler")


def specs_dir_text(specs: "str | os.PathLike[str] | None" = None,
                   env: "Mapping[str, str]" = os.environ) -> str:
    """The specs dir: the flag, else `RECONCILER_SPECS`, else `./specs`."""
    return os.fspath(specs or env.get("RECONCILER_SPECS") or DEFAULT_SPECS_DIR)


def state_dir_text(state_dir: "str | os.PathLike[str] | None" = None,
                   env: "Mapping[str, str]" = os.environ) -> str:
    """The state dir: the flag, else `RECONCILER_STATE_DIR`, else the per-user default."""
    return os.fspath(state_dir or env.get("RECONCILER_STATE_DIR") or default_state_dir(env))


MAX_REVISION_LABEL = 200  # it goes on every event and job row


def revision_label_of(revision: "str | None" = None,
                      env: "Mapping[str, str]" = os.environ) -> "str | None":
    """The revision label: the flag, else `RECONCILER_REVISION`, else None (ask git). A label
    is shown to operators and stored on every event: short, and printable."""
    label = revision or env.get("RECONCILER_REVISION") or None
    if label is not None and (len(label) > MAX_REVISION_LABEL
                              or any(not c.isprintable() for c in label)):
        raise SettingsError(f"revision label: at most {MAX_REVISION_LABEL} printable "
                            "characters (no control characters)")
    return label


def absolute(path: str) -> str:
    """`str(Path(path).absolute())` without pathlib: made absolute against the working
    directory, `.` parts and repeated slashes dropped, `..` kept (as pathlib does: it is not
    lexically resolvable through a symlink). tests/test_dirs.py holds it to pathlib."""
    if not path.startswith("/"):
        path = os.getcwd() + "/" + path
    lead = "//" if path.startswith("//") and not path.startswith("///") else "/"
    return lead + "/".join(p for p in path.split("/") if p and p != ".")


def check_not_default(state_dir: str, env: "Mapping[str, str]" = os.environ) -> None:
    """With `RECONCILER_REFUSE_DEFAULT_STATE_DIR=1` (the test suite sets it), refuse the real
    default state dir (settings.py says why)."""
    if env.get(REFUSE_DEFAULT_STATE_DIR) == "1" and _same_path(state_dir,
                                                                default_state_dir()):
        raise SettingsError(
            f"refusing the real state dir {state_dir} ({REFUSE_DEFAULT_STATE_DIR}=1, "
            "set by the test suite); give the test its own state dir")


def _same_path(a: str, b: str) -> bool:
    return os.path.realpath(absolute(a)) == os.path.realpath(absolute(b))
