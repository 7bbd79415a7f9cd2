"""Spec files → validated services, every problem reported as `file:line:column: message`.

We compose YAML node trees and build the plain data ourselves instead of calling
`yaml.safe_load`, because only the nodes know where things are: each pydantic error `loc` is
walked back through the tree to the key or value it is about. The same walk catches duplicate
keys (PyYAML would silently keep the last one) and refuses any tag that is not plain data.

A broken file never takes running services down: its last good content (kept by the caller)
stays in force and the errors are reported next to it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import pwd
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, get_args

import yaml
from pydantic import BaseModel, ValidationError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from reconciler.host.limits import unraisable_hard_limits
from reconciler.redact import is_secret_name
from reconciler.spec.model import (
    AFTER_PATTERN,
    ENV_NAME_PATTERN,
    HOST_GLOB_PATTERN,
    LABEL_KEY_PATTERN,
    LABEL_VALUE_PATTERN,
    MAX_ENV,
    MAX_ENV_NAME,
    MAX_TEXT,
    NAME_PATTERN,
    UNION_TAGS,
    Service,
    after_targets,
    did_you_mean,
)
from reconciler.text import printable

if TYPE_CHECKING:  # types only: validate need not build the records' classes (issue 13)
    from reconciler.state.records import EnvFiles, SpecRecord

_WITH_LIBYAML = bool(getattr(yaml, "__with_libyaml__", False))
_LOADER: Any = yaml.CSafeLoader if _WITH_LIBYAML else yaml.SafeLoader


class _ComposingLoader(_LOADER):  # type: ignore[misc]  # _LOADER is Any: the C class or not
    """`_LOADER` with its tag resolution remembered. The composer asks for the tag of every
    plain scalar, which runs the implicit resolvers' regexes in Python each time (a large
    share of the time libyaml takes to compose 200 services, issue 13), while specs repeat
    the same few values (`name`, `true`, `process`...). The safe loaders have no path resolvers, so
    a scalar's tag is a function of its text and style only: remembering it is exact."""

    _tags: ClassVar[dict[tuple[str, tuple[bool, bool]], str]] = {}

    def resolve(self, kind: type[Node], value: Any, implicit: Any) -> str:
        if kind is not ScalarNode or len(value) > _REMEMBERED_LENGTH:
            return str(super().resolve(kind, value, implicit))
        key = (value, (bool(implicit[0]), bool(implicit[1])))
        tag = self._tags.get(key)
        if tag is None:
            tag = str(super().resolve(kind, value, implicit))
            if len(self._tags) >= _REMEMBERED_TAGS:
                self._tags.clear()
            self._tags[key] = tag
        return tag


_REMEMBERED_LENGTH, _REMEMBERED_TAGS = 64, 4096  # short values, a bounded number of them

SPEC_SUFFIXES = (".yaml", ".yml")
MAX_SPEC_BYTES = 1024 * 1024  # a spec is a page of YAML; anything near this is a mistake
# libyaml's composer recurses in C and crashes the interpreter past ~30k levels; the event
# parser does not, so suspicious files are measured with it before they are composed.
MAX_DEPTH = 1000
_DEPTH_SCAN_THRESHOLD = 2000  # fewer "[{-:?" characters than this cannot nest that deep
_INDICATORS = "[{-:?"
_DOCUMENT_MARKER = re.compile(r"^(?:---|\.\.\.)(?=[ \t\r\n]|\Z)", re.MULTILINE)

_Y = "tag:yaml.org,2002:"
_MAP, _SEQ, _MERGE, _NULL = f"{_Y}map", f"{_Y}seq", f"{_Y}merge", f"{_Y}null"
_SCALAR_TAGS = frozenset(f"{_Y}{t}" for t in ("null", "bool", "int", "float", "str", "timestamp"))
_READ_AS = {f"{_Y}bool": "a boolean", f"{_Y}int": "a number", f"{_Y}float": "a number",
            f"{_Y}timestamp": "a date", _NULL: "null"}
# Errors where "you wrote a bare yes/0755, quote it" is the right advice.
_HINTED_ERRORS = frozenset({"string_type", "literal_error", "text_type", "command_type"})
_NO_LAST_GOOD: Mapping[str, str] = MappingProxyType({})
_SURROGATE = re.compile("[\ud800-\udfff]")
NO_SERVICES = "has no services: delete the file to remove them"


