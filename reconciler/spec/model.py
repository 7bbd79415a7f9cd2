"""The spec format (DESIGN §2) as pydantic models: the single source of truth for what a
valid spec is, for the JSON Schema editors use, and for an action's generation.

Every model forbids unknown keys, because a silently ignored typo (`restrat: never`) is a
production incident waiting to happen. Validators that know more precisely where a problem
sits than pydantic's `loc` does pass an `at` path in the error context; `spec.load` uses it to
point at the exact line and column.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import signal
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    StrictBool,
    StringConstraints,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.config import JsonDict, JsonValue
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from reconciler.spec import noplugins
from reconciler.spec.defaults import DEFAULT_LOGS_KEEP, DEFAULT_STOP_SIGNAL, DEFAULT_STOP_TIMEOUT
from reconciler.spec.units import (
    DURATION_PATTERN,
    SIZE_PATTERN,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from reconciler.text import printable

noplugins.disable()  # before the first model is built: why in spec/noplugins.py

# No `.`: `SERVICE.ACTION` must name exactly one action, and the default pidfile
# `<service>.<action>.pid` must be distinct for every pair (`a`/`b.c` vs `a.b`/`c`).
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# An `after:` entry: an action of this service or a service (`db`), or one action of
# another service (`db.migrate`). Names have no dot, so the dot separates them.
AFTER_PATTERN = r"^[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*)?$"
# A placement host glob: hostname characters, `*`, `?` and closed `[...]` classes. An
# unclosed `[` is refused: fnmatch would silently match it literally.
HOST_GLOB_PATTERN = r"^(?:[A-Za-z0-9._*?-]|\[!?[A-Za-z0-9._-]+\])+$"
LABEL_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"
PROBE_KINDS = ("tcp", "unix", "http", "exec")
# A one-shot runs and exits: it holds no pidfile, socket or port between passes, so these
# keys on a one-shot are a misunderstanding worth reporting, not something to ignore.
PROCESS_ONLY = ("singleton", "pidfile", "sockets", "tcp_ports", "kill_others")
# What pydantic emits (`$defs`, `prefixItems`) and what editors speak: JSON Schema 2020-12.
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Bounds (docs/spec.md explains each). Generous for any real service, small enough that no
# value can make a pass, a rotation or a validation run for minutes, or fill memory.
MAX_NAME = 64
MAX_ACTIONS = 10_000  # per service
MAX_AFTER = 1_000  # entries in one action's `after`
MAX_ARGV = 4_096  # argv items
MAX_TEXT = 64 * 1024  # one argv item, shell command, env value
MAX_PATH = 4_096  # PATH_MAX
MAX_DESCRIPTION = 4_096
MAX_URL = 2_048
MAX_ENV = 1_000  # env entries per action
MAX_ENV_NAME = 256
MAX_SOCKETS = 64
MAX_PORTS = 64
MAX_KEEP = 100
MIN_LOG_SIZE, MAX_LOG_SIZE = 4 * 1024, 1024**3
MAX_STOP_TIMEOUT = 3600.0
MIN_BACKOFF, MAX_BACKOFF = 0.01, 3600.0
MAX_FACTOR = 10
MIN_RESET_AFTER, MAX_RESET_AFTER = 1.0, 86400.0
MIN_PROBE, MAX_PROBE = 0.01, 3600.0  # health interval and timeout
MAX_START_PERIOD = 3600.0
MAX_FAILURES = 100
MAX_ENV_FILES = 16  # env_file entries per action
MAX_HOST_GLOBS = 256
MAX_HOSTNAME = 253
MAX_LABELS = 256
MAX_LABEL_VALUE = 256
# `limits:` (docs/spec.md, Limits). max_rss is sampled, not an rlimit: below 1 MiB nothing
# runs, above 1 TiB it is no limit at all. RLIMIT_NOFILE can never be unlimited and the
# kernel refuses more than fs.nr_open (1048576 by default, at most 2^31 - 64): the static
# bound is 2^30, a value above the host's nr_open is a spawn error naming the limit.
MIN_MAX_RSS, MAX_MAX_RSS = 1024**2, 1024**4
MAX_NOFILE = 1 << 30
MAX_NPROC = 4 * 1024**2  # PID_MAX_LIMIT: no more processes than pids
MAX_RLIMIT_SIZE = 1024**5  # core, memlock, fsize, as: what a size can say (spec.units)
MIN_AS = 1024**2  # less address space than this and not even the command's exec succeeds
UNLIMITED = -1  # an rlimit value `unlimited` (RLIM_INFINITY; host/spawn.py translates it)

Loc = tuple[str | int, ...]


def spec_error(message: str, at: Loc = (), kind: str = "spec") -> PydanticCustomError:
    """A validation error whose text is shown to users verbatim.

    The message goes through the context rather than the template so that user text with
    braces in it is never mistaken for a placeholder.
    """
    return PydanticCustomError(kind, "{message}", {"at": at, "message": printable(message)})


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    # difflib here, not at the top: only a bad spec needs it, and in the daemon it would be
    # ~0.2 MiB of RSS for good (docs/benchmarks.md, "Issue 13, daemon RSS, third round")
    from difflib import get_close_matches

    close = get_close_matches(word, choices, n=1)
    return f" (did you mean '{printable(close[0])}'?)" if close else ""


# --- scalar types ---------------------------------------------------------------------------
#
# One source of truth: each type below is what the loader checks *and* what the JSON Schema
# says. Where a check is a Python function, the schema gets the same rule as a pattern (and
# the function tests that very pattern with Python's `re`, the engine `jsonschema` uses too),
# or, for a range that a string pattern cannot carry (durations, sizes), in words in its
# `description`. tests/test_spec_schema.py holds the two to the same verdicts.

NO_NUL_PATTERN = r"^[^\u0000]*$"
# Something besides whitespace (what `str.strip` removes is what `\s` matches), and no NUL.
NOT_BLANK_PATTERN = r"^[^\u0000]*[^\s\u0000][^\u0000]*$"


@dataclass(frozen=True)
class SchemaExtra:
    """Annotation metadata that adds keywords to a type's JSON Schema and nothing to its
    validation: for rules the type's own validator already enforces (a NUL-free string, a
    port listed once) that pydantic cannot derive from a Python function."""

    keywords: Mapping[str, Any] = field(hash=False)  # typing hashes Annotated metadata

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.update(self.keywords)
        return json_schema


def _plain_number(value: Any) -> Any:
    """pydantic's lax mode turns `true` into 1 and `"5"` into 5; in a spec both are mistakes
    (and the JSON Schema, where a number is a number, refuses them too)."""
    if isinstance(value, bool):
        raise spec_error("must be a number, not true/false")
    if isinstance(value, str):
        raise spec_error("must be a number, not a string (remove the quotes)")
    return value


# A label value is compared with the host's labels file, whose values are strings: a number
# here (`1.50`, read as 1.5) could never match, so it must be quoted; and it is shown to
# operators, so no control characters.
LABEL_VALUE_PATTERN = r"^[^\u0000-\u001f\u007f]*$"


def _label_value(value: Any) -> Any:
    if not isinstance(value, str):
        raise spec_error("must be a string (quote it: a number or boolean never matches the "
                         "labels file's strings)", kind="text_type")
    if not re.search(LABEL_VALUE_PATTERN, value):
        raise spec_error("must not contain control characters")
    return value


def _no_nul(value: str) -> str:
    if not re.search(NO_NUL_PATTERN, value):
        raise spec_error("must not contain a NUL character")
    return value


def _not_blank(value: str) -> str:
    if not re.search(NOT_BLANK_PATTERN, value):
        raise spec_error("must not be empty" if "\x00" not in value
                         else "must not contain a NUL character")
    return value


# Constraints go before the validators: pydantic then folds them into the schema
# (`minimum`, `maximum`) instead of leaking raw `ge`/`le` keys into the JSON Schema. An
# integer field takes 5.0 as 5 (as JSON Schema's `integer` does) and refuses 5.5 and "5".
Port = Annotated[int, Field(ge=1, le=65535), BeforeValidator(_plain_number)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_no_nul),
                 SchemaExtra({"pattern": NO_NUL_PATTERN})]
NonBlankText = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_not_blank),
                         SchemaExtra({"pattern": NOT_BLANK_PATTERN})]
PathText = Annotated[str, StringConstraints(max_length=MAX_PATH), AfterValidator(_not_blank),
                     SchemaExtra({"pattern": NOT_BLANK_PATTERN})]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=MAX_NAME)]
Flag = StrictBool  # `process: "yes"` or `1` is not a boolean, in the loader as in the schema

ENROLLMENT_SUFFIX = ".enroll.json"  # reconciler.state.enrollment.SUFFIX, kept import-free


def state_path_problem(path: str, state_dir: Path | str) -> str | None:
    """Why `path` (as resolved, relative ones under `<state-dir>/run/`) must not be written
    or unlinked by a job's lifecycle, or None. The state dir holds the database, the lock,
    enrollments and logs: a pidfile or socket there destroys them (`pidfile: ../state.db`)."""
    state = os.path.normpath(os.path.abspath(state_dir))
    run = os.path.join(state, "run")
    expanded = os.path.expanduser(path)
    full = os.path.normpath(expanded if os.path.isabs(expanded) else os.path.join(run, expanded))
    for base, candidate in ((state, full), (os.path.realpath(state), os.path.realpath(full))):
        if candidate != base and not candidate.startswith(base + os.sep):
            continue
        inside_run = os.path.relpath(candidate, base).split(os.sep)
        if inside_run[0] != "run" or len(inside_run) == 1:
            return (f"points into the state dir {state} outside run/; "
                    f"use a path under {run}/ or outside the state dir")
        if candidate.endswith(ENROLLMENT_SUFFIX):
            return f"names a file reserved for the reconciler's enrollments (*{ENROLLMENT_SUFFIX})"
    return None


def _run_path(value: str, info: ValidationInfo) -> str:
    """Relative paths live under `<state-dir>/run/` and may not climb out of it."""
    expanded = os.path.expanduser(value)
    if not os.path.isabs(expanded) and ".." in expanded.split("/"):
        raise spec_error("a relative path is resolved under <state-dir>/run/ and may not "
                         "contain '..'; write an absolute path instead")
    state_dir = (info.context or {}).get("state_dir")
    if state_dir is not None:
        problem = state_path_problem(value, state_dir)
        if problem is not None:
            raise spec_error(problem)
    return value


RunPath = Annotated[PathText, AfterValidator(_run_path)]


def _duration_input(value: Any) -> float:
    if isinstance(value, bool):
        raise spec_error("must be a duration such as '5s', not true/false")
    if isinstance(value, int | float):
        raise spec_error(f"durations need a unit, e.g. '{value:g}s'")
    if not isinstance(value, str):
        raise spec_error("must be a duration such as '250ms', '5s' or '1m30s'")
    try:
        return parse_duration(value)
    except ValueError as err:
        raise spec_error(str(err)) from None


def _size_input(value: Any) -> int:
    if isinstance(value, bool):
        raise spec_error("must be a size such as '10MiB', not true/false")
    if isinstance(value, int | float):
        raise spec_error(f"sizes need a unit, e.g. '{value:g}B' or '10MiB'")
    if not isinstance(value, str):
        raise spec_error("must be a size such as '512KiB' or '10MiB'")
    try:
        return parse_size(value)
    except ValueError as err:
        raise spec_error(str(err)) from None


def _between(low: float, high: float, show: Callable[[Any], str]) -> Callable[[Any], Any]:
    """A bound check whose message speaks the unit the user wrote (`at most 1h`, not 3600)."""
    def check(value: Any) -> Any:
        if value < low:
            raise spec_error(f"must be at least {show(low)}")
        if value > high:
            raise spec_error(f"must be at most {show(high)}")
        return value
    return check


@dataclass(frozen=True)
class DurationBetween:
    """`Annotated[float, DurationBetween(1, 60)]`: a duration string ('1m30s') read as
    seconds, bounded to [low, high], written back as a string. The schema says the range in
    words because a duration is a string there, which `minimum`/`maximum` cannot express."""

    low: float
    high: float

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        low, high = format_duration(self.low), format_duration(self.high)
        return handler.generate_schema(Annotated[
            float,
            BeforeValidator(_duration_input),
            AfterValidator(_between(self.low, self.high, format_duration)),
            PlainSerializer(format_duration, return_type=str),
            WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN,
                            "description": f"a duration from {low} to {high}",
                            "examples": ["250ms", "5s", "2m", "1m30s"]}),
        ])


@dataclass(frozen=True)
class SizeBetween:
    """`Annotated[int, SizeBetween(4096, 2**30)]`: a size string ('10MiB') read as bytes,
    bounded to [low, high], written back as a string (the range in words, as for durations)."""

    low: int
    high: int

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        low, high = format_size(self.low), format_size(self.high)
        return handler.generate_schema(Annotated[
            int,
            BeforeValidator(_size_input),
            AfterValidator(_between(self.low, self.high, lambda n: format_size(int(n)))),
            PlainSerializer(format_size, return_type=str),
            WithJsonSchema({"type": "string", "pattern": SIZE_PATTERN,
                            "description": f"a size from {low} to {high}",
                            "examples": ["512KiB", "10MiB"]}),
        ])


def _rlimit_input(size: bool, unlimited: bool) -> Callable[[Any], Any]:
    """One value sets both the soft and the hard limit: `unlimited` where the kernel allows
    it, a size (`64MiB`, or a plain 0) for byte limits, a plain number for counts."""
    words = "a size such as '64MiB', or 0" if size else "a number"
    if unlimited:
        words += ", or 'unlimited'"

    def parse(value: Any) -> Any:
        if unlimited and value == "unlimited":
            return UNLIMITED
        if isinstance(value, bool):
            raise spec_error(f"must be {words}, not true/false")
        if size:
            if isinstance(value, int | float) and value == 0:
                return 0
            if isinstance(value, int | float):
                raise spec_error(f"sizes need a unit, e.g. '{value:g}B' or '10MiB' "
                                 "(only 0 goes without one)")
            if not isinstance(value, str):
                raise spec_error(f"must be {words}")
            return _size_input(value)
        if isinstance(value, str):
            raise spec_error(f"must be {words}, not a string")
        return value
    return parse


def _rlimit_shown(size: bool) -> Callable[[int], str | int]:
    def show(value: int) -> str | int:
        if value == UNLIMITED:
            return "unlimited"
        return format_size(value) if size and value else value
    return show


@dataclass(frozen=True)
class RlimitBetween:
    """`Annotated[int, RlimitBetween(0, 2**40, size=True)]`: a resource limit (setrlimit(2))
    bounded to [low, high], or UNLIMITED when `unlimited` is allowed (RLIMIT_NOFILE cannot
    be). Sizes are written like log sizes; counts are plain integers."""

    low: int
    high: int
    size: bool
    unlimited: bool = True

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        show = _rlimit_shown(self.size)
        bounded = _between(self.low, self.high, lambda n: str(show(int(n))))
        return handler.generate_schema(Annotated[
            int,
            BeforeValidator(_rlimit_input(self.size, self.unlimited)),
            AfterValidator(lambda n: n if n == UNLIMITED else bounded(n)),
            PlainSerializer(show, return_type=str | int),
            WithJsonSchema(self._json_schema()),
        ])

    def _json_schema(self) -> JsonDict:
        choices: list[JsonDict]
        if self.size:
            low, high = format_size(self.low) if self.low else "0", format_size(self.high)
            choices = [{"type": "string", "pattern": SIZE_PATTERN,
                        "description": f"a size from {low} to {high}",
                        "examples": ["0B", "64MiB", "1GiB"] if self.low == 0
                        else ["64MiB", "1GiB"]}]
            if self.low == 0:
                choices.append({"const": 0})
        else:
            choices = [{"type": "integer", "minimum": self.low, "maximum": self.high}]
        if self.unlimited:
            choices.append({"const": "unlimited"})
        if len(choices) == 1:
            return choices[0]
        return {"anyOf": list[JsonValue](choices)}


# Every name Python knows, aliases included (SIGIOT = SIGABRT): the loader accepts them all.
_SIGNAL_NAMES = sorted(signal.Signals.__members__)
_SIGNAL_NUMBERS = sorted({int(s) for s in signal.Signals})


def _any_case(word: str) -> str:
    """`TERM` -> `[Tt][Ee][Rr][Mm]`: JSON Schema patterns have no case-insensitive flag."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else re.escape(c) for c in word)


