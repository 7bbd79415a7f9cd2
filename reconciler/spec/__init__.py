"""The spec format (`model`) and loading it from a specs dir with precise errors (`load`)."""

from reconciler.spec.load import (
    FileOutcome,
    LoadResult,
    SpecError,
    SpecErrors,
    check_file_safety,
    load_specs,
    parse_text,
)
from reconciler.spec.model import (
    Action,
    Backoff,
    ExecHealth,
    Health,
    HttpHealth,
    LogsSpec,
    Service,
    StopSpec,
    TcpHealth,
    UnixHealth,
    spec_json_schema,
)
from reconciler.spec.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "Action",
    "Backoff",
    "ExecHealth",
    "FileOutcome",
    "Health",
    "HttpHealth",
    "LoadResult",
    "LogsSpec",
    "Service",
    "SpecError",
    "SpecErrors",
    "StopSpec",
    "TcpHealth",
    "UnixHealth",
    "check_file_safety",
    "format_duration",
    "format_size",
    "load_specs",
    "parse_duration",
    "parse_size",
    "parse_text",
    "spec_json_schema",
]