@dataclass(frozen=True, order=True)
class SpecError:
    """One problem in one spec file, with the place an editor can jump to. Its text is
    `file:line:column: message`, the format compilers use."""

    file: str
    line: int  # 1-based
    column: int  # 1-based
    message: str

    def __post_init__(self) -> None:
        # Names, values and file names come from untrusted files: a newline in one must not
        # forge a second error or log line, an escape sequence must not reach a terminal.
        object.__setattr__(self, "file", printable(self.file))
        object.__setattr__(self, "message", printable(self.message))

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class SpecErrors(Exception):
    """Raised by `parse_text`; carries every problem found, not just the first."""

    def __init__(self, errors: list[SpecError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = list(errors)


@dataclass(frozen=True)
class FileOutcome:
    """What became of one spec file in this load: good, broken (its last good content in
    force), or not yet settled."""

    name: str  # relative to the specs dir
    content: str | None  # current content, only if it is good
    hash: str | None  # sha256 of `content`
    errors: tuple[SpecError, ...]
    used_last_good: bool  # the file is broken or unsettled and its last good content is in force
    unsettled: bool = False  # changed less than `settle` ago: not read this time
    env_files: EnvFiles = ()  # with good `content`: what its env files held, to keep with it


@dataclass(frozen=True)
class LoadResult:
    """The services of every good file (and the last good version of every broken one),
    with every error found, so one bad file never takes the others' services down."""

    services: dict[str, Service]
    sources: dict[str, str]  # service name -> file name
    files: dict[str, FileOutcome]
    errors: tuple[SpecError, ...]
    dir_error: str | None
    # Wall-clock time at which the earliest unsettled file will have been quiet long enough
    # to be read: the caller should run a pass then. None when every file was read.
    unsettled_until: float | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and self.dir_error is None


# --- the directory --------------------------------------------------------------------------

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
# A change time further in the future than this is clock skew (NFS, `touch -d`), not a write
# in progress: waiting for it to settle could take days, so such a file is read at once.
_MAX_SKEW = 1.0


@dataclass(frozen=True)
class _Dir:
    """The specs dir as opened once: every file is opened relative to `fd`, so swapping the
    dir (or a path component above it) while loading cannot mix two directories."""

    path: Path  # as given, for messages
    fd: int
    real: str  # what `fd` is, for the "symlink leads outside" rule
    settle: float
    now: float
    state_dir: str | None


class LastGood(NamedTuple):
    """A file's last good version: its text, and what its env files held then (so the
    version stays in force as it was while an env file is missing or broken)."""

    content: str
    env_files: EnvFiles = ()


def last_good_of(records: Mapping[str, SpecRecord]) -> dict[str, LastGood]:
    """What the loader keeps in force for a broken file: each record's last good version,
    with the env file values it was good with."""
    return {name: LastGood(r.content, r.env_files) for name, r in records.items()
            if r.content is not None}


def load_specs(specs_dir: Path, last_good: Mapping[str, str | LastGood] = _NO_LAST_GOOD, *,
               settle: float = 0.0, state_dir: Path | str | None = None,
               now: float | None = None) -> LoadResult:
    """Every spec file in `specs_dir`; never raises.

    `settle`: a file changed less than this many seconds ago is not read yet (its last good
    version stays in force), so a half-written file is never taken for the whole of it.
    `state_dir`: when given, paths into it (outside `run/`) are validation errors.
    """
    specs_dir = Path(specs_dir)
    try:
        fd = os.open(specs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        return LoadResult({}, {}, {}, (), _dir_error(specs_dir, err))
    try:
        refused = _unsafe_dir_reason(os.fstat(fd), specs_dir)
        if refused is not None:
            return LoadResult({}, {}, {}, (), refused)
        where = _Dir(specs_dir, fd, _fd_path(fd, specs_dir), max(settle, 0.0),
                     time.time() if now is None else now,
                     None if state_dir is None else os.path.abspath(state_dir))
        return _load_dir(where, last_good)
    except OSError as err:
        return LoadResult({}, {}, {}, (), _dir_error(specs_dir, err))
    finally:
        os.close(fd)


def _load_dir(where: _Dir, last_good: Mapping[str, str | LastGood]) -> LoadResult:
    names = sorted(name for name in os.listdir(where.fd) if is_spec_name(name))
    claimed: dict[str, str] = {}
    loads: list[_FileLoad] = []
    for name in names:
        try:
            previous = last_good.get(name)
            if isinstance(previous, str):
                previous = LastGood(previous)
            load = _load_file(where, name, previous, claimed)
        except Exception as exc:  # one odd file must not stop the others from loading
            error = SpecError(str(where.path / name), 1, 1, f"cannot load: {exc!r}")
            load = _FileLoad(name, str(where.path / name),
                             FileOutcome(name, None, None, (error,), False), [], None, [], None)
        loads.append(load)
        for service in load.chosen:
            claimed[service.name] = name
    _check_references(where, loads)
    services: dict[str, Service] = {}
    sources: dict[str, str] = {}
    for load in loads:
        for service in load.chosen:
            services[service.name] = service
            sources[service.name] = load.name
    files = {load.name: load.outcome for load in loads}
    waits = [load.wait for load in loads if load.wait is not None]
    errors = tuple(sorted(e for outcome in files.values() for e in outcome.errors))
    return LoadResult(services, sources, files, errors, None, min(waits, default=None))


def is_spec_name(name: str) -> bool:
    """`*.yaml`/`*.yml`, not hidden: editor temp files and Kubernetes' `..data` never count."""
    return name.endswith(SPEC_SUFFIXES) and not name.startswith(".")


def _dir_error(specs_dir: Path, err: OSError) -> str:
    shown = printable(str(specs_dir))
    if err.errno == errno.ENOENT:
        return f"specs dir {shown} does not exist"
    if err.errno == errno.ENOTDIR:
        return f"specs dir {shown} is not a directory"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read specs dir {shown}: permission denied"
    return f"cannot read specs dir {shown}: {err.strerror or err}"


def _fd_path(fd: int, fallback: Path) -> str:
    """The directory `fd` really is (its path now), without trusting the name it was opened by."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)


@dataclass
class _FileLoad:
    """One file while the directory is loaded: what it offers before the checks across
    files (`after:` targets, cycles) may still refuse its current content."""

    name: str
    display: str
    outcome: FileOutcome
    chosen: list[Service]
    wait: float | None
    docs: list[_Doc]  # every document of the current content, broken ones too
    previous: LastGood | None

    @property
    def fresh(self) -> bool:
        """Its current content is in force (not the last good one)."""
        return self.outcome.content is not None


def _load_file(where: _Dir, name: str, previous: LastGood | None,
               claimed: Mapping[str, str]) -> _FileLoad:
    """One file's services: its current content if that is wholly good, else its last good;
    also, when the file is still changing, when to look again."""
    display = str(where.path / name)
    content, errors, settles_at = _read_spec_file(where, name)
    if settles_at is not None:
        fallback = _last_good_services(where, previous, display, claimed)
        outcome = FileOutcome(name, None, None, (), fallback is not None, unsettled=True)
        return _FileLoad(name, display, outcome, fallback or [], settles_at, [], previous)
    parsed = _Parsed()
    if content is not None:
        parsed = _parse(content, display, where.state_dir, host_hard_limits())
        errors = parsed.errors or _claimed_elsewhere(parsed.found, claimed, display)
    if not errors and content is not None:
        chosen, errors, env_files = _with_env_files(where, parsed.found, display, strict=True)
        if not errors:
            digest = hashlib.sha256(content.encode()).hexdigest()
            outcome = FileOutcome(name, content, digest, (), False, env_files=env_files)
            return _FileLoad(name, display, outcome, chosen, None, parsed.docs, previous)
    fallback = _last_good_services(where, previous, display, claimed)
    outcome = FileOutcome(name, None, None, tuple(sorted(errors)), fallback is not None)
    return _FileLoad(name, display, outcome, fallback or [], None, parsed.docs, previous)


def _last_good_services(where: _Dir, previous: LastGood | None, display: str,
                        claimed: Mapping[str, str]) -> list[Service] | None:
    """The last good content is re-checked: another file may have claimed a name since.
    Its `after:` targets are not: a running service never stops because of another file."""
    if previous is None:
        return None
    parsed = _parse(previous.content, display, where.state_dir, host_hard_limits())
    if parsed.errors or _claimed_elsewhere(parsed.found, claimed, display):
        return None
    return _with_env_files(where, parsed.found, display, strict=False,
                           fallback=dict(previous.env_files))[0]


def _reject(where: _Dir, load: _FileLoad, loads: list[_FileLoad],
            errors: list[SpecError]) -> None:
    """A problem only the whole directory shows: the file's current content is refused and
    its last good version stays in force, as for any other error."""
    merged = tuple(sorted(set(load.outcome.errors) | set(errors)))
    if not load.fresh:
        load.outcome = replace(load.outcome, errors=merged)
        return
    others = {s.name: other.name for other in loads if other is not load for s in other.chosen}
    fallback = _last_good_services(where, load.previous, load.display, others)
    load.outcome = FileOutcome(load.name, None, None, merged, fallback is not None)
    load.chosen = fallback or []


def _claimed_elsewhere(found: list[_Found], claimed: Mapping[str, str],
                       display: str) -> list[SpecError]:
    return [SpecError(display, f.line, f.column,
                      f"service '{f.service.name}' is already defined in "
                      f"{claimed[f.service.name]}")
            for f in found if f.service.name in claimed]


def _read_spec_file(where: _Dir, name: str
                    ) -> tuple[str | None, list[SpecError], float | None]:
    """(content, errors, settles_at): the file's text, read from the one descriptor every
    safety check was made on; or, while it is still changing, when it will have settled."""
    display = str(where.path / name)
    fd, reason = _open_spec(where, name)
    if fd is None:
        return None, [_refusal(display, reason or "cannot open it")], None
    try:
        info = os.fstat(fd)
        changed = max(info.st_mtime, info.st_ctime)
        if where.settle and where.now - where.settle < changed <= where.now + _MAX_SKEW:
            return None, [], changed + where.settle
        reason = _unsafe_reason(info, display)
        if reason is not None:
            return None, [_refusal(display, reason)], None
        raw = _read_fd(fd)
    except OSError as err:
        return None, [SpecError(display, 1, 1, f"cannot read {display}: "
                                               f"{err.strerror or err}")], None
    finally:
        os.close(fd)
    if len(raw) > MAX_SPEC_BYTES:
        return None, [_refusal(display, f"larger than {MAX_SPEC_BYTES // 1024} KiB")], None
    try:
        return raw.decode("utf-8"), [], None
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        return None, [SpecError(display, 1, 1, f"not valid UTF-8 (bad byte at line {line}, "
                                               f"column {column}); save the file as UTF-8")], None


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_SPEC_BYTES:
        chunk = os.read(fd, MAX_SPEC_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _refusal(display: str, reason: str) -> SpecError:
    return SpecError(display, 1, 1, f"refusing {display}: {reason}")


# --- file safety ----------------------------------------------------------------------------

def _open_spec(where: _Dir, name: str) -> tuple[int | None, str | None]:
    """A descriptor for the spec `name`, opened relative to the specs dir's descriptor.

    A plain name is opened with O_NOFOLLOW, so it cannot be swapped for a symlink between
    any look and the open. A symlink (Kubernetes' `name -> ..data/name`, or a link to a
    file beside it) is resolved once, must stay inside the specs dir, and its target is
    then opened with O_NOFOLLOW the same way. The `lstat`s here only avoid opening devices
    and give precise messages; what is trusted is decided by `fstat` on the descriptor.
    """
    try:
        info = os.stat(name, dir_fd=where.fd, follow_symlinks=False)
    except OSError as err:
        return None, f"cannot stat it ({err.strerror or err})"
    target = name
    if stat.S_ISLNK(info.st_mode):
        resolved = os.path.realpath(os.path.join(where.real, name))
        if not Path(resolved).is_relative_to(where.real):
            return None, (f"symlink to {resolved}, outside the specs dir; "
                          f"copy the file into the specs dir instead")
        target = os.path.relpath(resolved, where.real)
        try:
            info = os.stat(target, dir_fd=where.fd, follow_symlinks=False)
        except OSError as err:
            return None, f"broken symlink ({err.strerror or err}); fix or remove it"
    if not stat.S_ISREG(info.st_mode):
        return None, f"not a regular file ({_file_kind(info.st_mode)}); rename or remove it"
    try:
        return os.open(target, _OPEN_FLAGS, dir_fd=where.fd), None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None, "it was replaced by a symlink while being read; it is read again soon"
        return None, f"cannot open it ({err.strerror or err})"


def _unsafe_reason(info: os.stat_result, display: str) -> str | None:
    """Facts about the descriptor we read: a regular file, written only by root or us."""
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file ({_file_kind(info.st_mode)}); rename or remove it"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        return f"writable by group or others (mode {mode:04o}); run: chmod go-w {display}"
    me = os.geteuid()
    if info.st_uid not in (0, me):
        return (f"owned by {_user(info.st_uid)}, not by root or {_user(me)}; "
                f"run: chown {_user(me)} {display}")
    return None


def _unsafe_dir_reason(info: os.stat_result, specs_dir: Path) -> str | None:
    """Whoever can write the specs dir can replace any spec in it (rename over it, flip a
    symlink): the same rules as for a spec file."""
    shown = printable(str(specs_dir))
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        return (f"refusing specs dir {shown}: writable by group or others (mode {mode:04o}), "
                f"so others could run commands through it; run: chmod go-w {shown}")
    me = os.geteuid()
    if info.st_uid not in (0, me):
        return (f"refusing specs dir {shown}: owned by {_user(info.st_uid)}, not by root or "
                f"{_user(me)}; run: chown {_user(me)} {shown}")
    return None


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "a directory", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket",
             stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
             stat.S_ISLNK: "a symlink"}
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


# --- one file's text ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    """A list entry of one action (`after`, `env_file`) and where it is written."""

    action_index: int
    action: str
    position: int
    value: str
    line: int
    column: int

    def path(self, key: str) -> str:
        return f"actions[{self.action_index}].{key}[{self.position}]"


@dataclass(frozen=True)
class _Doc:
    """What the checks across files need of one document, taken from the YAML tree even
    when the document is invalid: so an `after:` typo is reported with the other errors."""

    service: str
    actions: frozenset[str]
    after: tuple[_Entry, ...]
    env_files: tuple[_Entry, ...]


@dataclass(frozen=True)
class _Found:
    service: Service
    line: int  # of the service's `name` value, where a cross-file duplicate is reported
    column: int
    doc: _Doc


@dataclass
class _Parsed:
    found: list[_Found] = field(default_factory=list)
    errors: list[SpecError] = field(default_factory=list)
    docs: list[_Doc] = field(default_factory=list)


def parse_text(text: str, filename: str, state_dir: Path | str | None = None, *,
               hard_limits: Mapping[str, int] | None = None) -> list[Service]:
    """All services in one file's text (one per non-empty YAML document).

    With `state_dir`, paths pointing into it (outside `run/`) are errors too; with
    `hard_limits` (spec key -> hard limit, what `host_hard_limits` gives a controller that
    cannot raise its own), a `limits:` value above one is an error too.
    Raises `SpecErrors` listing every problem; never anything else.
    """
    hard = None if hard_limits is None else tuple(sorted(hard_limits.items()))
    parsed = _parse(text, filename, None if state_dir is None else os.path.abspath(state_dir),
                    hard)
    known = {d.service: d.actions for d in parsed.docs}
    errors = parsed.errors + [e for d in parsed.docs for e in _after_errors(d, known, filename)]
    if errors:
        raise SpecErrors(sorted(set(errors)))
    return [f.service for f in parsed.found]


# (spec key, hard limit) of the rlimits a job cannot exceed, or None: hashable, for the cache.
HardLimits = tuple[tuple[str, int], ...] | None


@functools.cache
def host_hard_limits() -> HardLimits:
    """This controller's hard limits when it cannot raise them (host/limits.py), read once:
    without CAP_SYS_RESOURCE they can only go down, and never do in a controller."""
    found = unraisable_hard_limits()
    return None if found is None else tuple(sorted(found.items()))


def _parse(text: str, filename: str, state_dir: str | None, hard: HardLimits) -> _Parsed:
    """A fresh `_Parsed` for this text. Every pass re-reads every spec file, but files rarely
    change: parsing is most of a pass's cost, so results are cached per (text, file). Reuse
    is safe because the models are frozen."""
    found, errors, docs = _parse_cached(text, filename, state_dir, hard)
    return _Parsed(list(found), list(errors), list(docs))


def forget_parsed_specs() -> None:
    """Drop the parse cache (a reload). Its entries are keyed by the text itself, so they
    are never stale; a reload drops them anyway, to promise a re-read from nothing."""
    _parse_cached.cache_clear()


@functools.lru_cache(maxsize=1024)
def _parse_cached(text: str, filename: str, state_dir: str | None, hard: HardLimits
                  ) -> tuple[tuple[_Found, ...], tuple[SpecError, ...], tuple[_Doc, ...]]:
    parsed = _parse_uncached(text, filename, state_dir, hard)
    return tuple(parsed.found), tuple(parsed.errors), tuple(parsed.docs)


def _parse_uncached(text: str, filename: str, state_dir: str | None,
                    hard: HardLimits) -> _Parsed:
    """`_parse_text` behind the promise that no input produces a traceback."""
    try:
        return _parse_text(text, filename, state_dir, hard)
    except RecursionError:
        return _Parsed(errors=[SpecError(filename, 1, 1, "nested too deeply")])
    except Exception as exc:  # the promise: a bad spec is an error message, not a crash
        message = f"cannot read this file: {type(exc).__name__}: {exc}"
        return _Parsed(errors=[SpecError(filename, 1, 1, message)])


def _parse_text(text: str, filename: str, state_dir: str | None, hard: HardLimits) -> _Parsed:
    surrogate = _SURROGATE.search(text)  # only reachable through parse_text, not from a file
    if surrogate is not None:
        line, column = _char_position(text, surrogate.start())
        return _Parsed(errors=[SpecError(filename, line, column, "not valid Unicode "
                                         "(an unpaired surrogate)")])
    too_deep = _nesting_error(text, filename)
    if too_deep is not None:
        return _Parsed(errors=[too_deep])
    try:
        roots = _compose_all(text)
    except yaml.YAMLError as exc:
        return _Parsed(errors=[_syntax_error(exc, text, filename)])
    result = _Parsed()
    for root in roots:
        if isinstance(root, ScalarNode) and root.tag == _NULL:
            continue  # an empty document
        found, errors, doc = _parse_document(root, filename, state_dir, hard)
        result.errors.extend(errors)
        if found is not None:
            result.found.append(found)
        if doc is not None:
            result.docs.append(doc)
    result.errors.extend(_duplicates_in_file(result.found, filename))
    if result.errors:
        return _Parsed(errors=sorted(set(result.errors)), docs=result.docs)
    if not result.found:
        # Empty, only comments, only `---`: far more often a file caught half-written
        # (truncate, then write) than an intent to stop everything it defined.
        return _Parsed(errors=[SpecError(filename, 1, 1, NO_SERVICES)])
    return result


def _compose_all(text: str) -> list[Node]:
    loader = _ComposingLoader(text)
    try:
        roots = []
        while loader.check_node():
            roots.append(loader.get_node())
        return roots
    finally:
        loader.dispose()


def _nesting_error(text: str, filename: str) -> SpecError | None:
    if not _could_nest_deeply(text):
        return None
    loader = _LOADER(text)
    depth = 0
    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return _error_at(event.start_mark, filename,
                                     f"nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return None  # composing reports it, at a depth we now know is safe
    finally:
        loader.dispose()
    return None


def _could_nest_deeply(text: str) -> bool:
    """Whether the event scan must run: the file has `_DEPTH_SCAN_THRESHOLD` indicators and
    one of its documents enough of them to nest deeper than `MAX_DEPTH`.

    Every collection starts with one of `[{-:?` of its own, so a document nesting d deep
    holds at least d of them: where no document holds more than `MAX_DEPTH`, the scan
    would find nothing, and skipping it spares ~4 ms per 200 services (issue 13) to a file
    of many small documents. A document never spans a marker line (`---` or `...` at the
    start of a line, then a blank or the end): the parsers end every block collection
    there and refuse one inside a flow collection. Splitting at fewer places than the
    parsers do only makes the counts larger, so the split takes line starts after a line
    feed only and blanks among space, tab, CR and LF only."""
    if sum(text.count(c) for c in _INDICATORS) < _DEPTH_SCAN_THRESHOLD:
        return False
    return any(sum(doc.count(c) for c in _INDICATORS) > MAX_DEPTH
               for doc in _DOCUMENT_MARKER.split(text))


def _syntax_error(exc: yaml.YAMLError, text: str, filename: str) -> SpecError:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        message = f"YAML syntax error: {exc.problem or exc.context or 'invalid YAML'}"
        context = exc.context_mark
        if exc.problem and exc.context and context is not None:
            message += f" ({exc.context} at line {context.line + 1})"
        if mark is not None:
            return _error_at(mark, filename, message)
        return SpecError(filename, 1, 1, message)
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _position(text, exc.position)
        character = exc.character
        character = chr(character) if isinstance(character, int) else character  # libyaml
        message = f"character {character!r} is not allowed in YAML: {exc.reason}"
        return SpecError(filename, line, column, message)
    return SpecError(filename, 1, 1, f"YAML error: {exc}")


def _position(text: str, offset: int) -> tuple[int, int]:
    """libyaml reports byte offsets, the pure-Python reader character offsets."""
    if _LOADER is not yaml.SafeLoader:
        offset = len(text.encode("utf-8", "surrogatepass")[:offset].decode("utf-8", "replace"))
    return _char_position(text, offset)


def _char_position(text: str, offset: int) -> tuple[int, int]:
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _duplicates_in_file(found: list[_Found], filename: str) -> list[SpecError]:
    first: dict[str, _Found] = {}
    errors = []
    for item in found:
        earlier = first.setdefault(item.service.name, item)
        if earlier is not item:
            errors.append(SpecError(filename, item.line, item.column,
                                    f"service '{item.service.name}' is already defined "
                                    f"in this file (line {earlier.line})"))
    return errors


# --- one document ---------------------------------------------------------------------------

def _parse_document(root: Node, filename: str, state_dir: str | None, hard: HardLimits
                    ) -> tuple[_Found | None, list[SpecError], _Doc | None]:
    if not isinstance(root, MappingNode):
        message = (f"a spec document must be a mapping (a service with name and actions), "
                   f"not {_node_kind(root)}")
        return None, [_error_at(root.start_mark, filename, message)], None
    tree = _Tree(filename)
    data = tree.build(root)
    if tree.fatal:
        return None, tree.errors, None
    doc = _doc_of(root, tree, data)
    try:
        service = Service.model_validate(data, context={
            "state_dir": state_dir, "hard_limits": None if hard is None else dict(hard)})
    except ValidationError as exc:
        return None, tree.errors + [_translate(err, root, tree, filename)
                                    for err in exc.errors(include_url=False)], doc
    errors = tree.errors + _number_traps(root, tree, filename)
    if errors or doc is None:
        return None, errors, doc
    name = tree.locate(root, ("name",))
    return _Found(service, name.start_mark.line + 1, name.start_mark.column + 1, doc), [], doc


def _doc_of(root: Node, tree: _Tree, data: Any) -> _Doc | None:
    """The names and list entries of a document as written, valid or not."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    actions = data.get("actions")
    actions = actions if isinstance(actions, list) else []
    names: set[str] = set()
    after: list[_Entry] = []
    env_files: list[_Entry] = []
    for index, action in enumerate(actions):
        if not isinstance(action, dict):
            continue
        name = action.get("name")
        name = name if isinstance(name, str) else ""
        names.add(name)
        after.extend(_entries(root, tree, index, name, "after", action.get("after")))
        env_files.extend(_entries(root, tree, index, name, "env_file", action.get("env_file")))
    return _Doc(data["name"], frozenset(names - {""}), tuple(after), tuple(env_files))


def _entries(root: Node, tree: _Tree, index: int, action: str, key: str,
             value: Any) -> list[_Entry]:
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    found = []
    for position, item in enumerate(items):
        if not isinstance(item, str):
            continue
        loc: tuple[Any, ...] = ("actions", index, key) + (() if isinstance(value, str)
                                                        else (position,))
        node = tree.locate(root, loc)
        found.append(_Entry(index, action, position, item, node.start_mark.line + 1,
                            node.start_mark.column + 1))
    return found


def _node_kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    return f"the value {_short(str(node.value))!r}" if isinstance(node, ScalarNode) else "that"


def _short(text: str, limit: int = 40) -> str:
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_at(mark: Any, filename: str, message: str) -> SpecError:
    return SpecError(filename, mark.line + 1, mark.column + 1, message)


class _Tree:
    """Plain data built from a node tree, remembering which key and value node every mapping
    entry came from, so that a validation error's `loc` can be walked back to a position."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.errors: list[SpecError] = []
        self.fatal = False  # the data is not worth validating: only the errors so far count
        self.entries: dict[int, dict[str, tuple[Node, Node]]] = {}
        self._built: dict[int, Any] = {}  # aliases share nodes: build each once
        self._building: set[int] = set()

    def error(self, node: Node, message: str, *, fatal: bool = False) -> None:
        self.errors.append(_error_at(node.start_mark, self.filename, message))
        self.fatal = self.fatal or fatal

    def build(self, node: Node) -> Any:
        key = id(node)
        if key in self._built:
            return self._built[key]
        if key in self._building:
            self.error(node, "an alias refers to the collection that contains it", fatal=True)
            return None
        self._building.add(key)
        try:
            if isinstance(node, MappingNode):
                value: Any = self._mapping(node)
            elif isinstance(node, SequenceNode):
                value = self._sequence(node)
            else:
                value = self._scalar(node)
        finally:
            self._building.discard(key)
        self._built[key] = value
        return value

    def _mapping(self, node: MappingNode) -> dict[str, Any]:
        if node.tag != _MAP:
            self.error(node, f"unsupported tag '{_tag_name(node.tag)}' (specs are plain data)",
                       fatal=True)
            return {}
        entries: dict[str, tuple[Node, Node]] = {}
        merged: list[tuple[str, Node, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.extend(self._merge_sources(value_node))
                continue
            key = self._key(key_node)
            if key is None:
                continue
            if key in entries:
                first = entries[key][0].start_mark.line + 1
                self.error(key_node, f"duplicate key '{key}' (first at line {first})")
            entries[key] = (key_node, value_node)
        for key, key_node, value_node in merged:
            entries.setdefault(key, (key_node, value_node))  # explicit keys win over `<<`
        self.entries[id(node)] = entries
        return {key: self.build(value) for key, (_, value) in entries.items()}

    def _merge_sources(self, node: Node) -> list[tuple[str, Node, Node]]:
        """`<<: *defaults` entries; with a list of mappings the earlier one wins."""
        sources = node.value if isinstance(node, SequenceNode) else [node]
        found: list[tuple[str, Node, Node]] = []
        for source in sources:
            if not isinstance(source, MappingNode):
                self.error(source, "a merge (<<) needs a mapping or a list of mappings",
                           fatal=True)
                continue
            self.build(source)
            found.extend((k, kn, vn) for k, (kn, vn) in self.entries.get(id(source), {}).items())
        return found

    def _key(self, node: Node) -> str | None:
        if not isinstance(node, ScalarNode):
            self.error(node, "mapping keys must be plain strings")
            return None
        key = self._scalar(node)
        if isinstance(key, str):
            return key
        self.error(node, f"mapping keys must be strings{_read_as_hint(node)}")
        return None

    def _sequence(self, node: SequenceNode) -> list[Any]:
        if node.tag != _SEQ:
            self.error(node, f"unsupported tag '{_tag_name(node.tag)}' (specs are plain data)",
                       fatal=True)
            return []
        return [self.build(item) for item in node.value]

    def _scalar(self, node: Node) -> Any:
        if node.tag not in _SCALAR_TAGS:
            self.error(node, f"unsupported tag '{_tag_name(node.tag)}' (specs are plain data)",
                       fatal=True)
            return None
        construct = yaml.constructor.SafeConstructor.yaml_constructors[node.tag]
        try:
            return construct(_SCALARS, node)
        except (ValueError, TypeError, ArithmeticError, yaml.YAMLError):
            self.error(node, f"cannot read {_short(str(node.value))!r} as "
                             f"'{_tag_name(node.tag)}'", fatal=True)
            return None

    def value_node(self, mapping: Node, key: str) -> Node | None:
        entry = self.entries.get(id(mapping), {}).get(key)
        return entry[1] if entry else None

    def locate(self, root: Node, loc: tuple[Any, ...], *, key: bool = False) -> Node:
        """The node `loc` points at, or the deepest existing ancestor. With `key`, the key
        node of the last step (for unknown keys); `"[key]"` in `loc` means the same."""
        node, key_node = root, None
        for index, part in enumerate(loc):
            if part == "[key]":
                return key_node or node
            if isinstance(node, MappingNode):
                entry = self.entries.get(id(node), {}).get(part)
                if entry is None:
                    return node
                key_node, node = entry
                if key and index == len(loc) - 1:
                    return key_node
            elif (isinstance(node, SequenceNode) and isinstance(part, int)
                  and 0 <= part < len(node.value)):
                node, key_node = node.value[part], None
            else:
                return node
        return node


_SCALARS = yaml.constructor.SafeConstructor()


def _tag_name(tag: str) -> str:
    return f"!!{tag.removeprefix(_Y)}" if tag.startswith(_Y) else tag


def _read_as_hint(node: Node) -> str:
    """YAML 1.1 reads `yes`/`on` as booleans and `0755` as a number; say so, it is baffling."""
    if not isinstance(node, ScalarNode) or node.style not in (None, ""):
        return ""
    kind = _READ_AS.get(node.tag)
    if kind is None:
        return ""
    if node.tag == _NULL and node.value in ("", "~"):
        return "; the value is empty (YAML null); write '' for an empty string"
    return f"; YAML read `{node.value}` as {kind}; quote it"


def _number_traps(root: Node, tree: _Tree, filename: str) -> list[SpecError]:
    """Env values may be numbers, but `MODE: 0755` arrives as 493 and `V: 1.10` as 1.1:
    refuse any number whose text would not survive the trip."""
    errors: list[SpecError] = []
    actions = tree.value_node(root, "actions")
    for index, action in enumerate(actions.value if isinstance(actions, SequenceNode) else []):
        env = tree.value_node(action, "env")
        for name, (_, value) in tree.entries.get(id(env), {}).items():
            if not isinstance(value, ScalarNode) or value.style not in (None, ""):
                continue
            number = tree.build(value)
            if value.tag in (f"{_Y}int", f"{_Y}float") and str(number) != value.value:
                read = (f"YAML read `{value.value}` as the number {number}"
                        if not is_secret_name(str(name)) else "YAML read the value as a number")
                errors.append(_error_at(value.start_mark, filename,
                                        f"actions[{index}].env.{name}: {read}; quote it"))
    return errors


# --- pydantic errors → messages -------------------------------------------------------------

def _translate(err: Any, root: Node, tree: _Tree, filename: str) -> SpecError:
    raw = tuple(err["loc"])
    loc = _strip_union_tags(raw)
    kind = err["type"]
    if kind == "extra_forbidden":
        node = tree.locate(root, loc, key=True)
        name = node.value if isinstance(node, ScalarNode) else loc[-1]
        hint = did_you_mean(str(name), _allowed_keys(raw[:-1]))
        return _error_at(node.start_mark, filename,
                         _with_path(loc[:-1], f"unknown key '{name}'{hint}"))
    if kind == "missing":
        node = tree.locate(root, loc[:-1])
        return _error_at(node.start_mark, filename,
                         _with_path(loc[:-1], f"missing required key '{loc[-1]}'"))
    ctx = err.get("ctx") or {}
    full = loc + tuple(ctx.get("at", ()))
    node = tree.locate(root, full)
    message = _describe(err)
    if kind in _HINTED_ERRORS and _quoting_helps(kind, node, ctx):
        message += _read_as_hint(node)
    return _error_at(node.start_mark, filename,
                     _with_path(tuple(p for p in full if p != "[key]"), message))


def _quoting_helps(kind: str, node: Node, ctx: Mapping[str, Any]) -> bool:
    """`restart: no` is wrong either way; only hint when the quoted text would be valid."""
    if kind != "literal_error":
        return True
    allowed = re.findall(r"'([^']*)'", str(ctx.get("expected")))
    return isinstance(node, ScalarNode) and node.value in allowed


def _strip_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """pydantic puts the chosen member's tag into `loc` (`health.tcp.interval`); users never
    wrote it, so drop it."""
    out: list[Any] = []
    skip = False
    for index, part in enumerate(loc):
        if skip:
            skip = False
            continue
        out.append(part)
        tags = UNION_TAGS.get(part, ()) if isinstance(part, str) else ()
        skip = index + 1 < len(loc) and loc[index + 1] in tags
    return tuple(out)


def _with_path(loc: tuple[Any, ...], message: str) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return f"{path}: {message}" if path else message


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model at `loc` (with union tags still in it), for "did you mean"."""
    models: list[type[BaseModel]] = [Service]
    for part in loc:
        if isinstance(part, int):
            continue
        inner = [m for model in models if part in model.model_fields
                 for m in _models_in(model.model_fields[part].annotation)]
        tagged = [m for m in models if getattr(m, "kind", None) == part]
        models = inner or tagged
        if not models:
            return []
    # the key as written: `as`, not its Python field name `as_`
    return sorted({info.alias or name for model in models
                   for name, info in model.model_fields.items()})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


_TEMPLATES = {
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "string_too_short": "must not be empty",
    "string_too_long": "must be at most {max_length} characters",
    "too_long": "must have at most {max_length} items",
}
_PATTERN_HELP = {
    NAME_PATTERN: "invalid name '{input}': use lowercase letters, digits, '_' and '-' "
                  "(no '.'), starting with a letter or digit",
    AFTER_PATTERN: "invalid after entry '{input}': write ACTION, SERVICE or SERVICE.ACTION "
                   "(names use lowercase letters, digits, '_' and '-')",
    ENV_NAME_PATTERN: "invalid environment variable name '{input}': use letters, digits and "
                      "'_', not starting with a digit",
    HOST_GLOB_PATTERN: "invalid host glob '{input}': use letters, digits, '.', '_', '-', '*', "
                       "'?' and closed [...] classes",
    LABEL_KEY_PATTERN: "invalid label name '{input}': use letters, digits, '.', '_', '/' and "
                       "'-', starting with a letter or digit",
    LABEL_VALUE_PATTERN: "must not contain control characters",
}


def _describe(err: Any) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "literal_error":
        return "must be one of " + ", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected"))))
    if kind == "too_short":
        size = ctx.get("min_length", 1)
        return "must not be empty" if size == 1 else f"needs at least {size} items"
    if kind == "string_pattern_mismatch":
        template = _PATTERN_HELP.get(str(ctx.get("pattern")), "must match {pattern}")
        return template.replace("{input}", _short(str(err.get("input")))).replace(
            "{pattern}", str(ctx.get("pattern")))
    if kind in _TEMPLATES:
        try:
            return _TEMPLATES[kind].format(**ctx)
        except (KeyError, IndexError, ValueError):
            pass
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