# `SIGTERM`, `TERM`, `term`, ` Term `: a name in any case, with or without `SIG`. Longest
# first, so that no name stops the alternation at a shorter name that is its prefix.
SIGNAL_PATTERN = (r"^\s*(?:[Ss][Ii][Gg])?(?:"
                  + "|".join(_any_case(name.removeprefix("SIG"))
                             for name in sorted(_SIGNAL_NAMES, key=len, reverse=True))
                  + r")\s*$")


def _signal_name(value: Any) -> str:
    """Accept `SIGTERM`, `TERM`, `term` or 15; store the canonical name (`SIGTERM`)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's `integer` takes 15.0 too
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in _SIGNAL_NUMBERS:
            raise spec_error(f"unknown signal number {value}")
        return signal.Signals(value).name
    if not isinstance(value, str):
        raise spec_error("must be a signal name such as SIGTERM, or its number")
    name = value.strip().upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    if not re.search(SIGNAL_PATTERN, value):
        hint = did_you_mean(name, _SIGNAL_NAMES)
        raise spec_error(f"unknown signal '{value}'{hint}")
    return signal.Signals[name].name


SignalName = Annotated[
    str,
    BeforeValidator(_signal_name),
    WithJsonSchema({
        "anyOf": [
            {"type": "string", "pattern": SIGNAL_PATTERN,
             "examples": ["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGKILL"]},
            {"type": "integer", "enum": _SIGNAL_NUMBERS},
        ],
        "description": "a signal name in any case, with or without SIG (SIGTERM, TERM, term), "
                       "or its number (15)",
    }),
]


def _env_value(value: Any) -> Any:
    """Numbers are fine as env values (`PORT: 8080`); a YAML 1.1 boolean never is."""
    if isinstance(value, bool):
        raise spec_error("must be a string, not a boolean", kind="text_type")
    if isinstance(value, int | float):
        return str(value)
    return value


EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN, max_length=MAX_ENV_NAME)]
EnvValue = Annotated[
    str,
    BeforeValidator(_env_value),
    StringConstraints(max_length=MAX_TEXT),
    AfterValidator(_no_nul),
    WithJsonSchema({"anyOf": [
        {"type": "string", "maxLength": MAX_TEXT, "pattern": NO_NUL_PATTERN},
        {"type": "number"},
    ]}),
]


# --- commands -------------------------------------------------------------------------------

def _command_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "shell"
    if isinstance(value, list | tuple):
        return "argv"
    return None


def _program_given(argv: list[str]) -> list[str]:
    if not re.search(NOT_BLANK_PATTERN, argv[0]):
        raise spec_error("the program (first item) must not be empty", at=(0,))
    return argv


Command = Annotated[
    Annotated[list[Text], Field(min_length=1, max_length=MAX_ARGV),
              AfterValidator(_program_given), Tag("argv"),
              SchemaExtra({"prefixItems": [{"pattern": NOT_BLANK_PATTERN}]})]
    | Annotated[NonBlankText, Tag("shell")],
    Discriminator(
        _command_kind,
        custom_error_type="command_type",
        custom_error_message="must be a list of strings (argv) or a string (run with /bin/sh -c)",
    ),
]
# Tags pydantic inserts into error locations; `spec.load` strips them again.
UNION_TAGS: dict[str, tuple[str, ...]] = {
    "cmd": ("argv", "shell"),
    "exec": ("argv", "shell"),
    "health": PROBE_KINDS,
}


# --- models ---------------------------------------------------------------------------------

class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Backoff(_Spec):
    """Delays between restarts of a failing action (reconciler.backoff, docs/lifecycle.md):
    the first failure restarts at once, the n-th in a row waits initial × factor^(n−2),
    capped at max."""

    initial: Annotated[float, DurationBetween(MIN_BACKOFF, MAX_BACKOFF)] = 0.2
    max: Annotated[float, DurationBetween(MIN_BACKOFF, MAX_BACKOFF)] = 30.0
    factor: Annotated[float, Field(ge=1, le=MAX_FACTOR), BeforeValidator(_plain_number)] = 2.0
    # ≥ 1s: with 0 every crash counts as a first failure, restarted at once, which is no
    # backoff at all (thousands of starts a minute).
    reset_after: Annotated[float, DurationBetween(MIN_RESET_AFTER, MAX_RESET_AFTER)] = 30.0

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Backoff:
        if self.max < self.initial:
            raise spec_error("must not be shorter than initial", at=("max",))
        return self


class StopSpec(_Spec):
    """How to stop: this signal to the process group, then SIGKILL after timeout."""

    signal: SignalName = DEFAULT_STOP_SIGNAL
    timeout: Annotated[float, DurationBetween(0.0, MAX_STOP_TIMEOUT)] = DEFAULT_STOP_TIMEOUT


class LogsSpec(_Spec):
    """Log rotation: `<action>.log` plus `keep` previous runs."""

    keep: Annotated[int, Field(ge=0, le=MAX_KEEP),
                    BeforeValidator(_plain_number)] = DEFAULT_LOGS_KEEP
    max_size: Annotated[int, SizeBetween(MIN_LOG_SIZE, MAX_LOG_SIZE)] = 10 * 1024 * 1024


class Limits(_Spec):
    """What a job's processes may use (docs/spec.md, Limits). `max_rss` is watched by
    sampling (the job restarts with reason `memory-limit`); the others are rlimits set on the
    process before its command runs, one value for both the soft and the hard limit, and
    inherited by everything it starts. Unset means inherited from the reconciler."""

    # dumped as written (`as`), so a dumped spec loads back
    model_config = ConfigDict(extra="forbid", frozen=True, serialize_by_alias=True)

    max_rss: Annotated[int, SizeBetween(MIN_MAX_RSS, MAX_MAX_RSS)] | None = None
    nofile: Annotated[int, RlimitBetween(1, MAX_NOFILE, size=False, unlimited=False)] | None \
        = None
    nproc: Annotated[int, RlimitBetween(1, MAX_NPROC, size=False)] | None = None
    core: Annotated[int, RlimitBetween(0, MAX_RLIMIT_SIZE, size=True)] | None = None
    memlock: Annotated[int, RlimitBetween(0, MAX_RLIMIT_SIZE, size=True)] | None = None
    # `as` is a Python keyword: the field is `as_`, the spec key is `as`.
    as_: Annotated[int, RlimitBetween(MIN_AS, MAX_RLIMIT_SIZE, size=True)] | None = Field(
        default=None, alias="as")
    fsize: Annotated[int, RlimitBetween(0, MAX_RLIMIT_SIZE, size=True)] | None = None

    # The rlimits by spec key, in the order they are applied; RLIMIT_<KEY upper-cased>.
    RLIMITS: ClassVar[tuple[str, ...]] = ("nofile", "nproc", "core", "memlock", "as", "fsize")

    @model_validator(mode="after")
    def _within_hard_limits(self, info: ValidationInfo) -> Limits:
        """Above a hard limit the controller cannot raise, a job could never start: say so
        now. `spec.load` passes those limits (host facts) in the context; none without."""
        hard: Mapping[str, int] | None = (info.context or {}).get("hard_limits")
        if not hard:
            return self
        for key, value in self.rlimits():
            ceiling = hard.get(key, UNLIMITED)
            if ceiling == UNLIMITED or (value != UNLIMITED and value <= ceiling):
                continue
            show = _rlimit_shown(key not in ("nofile", "nproc"))
            raise spec_error(
                f"{show(value)} is above the reconciler's own hard limit {show(ceiling)}, "
                "which it cannot raise without CAP_SYS_RESOURCE: lower the value, or raise "
                "the reconciler's hard limit (systemd: Limit" + key.upper() + "=)", at=(key,))
        return self

    def rlimits(self) -> tuple[tuple[str, int], ...]:
        """The rlimits this spec sets, as (spec key, value; UNLIMITED for unlimited)."""
        values = {"nofile": self.nofile, "nproc": self.nproc, "core": self.core,
                  "memlock": self.memlock, "as": self.as_, "fsize": self.fsize}
        return tuple((key, value) for key in self.RLIMITS
                     if (value := values[key]) is not None)


class _Probe(_Spec):
    kind: ClassVar[str]

    interval: Annotated[float, DurationBetween(MIN_PROBE, MAX_PROBE)] = 2.0
    timeout: Annotated[float, DurationBetween(MIN_PROBE, MAX_PROBE)] = 1.0
    failures: Annotated[int, Field(ge=1, le=MAX_FAILURES), BeforeValidator(_plain_number)] = 3
    start_period: Annotated[float, DurationBetween(0.0, MAX_START_PERIOD)] = 0.0


class TcpHealth(_Probe):
    """Healthy when 127.0.0.1:<tcp> accepts a connection."""

    kind: ClassVar[str] = "tcp"
    tcp: Port


class UnixHealth(_Probe):
    """Healthy when the unix socket accepts a connection (relative: under <state-dir>/run/)."""

    kind: ClassVar[str] = "unix"
    unix: RunPath


# `http://` (any case, as urlsplit reads it), an optional user, a host name or a bracketed
# IPv6 address, an optional port up to 65535, then a path, query or fragment. No whitespace
# anywhere (urlsplit would quietly drop some of it). https is refused: the probe speaks
# plain HTTP to a local service.
_PORT_NUMBER = (r"0*(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}"
                r"|[1-5][0-9]{4}|[0-9]{1,4})")
HTTP_URL_PATTERN = (r"^[Hh][Tt][Tt][Pp]://(?:[^\s/?#@]*@)?"
                    r"(?:\[[0-9A-Fa-f:.]+\]|[^\s/?#@:\[\]]+)"
                    rf"(?::(?:{_PORT_NUMBER})?)?(?:[/?#]\S*)?$")


def _http_url(url: str) -> str:
    message = "must be an http:// URL such as http://127.0.0.1:8080/health (no https)"
    if not re.search(HTTP_URL_PATTERN, url):
        raise spec_error(message)
    try:  # the probe takes the URL apart with urlsplit: it must agree
        parts = urlsplit(url)
        _ = parts.port  # raises on a malformed port
    except ValueError:
        raise spec_error(message) from None
    if parts.scheme != "http" or not parts.hostname:
        raise spec_error(message)
    return url


class HttpHealth(_Probe):
    """Healthy when GET <http> answers 2xx."""

    kind: ClassVar[str] = "http"
    http: Annotated[str, StringConstraints(max_length=MAX_URL), AfterValidator(_http_url),
                    SchemaExtra({"pattern": HTTP_URL_PATTERN,
                                 "examples": ["http://127.0.0.1:8080/health"]})]


class ExecHealth(_Probe):
    """Healthy when the command exits 0 (a string runs with /bin/sh -c)."""

    kind: ClassVar[str] = "exec"
    exec: Command


_PROBE_KEYS = (*PROBE_KINDS, *_Probe.model_fields)


def _one_probe(value: Any) -> Any:
    """One clear error for a malformed probe instead of one per union member."""
    if isinstance(value, _Probe):
        return value
    if not isinstance(value, dict):
        raise spec_error("must be a mapping with one of tcp, unix, http, exec")
    found = [kind for kind in PROBE_KINDS if kind in value]
    if len(found) == 1:
        return value
    if found:
        found_text = " and ".join(found)
        raise spec_error(f"needs exactly one of tcp, unix, http, exec (found {found_text})")
    unknown = [k for k in value if isinstance(k, str) and k not in _PROBE_KEYS]
    hint = f"; unknown key '{unknown[0]}'{did_you_mean(unknown[0], PROBE_KINDS)}" if unknown else ""
    raise spec_error(f"needs exactly one of tcp, unix, http, exec{hint}")


def _probe_kind(value: Any) -> str | None:
    if isinstance(value, _Probe):
        return value.kind
    if isinstance(value, dict):
        found = [kind for kind in PROBE_KINDS if kind in value]
        return found[0] if len(found) == 1 else None
    return None


Health = Annotated[
    Annotated[TcpHealth, Tag("tcp")]
    | Annotated[UnixHealth, Tag("unix")]
    | Annotated[HttpHealth, Tag("http")]
    | Annotated[ExecHealth, Tag("exec")],
    Discriminator(_probe_kind, custom_error_type="health_probe",
                  custom_error_message="needs exactly one of tcp, unix, http, exec"),
    BeforeValidator(_one_probe),
]


def _unique_ports(ports: list[int]) -> list[int]:
    seen: set[int] = set()
    for index, port in enumerate(ports):
        if port in seen:
            raise spec_error(f"port {port} is listed twice", at=(index,))
        seen.add(port)
    return ports


RestartPolicy = Literal["always", "on-failure", "never"]


def _one_or_list(value: Any) -> Any:
    """`env_file: .env` is the common case; a list is several files, later ones winning."""
    return [value] if isinstance(value, str) else value


def _inside_specs_dir(path: str) -> str:
    """Env files are read from the specs dir like the specs (same repo, same review): no
    absolute path, no `..`."""
    if path.startswith("/") or path.startswith("~") or ".." in path.split("/"):
        raise spec_error("must be a path inside the specs dir (relative, without '..')")
    return path


ENV_FILE_PATTERN = r"^(?![/~])(?!.*(?:^|/)\.\.(?:/|$))[^\u0000]*[^\s\u0000][^\u0000]*$"
EnvFile = Annotated[str, StringConstraints(max_length=MAX_PATH), AfterValidator(_not_blank),
                    AfterValidator(_inside_specs_dir)]
EnvFiles = Annotated[
    list[EnvFile], BeforeValidator(_one_or_list), Field(max_length=MAX_ENV_FILES),
    WithJsonSchema({"anyOf": [
        {"type": "string", "maxLength": MAX_PATH, "pattern": ENV_FILE_PATTERN},
        {"type": "array", "maxItems": MAX_ENV_FILES,
         "items": {"type": "string", "maxLength": MAX_PATH, "pattern": ENV_FILE_PATTERN}},
    ], "description": "dotenv file(s), relative to the specs dir; `env` wins over them"}),
]


# What `_process_only_fields` allows on a one-shot, as JSON Schema: each process-only key
# absent or empty. tests/test_spec_schema.py checks that this covers PROCESS_ONLY and health.
_ONE_SHOT_VALUES: JsonDict = {
    "singleton": {"const": False}, "pidfile": {"type": "null"}, "sockets": {"maxItems": 0},
    "tcp_ports": {"maxItems": 0}, "kill_others": {"const": False}, "health": {"type": "null"},
    "limits": {"properties": {"max_rss": {"type": "null"}}},
}
_ONE_SHOT_RULE: JsonDict = {
    "if": {"properties": {"process": {"const": True}}, "required": ["process"]},
    "else": {"properties": _ONE_SHOT_VALUES},
}


class Action(_Spec):
    """One thing to keep done: a long-running process, or a one-shot that must exit 0."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=_ONE_SHOT_RULE)

    name: Name
    cmd: Command
    process: Flag = False
    # ACTION, SERVICE or SERVICE.ACTION; whether it names something is checked by
    # `spec.load`, which sees every file.
    after: Annotated[list[Annotated[str, StringConstraints(pattern=AFTER_PATTERN,
                                                           max_length=2 * MAX_NAME + 1)]],
                     Field(max_length=MAX_AFTER)] = []
    cwd: PathText | None = None
    # Read by spec.load from the specs dir; their variables are merged under `env` (which
    # wins) before the generation is computed, so a change of a file restarts the action.
    env_file: EnvFiles = []
    # pydantic puts the name rule in `patternProperties`, which lets other names through.
    env: Annotated[dict[EnvName, EnvValue], Field(max_length=MAX_ENV),
                   SchemaExtra({"propertyNames": {"pattern": ENV_NAME_PATTERN,
                                                  "maxLength": MAX_ENV_NAME}})] = {}
    singleton: Flag = False
    pidfile: RunPath | None = None
    sockets: Annotated[list[RunPath], Field(max_length=MAX_SOCKETS)] = []
    tcp_ports: Annotated[list[Port], Field(max_length=MAX_PORTS),
                         AfterValidator(_unique_ports), SchemaExtra({"uniqueItems": True})] = []
    kill_others: Flag = False
    restart: RestartPolicy | None = None
    backoff: Backoff = Backoff()
    stop: StopSpec = StopSpec()
    health: Health | None = None
    logs: LogsSpec = LogsSpec()
    limits: Limits = Limits()

    # Only these change what runs; editing anything else must keep the job (DESIGN §2).
    GENERATION_FIELDS: ClassVar[tuple[str, ...]] = (
        "cmd", "cwd", "env", "sockets", "tcp_ports", "pidfile", "process", "limits")

    @model_validator(mode="after")
    def _process_only_fields(self) -> Action:
        if self.process:
            return self
        if self.health is not None:
            raise spec_error("only process actions can have a health check "
                             "(add process: true)", at=("health",))
        for key in PROCESS_ONLY:
            if getattr(self, key):
                raise spec_error(f"only process actions can set {key} (add process: true); "
                                 "a one-shot owns no resources", at=(key,))
        if self.limits.max_rss is not None:  # enforced by stopping a running process only
            raise spec_error("only process actions can set limits.max_rss (add process: "
                             "true); a one-shot's rlimits (`as`) bound it instead",
                             at=("limits", "max_rss"))
        return self

    @property
    def argv(self) -> list[str]:
        return ["/bin/sh", "-c", self.cmd] if isinstance(self.cmd, str) else list(self.cmd)

    @property
    def effective_restart(self) -> RestartPolicy:
        if self.restart is not None:
            return self.restart
        return "always" if self.process else "on-failure"

    def generation(self) -> str:
        """Hash of what runs. Ports and sockets are sets, so their order does not count."""
        fields = self.model_dump(include=set(self.GENERATION_FIELDS), mode="json")
        fields["tcp_ports"] = sorted(fields["tcp_ports"])
        fields["sockets"] = sorted(fields["sockets"])
        # Only the limits set: an action without any keeps the generation it had before
        # `limits:` existed (upgrading the reconciler must not restart every job).
        limits = {k: v for k, v in fields.pop("limits").items() if v is not None}
        if limits:
            fields["limits"] = limits
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


