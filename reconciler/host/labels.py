"""This host's labels for `placement`: a YAML mapping of strings from `--labels FILE` /
`RECONCILER_LABELS` (default `/etc/reconciler/labels.yaml` when it exists), plus the
automatic `hostname`, `os` and `arch`, which a file may not override (a fleet must be able
to trust that `hostname` is the host's name).

Labels are read when the reconciler starts: a labels file that is not a mapping of strings is
refused with `file:line:column: message` and the command exits 2 before any pass. A running
controller reads the file again when it changes (`LabelsReader`, a stat per pass), so a
label change takes effect at the next pass and may un-place, and so prune, a service (under
the empty-dir guard). A file that turns bad meanwhile is logged and its last good labels stay
in force: a broken labels file never un-places anything.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from reconciler.files import FileVersion, file_version
from reconciler.text import printable

# Every command settles its labels and most have no labels file to read, so what only
# reading one needs (yaml, the spec model) is imported by read_labels, and `typing` (a few
# ms of `reconcile status`) not at all.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from yaml.nodes import Node

DEFAULT_LABELS_FILE = Path("/etc/reconciler/labels.yaml")
LABELS_ENV = "RECONCILER_LABELS"
AUTOMATIC = ("hostname", "os", "arch")
MAX_LABELS_BYTES = 64 * 1024
_STR = "tag:yaml.org,2002:str"


class LabelsError(Exception):
    """A labels file that cannot be used; the text is `file:line:column: message`."""


def automatic_labels() -> dict[str, str]:
    """`hostname` (the node name), `os` (`linux`) and `arch` (`x86_64`, `aarch64`). From
    os.uname(), as platform.system() reads it (without importing platform)."""
    uname = os.uname()
    return {"hostname": uname.nodename, "os": uname.sysname.lower(), "arch": uname.machine}


def labels_file_of(flag: str | None, env: Mapping[str, str] = os.environ) -> Path | None:
    """The flag, else `RECONCILER_LABELS`, else the default file if it exists."""
    given = flag or env.get(LABELS_ENV)
    if given:
        return Path(given)
    return DEFAULT_LABELS_FILE if DEFAULT_LABELS_FILE.is_file() else None


class LabelsReader:
    """The labels of a running controller: `path`'s again whenever the file changes (by its
    stat), else the ones it has. A file that cannot be used keeps the last good labels and
    says why in `error` (logged once per change by the caller)."""

    def __init__(self, path: Path, labels: Mapping[str, str]) -> None:
        self.path = path
        self.error: str | None = None
        self._labels = dict(labels)
        self._key = _version(path)
        self._forgotten = False

    def forget(self) -> None:
        """Read the file at the next `read` even if it looks unchanged (a reload)."""
        self._forgotten = True

    def read(self) -> dict[str, str]:
        key = _version(self.path)
        if key != self._key or self._forgotten:
            self._forgotten = False
            had_file, self._key = self._key is not None, key
            try:
                if key is None and had_file:  # moved away or mid-replace: keep what we have
                    raise LabelsError(f"{printable(str(self.path))}:1:1: labels file is gone")
                self._labels = host_labels(self.path if key is not None else None)
                self.error = None
            except LabelsError as err:
                self.error = str(err)
        return dict(self._labels)


def _version(path: Path) -> FileVersion | None:
    """An unreadable labels file counts as gone (its last good labels stay)."""
    try:
        return file_version(path)
    except OSError:
        return None


def host_labels(path: Path | None) -> dict[str, str]:
    """The labels file's labels (none without a file) plus the automatic ones."""
    labels = read_labels(path) if path is not None else {}
    return {**labels, **automatic_labels()}


def read_labels(path: Path) -> dict[str, str]:
    """A YAML mapping of string keys to string values. Raises LabelsError."""
    import yaml
    from yaml.nodes import MappingNode

    from reconciler.spec.model import (
        LABEL_KEY_PATTERN,
        LABEL_VALUE_PATTERN,
        MAX_LABEL_VALUE,
        MAX_LABELS,
    )

    shown = printable(str(path))
    try:
        raw = _read_regular(path, MAX_LABELS_BYTES + 1)
    except OSError as err:
        raise LabelsError(f"{shown}:1:1: cannot read labels file: {err.strerror or err}") from None
    if len(raw) > MAX_LABELS_BYTES:
        raise LabelsError(f"{shown}:1:1: larger than {MAX_LABELS_BYTES // 1024} KiB")
    try:
        root = yaml.compose(raw.decode("utf-8"), Loader=yaml.SafeLoader)
    except UnicodeDecodeError:
        raise LabelsError(f"{shown}:1:1: not valid UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        raise LabelsError(f"{shown}:{line}:{column}: YAML syntax error: "
                          f"{getattr(err, 'problem', None) or err}") from None
    if root is None:  # more often a file caught half-written than meant: `{}` says "none"
        raise LabelsError(f"{shown}:1:1: empty; write {{}} for no labels")
    if not isinstance(root, MappingNode):
        raise _error(shown, root, "labels must be a mapping of names to strings "
                                  "(e.g. `role: web`)")
    labels: dict[str, str] = {}
    for key, value in root.value:
        name = _string(shown, key, "a label name")
        if not re.search(LABEL_KEY_PATTERN, name):
            raise _error(shown, key, f"invalid label name '{printable(name)}'")
        if name in AUTOMATIC:
            raise _error(shown, key, f"'{name}' is set automatically; remove it")
        if name in labels:
            raise _error(shown, key, f"duplicate label '{printable(name)}'")
        text = _string(shown, value, "a string (quote numbers and booleans)")
        if len(text) > MAX_LABEL_VALUE:
            raise _error(shown, value, f"longer than {MAX_LABEL_VALUE} characters")
        if not re.search(LABEL_VALUE_PATTERN, text):
            raise _error(shown, value, "must not contain control characters")
        labels[name] = text
    if len(labels) > MAX_LABELS:
        raise _error(shown, root, f"more than {MAX_LABELS} labels")
    return labels


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file. Opened non-blocking and checked on the fd: a
    FIFO or a device put where the labels file goes must not hang every command."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _string(shown: str, node: Node, what: str) -> str:
    from yaml.nodes import ScalarNode

    if not isinstance(node, ScalarNode) or node.tag != _STR:
        raise _error(shown, node, f"must be {what}")
    return str(node.value)


def _error(shown: str, node: Node, message: str) -> LabelsError:
    mark = node.start_mark
    return LabelsError(f"{shown}:{mark.line + 1}:{mark.column + 1}: {printable(message)}")