# --- across files: `after:` targets and cycles ------------------------------------------------

def _check_references(where: _Dir, loads: list[_FileLoad]) -> None:
    """Every `after:` entry of every document (broken ones too) names something defined in
    some file; no dependency cycle runs through the services in force. A file whose current
    content fails is refused like any invalid file (its last good version stays).

    Costs nothing without `after:` entries (a thousand plain services are checked every
    pass); with them, work follows the actions that have entries."""
    if not any(doc.after for load in loads for doc in load.docs) and not any(
            action.after for load in loads for s in load.chosen for action in s.actions):
        return
    known: dict[str, frozenset[str]] = {}
    for load in loads:
        for service in load.chosen:
            known[service.name] = frozenset(a.name for a in service.actions)
    for load in loads:  # a service defined in a broken file is not a typo where it is named
        for doc in load.docs:
            known[doc.service] = known.get(doc.service, frozenset()) | doc.actions
    for load in loads:
        errors = [e for doc in load.docs for e in _after_errors(doc, known, load.display)]
        if errors:
            _reject(where, load, loads, errors)
    for _ in range(len(loads) + 1):  # each round refuses one file's current content
        found = _find_cycle(loads)
        if found is None:
            return
        load, error = found
        fresh = load.fresh
        _reject(where, load, loads, [error])
        if not fresh:
            return  # only last good versions in the cycle: reported, their actions wait