HostGlob = Annotated[str, StringConstraints(pattern=HOST_GLOB_PATTERN, max_length=MAX_HOSTNAME)]
LabelKey = Annotated[str, StringConstraints(pattern=LABEL_KEY_PATTERN, max_length=MAX_HOSTNAME)]
LabelValue = Annotated[
    str, BeforeValidator(_label_value), StringConstraints(max_length=MAX_LABEL_VALUE),
    WithJsonSchema({"type": "string", "maxLength": MAX_LABEL_VALUE,
                    "pattern": LABEL_VALUE_PATTERN}),
]


class Placement(_Spec):
    """Where a service is desired: on a host whose name matches one of `hosts` (fnmatch
    globs) and whose labels have every `labels` entry. An absent condition always matches."""

    hosts: Annotated[list[HostGlob], Field(min_length=1, max_length=MAX_HOST_GLOBS)] | None = None
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=MAX_LABELS),
                      SchemaExtra({"propertyNames": {"pattern": LABEL_KEY_PATTERN,
                                                     "maxLength": MAX_HOSTNAME}})] = {}

    def problem(self, labels: Mapping[str, str]) -> str | None:
        """Why this host is not a match (None: it is). Pure: `labels` carries `hostname`."""
        hostname = labels.get("hostname", "")
        if self.hosts is not None and not any(
                fnmatch.fnmatchcase(hostname, glob) for glob in self.hosts):
            return f"hostname '{hostname}' matches none of {', '.join(self.hosts)}"
        for key, value in self.labels.items():
            have = labels.get(key)
            if have != value:
                shown = "not set" if have is None else f"'{have}'"
                return f"label {key}={value} wanted, this host has {shown}"
        return None