def _after_errors(doc: _Doc, known: Mapping[str, frozenset[str]],
                  display: str) -> list[SpecError]:
    errors = []
    for entry in doc.after:
        problem = _after_problem(doc, entry.value, known)
        if problem is not None:
            errors.append(SpecError(display, entry.line, entry.column,
                                    f"{entry.path('after')}: {problem}"))
    return errors


def _after_problem(doc: _Doc, dep: str, known: Mapping[str, frozenset[str]]) -> str | None:
    if not re.search(AFTER_PATTERN, dep):
        return None  # the model's pattern reports it
    other, dot, action = dep.partition(".")
    if dot:
        if other == doc.service:
            return None if action in doc.actions else (
                f"unknown action '{action}' in this service"
                f"{did_you_mean(action, sorted(doc.actions))}")
        if other not in known:
            return f"unknown service '{other}'{did_you_mean(other, sorted(known))}"
        if action not in known[other]:
            return (f"service '{other}' has no action '{action}'"
                    f"{did_you_mean(action, sorted(known[other]))}")
        return None
    if dep == doc.service:
        return None  # the model reports it
    if dep in doc.actions and dep in known:
        return (f"'{dep}' is both an action of this service and a service; write "
                f"'{doc.service}.{dep}' for the action, or name the other service's actions "
                f"('{dep}.ACTION')")
    if dep in doc.actions or dep in known:
        return None
    choices = sorted(doc.actions | set(known))
    return f"unknown action or service '{dep}'{did_you_mean(dep, choices)}"