def after_targets(service: str, own_actions: Collection[str], dep: str,
                  services: Mapping[str, Collection[str]]) -> list[tuple[str, str]]:
    """The (service, action) keys an `after:` entry of `service` waits for; empty when it
    names nothing known. An unqualified name is an action of the same service first (what it
    always meant), else every action of the service of that name (`spec.load` refuses a
    name that is both)."""
    other, dot, action = dep.partition(".")
    if dot:
        known = own_actions if other == service else services.get(other, ())
        return [(other, action)] if action in known else []
    if dep in own_actions:
        return [(service, dep)]
    return [(dep, name) for name in services.get(dep, ())]


class Service(_Spec):
    """A named group of actions; one YAML document, the unit people add, edit and delete."""

    name: Name
    description: Annotated[str, StringConstraints(max_length=MAX_DESCRIPTION)] = ""
    placement: Placement | None = None
    actions: Annotated[list[Action], Field(min_length=1, max_length=MAX_ACTIONS)]

    @model_validator(mode="after")
    def _actions_consistent(self) -> Service:
        _check_unique_names(self.actions)
        _check_not_self(self.name, self.actions)
        _check_no_cycle(self.actions)
        return self

    def action(self, name: str) -> Action | None:
        return next((a for a in self.actions if a.name == name), None)