_Key = tuple[str, str]
_CYCLE_SHOWN = 12  # steps of a cycle named in its error; the rest are counted


def _find_cycle(loads: list[_FileLoad]) -> tuple[_FileLoad, SpecError] | None:
    """A dependency cycle through the services in force, as the file to refuse and the
    error at the entry that closes it (one in a file whose current content is in force when
    there is one). Kahn's algorithm, then a walk: linear, no recursion."""
    owner: dict[str, _FileLoad] = {}
    services: dict[str, Service] = {}
    for load in loads:
        for service in load.chosen:
            owner[service.name], services[service.name] = load, service
    actions = {name: [a.name for a in s.actions] for name, s in services.items()}
    # only actions with entries can be on a cycle: the others are where chains end
    edges: dict[_Key, list[tuple[_Key, int]]] = {}
    for name, service in services.items():
        own = actions[name]
        for action in service.actions:
            if action.after:
                edges[(name, action.name)] = [
                    (target, position) for position, dep in enumerate(action.after)
                    for target in after_targets(name, own, dep, actions)]
    pending = _pending_after_kahn(edges)
    if not pending:
        return None
    start = next(key for key in edges if key in pending)
    path: list[tuple[_Key, int]] = []  # (node, position of the entry leaving it)
    on_path: dict[_Key, int] = {}
    node = start
    while node not in on_path:
        on_path[node] = len(path)
        target, position = next((t, p) for t, p in edges[node] if t in pending)
        path.append((node, position))
        node = target
    cycle = path[on_path[node]:]
    steps = [f"{s}.{a}" for (s, a), _ in [*cycle, cycle[0]]]
    if len(steps) > _CYCLE_SHOWN:  # a 10 000-step cycle is one line, not 100 KiB
        half = _CYCLE_SHOWN // 2
        steps = [*steps[:half], f"… {len(steps) - 2 * half} more …", *steps[-half:]]
    names = " -> ".join(steps)
    fresh = [step for step in cycle if owner[step[0][0]].fresh]
    (service_name, action_name), position = (fresh or cycle)[-1]
    load = owner[service_name]
    line, column, index = _entry_position(load, service_name, action_name, position)
    return load, SpecError(load.display, line, column,
                           f"actions[{index}].after[{position}]: cycle {names}")


def _pending_after_kahn(edges: Mapping[_Key, list[tuple[_Key, int]]]) -> set[_Key]:
    """The nodes Kahn's algorithm cannot order: those on or behind a cycle. A target that is
    not a key (it waits for nothing) is done from the start."""
    waiting = {key: len({t for t, _ in targets if t in edges}) for key, targets in edges.items()}
    dependents: dict[_Key, list[_Key]] = {key: [] for key in edges}
    for key, targets in edges.items():
        for target in {t for t, _ in targets if t in edges}:
            dependents[target].append(key)
    ready = [key for key, count in waiting.items() if count == 0]
    while ready:
        key = ready.pop()
        del waiting[key]
        for dependent in dependents.get(key, ()):
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    return set(waiting)


def _entry_position(load: _FileLoad, service: str, action: str,
                    position: int) -> tuple[int, int, int]:
    """Line, column and action index of an `after:` entry in the file's current text (1, 1
    when the version in force is not the current text)."""
    for doc in load.docs:
        if doc.service != service:
            continue
        for entry in doc.after:
            if entry.action == action and entry.position == position:
                return entry.line, entry.column, entry.action_index
    index = next((i for s in load.chosen if s.name == service
                  for i, a in enumerate(s.actions) if a.name == action), 0)
    return 1, 1, index