def _check_unique_names(actions: list[Action]) -> None:
    first: dict[str, int] = {}
    for index, action in enumerate(actions):
        if action.name in first:
            raise spec_error(f"duplicate action name '{action.name}' "
                             f"(first at actions[{first[action.name]}])",
                             at=("actions", index, "name"))
        first[action.name] = index


def _check_not_self(service: str, actions: list[Action]) -> None:
    """What one document decides alone; whether other targets exist is for `spec.load`,
    which sees every file (an unqualified name may be another service)."""
    names = {a.name for a in actions}
    for index, action in enumerate(actions):
        for position, dep in enumerate(action.after):
            at: Loc = ("actions", index, "after", position)
            if dep in (action.name, f"{service}.{action.name}"):
                raise spec_error(f"action '{action.name}' cannot wait for itself", at=at)
            if dep == service and dep not in names:
                raise spec_error(f"'{dep}' is this service: an action cannot wait for every "
                                 f"action of its own service, itself included", at=at)


def _check_no_cycle(actions: list[Action]) -> None:
    """Kahn's algorithm: peel off actions whose dependencies are all peeled; whatever
    remains holds a cycle. Linear in actions + edges and without recursion, because a
    10 000-action `after:` chain is a valid spec. Only edges within the service."""
    names = {a.name for a in actions}
    own = {a.name: {d for d in a.after if d in names} for a in actions}
    waiting = {a.name: len(own[a.name]) for a in actions}
    dependents: dict[str, list[str]] = {a.name: [] for a in actions}
    for action in actions:
        for dep in own[action.name]:
            dependents[dep].append(action.name)
    ready = [name for name, count in waiting.items() if count == 0]
    while ready:
        name = ready.pop()
        del waiting[name]
        for dependent in dependents[name]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    if waiting:
        _report_cycle(actions, waiting.keys())