# --- env files --------------------------------------------------------------------------------

MAX_ENV_FILE_BYTES = 256 * 1024
_EXPORT = re.compile(r"^export\s+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
# (id(service), env contents) -> (service, service with env files merged): the same object
# while nothing changed, so `desired` keeps its per-service cache.
_MERGED: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Service, Service]] = {}


class EnvFileError(ValueError):
    """A line of a dotenv file that is not `KEY=VALUE`."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


def parse_dotenv(text: str) -> dict[str, str]:
    """`KEY=VALUE` lines; `#` comments and blank lines skipped; an optional `export `;
    values single-quoted (literal), double-quoted (`\\n`, `\\"`, `\\\\` escapes) or bare
    (trimmed, ` #` starts a comment). Keys follow the `env` rule. Raises EnvFileError."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _EXPORT.sub("", raw.strip())
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq:
            raise EnvFileError(number, "expected KEY=VALUE")
        if not re.search(ENV_NAME_PATTERN, key) or len(key) > MAX_ENV_NAME:
            raise EnvFileError(number, f"invalid variable name '{_short(key)}': use letters, "
                                       f"digits and '_', not starting with a digit")
        values[key] = _dotenv_value(value.strip(), number)
        if len(values) > MAX_ENV:
            raise EnvFileError(number, f"more than {MAX_ENV} variables")
    return values


def _dotenv_value(value: str, number: int) -> str:
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1) if quote == "'" else _closing_quote(value)
        if end < 0:
            raise EnvFileError(number, f"unterminated {quote} quote")
        rest = value[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise EnvFileError(number, "text after the closing quote")
        inner = value[1:end]
        if quote == '"':
            inner = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[0]), inner)
        value = inner
    else:
        value = re.split(r"\s#", value, maxsplit=1)[0].strip()
    if "\x00" in value or len(value) > MAX_TEXT:
        raise EnvFileError(number, f"value with a NUL character or over {MAX_TEXT} characters")
    return value


def _closing_quote(value: str) -> int:
    index = 1
    while index < len(value):
        if value[index] == "\\":
            index += 2
            continue
        if value[index] == '"':
            return index
        index += 1
    return -1


def _with_env_files(where: _Dir, found: list[_Found], display: str, *, strict: bool,
                    fallback: Mapping[str, tuple[tuple[str, str], ...]] | None = None,
                    ) -> tuple[list[Service], list[SpecError], EnvFiles]:
    """The services with each action's `env_file` variables under its `env`, and what the
    files held. `strict`: a missing or bad file is an error (current content); otherwise (a
    last good version) it takes the values `fallback` kept from when that version was
    good (`SpecRecord.env_files`), so the version in force does not change."""
    services: list[Service] = []
    errors: list[SpecError] = []
    read: dict[str, tuple[tuple[str, str], ...]] = {}
    for item in found:
        service = item.service
        if not item.doc.env_files:  # read from the document: cheaper than every action
            services.append(service)
            continue
        contents: dict[str, tuple[tuple[str, str], ...]] = {}
        for entry in item.doc.env_files:
            if entry.value in contents:
                continue
            values, problem = _read_env_file(where, entry.value)
            if problem is not None:
                if strict:
                    errors.append(SpecError(display, entry.line, entry.column,
                                            f"{entry.path('env_file')}: {problem}"))
                values = (fallback or {}).get(entry.value, ())
            contents[entry.value] = values
        read.update(contents)
        services.append(_merged(service, contents))
    return services, errors, tuple(sorted(read.items()))


def _merged(service: Service, contents: Mapping[str, tuple[tuple[str, str], ...]]) -> Service:
    key = (id(service), tuple(sorted((f"{p}\0{k}", v) for p, vs in contents.items()
                                     for k, v in vs)))
    hit = _MERGED.get(key)
    if hit is not None and hit[0] is service:
        return hit[1]
    actions = []
    for action in service.actions:
        if not action.env_file:
            actions.append(action)
            continue
        env: dict[str, str] = {}
        for path in action.env_file:
            env.update(contents.get(path, ()))
        actions.append(action.model_copy(update={"env": {**env, **action.env}}))
    merged = service.model_copy(update={"actions": actions})
    if len(_MERGED) > 4096:
        _MERGED.clear()
    _MERGED[key] = (service, merged)
    return merged


def _read_env_file(where: _Dir, path: str
                   ) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """Read like a spec file: opened relative to the specs dir's descriptor, never through
    a symlink leading outside it, a regular file written only by root or us, bounded."""
    resolved = os.path.realpath(os.path.join(where.real, path))
    if not Path(resolved).is_relative_to(where.real):
        return (), f"{path} leads outside the specs dir ({resolved})"
    fd, reason = _open_spec(where, os.path.relpath(resolved, where.real))
    if fd is None:
        return (), f"cannot read env file {path}: {reason or 'cannot open it'}"
    try:
        reason = _unsafe_reason(os.fstat(fd), path)
        if reason is not None:
            return (), f"refusing env file {path}: {reason}"
        raw = os.read(fd, MAX_ENV_FILE_BYTES + 1)
    except OSError as err:
        return (), f"cannot read env file {path}: {err.strerror or err}"
    finally:
        os.close(fd)
    if len(raw) > MAX_ENV_FILE_BYTES:
        return (), f"env file {path} is larger than {MAX_ENV_FILE_BYTES // 1024} KiB"
    try:
        values = tuple(parse_dotenv(raw.decode("utf-8")).items())
    except UnicodeDecodeError:
        return (), f"env file {path} is not valid UTF-8"
    except EnvFileError as err:
        return (), f"env file {path}: {err}"
    return values, None