def _report_cycle(actions: list[Action], pending: Any) -> None:
    """Walk from the first pending action (spec order) along pending dependencies until a
    name repeats: every pending action waits for another pending one, so that is a cycle."""
    by_name = {a.name: a for a in actions}
    index_of = {a.name: i for i, a in enumerate(actions)}
    path = [next(a.name for a in actions if a.name in pending)]
    on_path = {path[0]: 0}
    while True:
        step = next(dep for dep in by_name[path[-1]].after if dep in pending)
        position = by_name[path[-1]].after.index(step)
        if step in on_path:
            cycle = [*path[on_path[step]:], step]
            raise spec_error(f"cycle {' -> '.join(cycle)}",
                             at=("actions", index_of[path[-1]], "after", position))
        on_path[step] = len(path)
        path.append(step)


def spec_json_schema() -> dict[str, Any]:
    """Schema of one spec document, for editors (`# yaml-language-server: $schema=…`) and
    other tools: generated from the models the loader validates with, so the two agree
    (tests/test_spec_schema.py). What only the loader can check is listed in docs/spec.md."""
    schema = Service.model_json_schema()
    schema.pop("title", None)
    _defaults_as_written(schema)
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "reconciler service spec", **schema}


def _defaults_as_written(node: Any) -> None:
    """pydantic emits a field's default as the stored number (0.2); an editor should offer
    what a user would write ("200ms"), which also matches the property's own pattern."""
    if isinstance(node, list):
        for item in node:
            _defaults_as_written(item)
        return
    if not isinstance(node, dict):
        return
    default = node.get("default")
    if isinstance(default, int | float) and not isinstance(default, bool):
        if node.get("pattern") == DURATION_PATTERN:
            node["default"] = format_duration(default)
        elif node.get("pattern") == SIZE_PATTERN:
            node["default"] = format_size(int(default))
    for value in node.values():
        _defaults_as_written(value)
