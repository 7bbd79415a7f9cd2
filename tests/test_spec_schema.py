"""The JSON Schema (`reconcile schema`, docs/spec.schema.json) and the loader agree.

Both come from the same pydantic models (reconciler/spec/model.py); these tests hold them to
the same verdicts: every example in docs/spec.md passes both, every spec in INVALID fails
both, and what only the loader can check (ranges of durations, cross-references) is listed
in LOADER_ONLY, as docs/spec.md lists it. Validation uses `jsonschema`, the reference
validator, with the dialect the schema declares.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from reconciler.spec.load import SpecErrors, load_specs, parse_text
from reconciler.spec.model import (
    _ONE_SHOT_VALUES,
    JSON_SCHEMA_DIALECT,
    PROCESS_ONLY,
    spec_json_schema,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC_DOC = ROOT / "docs" / "spec.md"
SCHEMA_FILE = ROOT / "docs" / "spec.schema.json"
# ```yaml opens a whole spec file; ```yaml fragment opens a piece of one (validated inside
# the action it belongs to). Any other info string after `yaml` is a mistake in the docs.
_FENCE = re.compile(r"^```yaml(?P<info>[^\n]*)\n(?P<body>.*?)^```\s*$", re.M | re.S)


def _validator() -> jsonschema.protocols.Validator:
    schema = spec_json_schema()
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


VALIDATOR = _validator()


def schema_errors(text: str) -> list[str]:
    """Schema violations of every document in `text` (a YAML 1.1 reading, as editors do)."""
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for document in yaml.safe_load_all(text) if document is not None
            for e in VALIDATOR.iter_errors(document)]


def loader_errors(text: str, state_dir: Path) -> list[str]:
    try:
        parse_text(text, "f.yaml", state_dir=state_dir)
    except SpecErrors as exc:
        return [str(e) for e in exc.errors]
    return []


def doc_examples() -> list[tuple[int, str, str]]:
    """(line, info, body) of every ```yaml block in docs/spec.md."""
    text = SPEC_DOC.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m["info"].strip(), m["body"])
            for m in _FENCE.finditer(text)]


def as_whole_spec(info: str, body: str) -> str:
    if info == "":
        return body
    assert info == "fragment", f"unknown yaml block kind {info!r}: use ```yaml or ```yaml fragment"
    action = textwrap.indent(body, "    ")
    return f"name: example\nactions:\n  - name: it\n{action}"


# --- the schema itself -----------------------------------------------------------------------

def test_the_schema_declares_the_dialect_it_is_written_in() -> None:
    """pydantic writes `$defs` and `prefixItems`: JSON Schema 2020-12, not draft-07."""
    schema = spec_json_schema()
    assert schema["$schema"] == JSON_SCHEMA_DIALECT == "https://json-schema.org/draft/2020-12/schema"
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "definitions" not in json.dumps(schema)


def test_the_committed_schema_file_is_the_generated_one() -> None:
    """docs/spec.schema.json is what editors point at: regenerate it with
    `python -m reconciler.cli schema > docs/spec.schema.json` after changing the models."""
    assert json.loads(SCHEMA_FILE.read_text()) == spec_json_schema()


def _subschemas(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, list):
        return [s for item in node for s in _subschemas(item)]
    if not isinstance(node, dict):
        return []
    return [node] + [s for value in node.values() for s in _subschemas(value)]


def test_every_default_in_the_schema_is_valid_by_its_own_schema() -> None:
    """Editors insert defaults: they must be what a user may write (`200ms`, not 0.2)."""
    schema = spec_json_schema()
    with_defaults = [s for s in _subschemas(schema) if "default" in s]
    assert len(with_defaults) > 20
    for sub in with_defaults:
        rooted = {**{k: v for k, v in sub.items() if k != "default"}, "$defs": schema["$defs"]}
        jsonschema.Draft202012Validator(rooted).validate(sub["default"])


def test_the_one_shot_rule_covers_every_process_only_key() -> None:
    assert set(_ONE_SHOT_VALUES) == {*PROCESS_ONLY, "health", "limits"}  # limits: max_rss only


# --- docs/spec.md ------------------------------------------------------------------------------

def test_docs_have_examples_and_almost_no_fragments() -> None:
    examples = doc_examples()
    assert len(examples) >= 2
    assert sum(info == "fragment" for _, info, _ in examples) <= 1


@pytest.mark.parametrize("line, info, body", doc_examples(),
                         ids=[f"spec.md:{line}" for line, _, _ in doc_examples()])
def test_every_example_in_the_docs_passes_the_loader_and_the_schema(
        line: int, info: str, body: str, specs_dir: Path, state_dir: Path) -> None:
    text = as_whole_spec(info, body)
    assert schema_errors(text) == []
    # The path `reconcile validate` takes: a file in a specs dir, checked against a state dir.
    (specs_dir / "example.yaml").write_text(text)
    os.chmod(specs_dir / "example.yaml", 0o644)
    for env_file in re.findall(r"[\w.-]+\.env\b", text):  # the env files it names
        (specs_dir / env_file).write_text("EXAMPLE=1\n")
    result = load_specs(specs_dir, state_dir=state_dir)
    assert result.ok, [str(e) for e in result.errors]
    assert result.services


# --- agreement on valid and invalid specs ------------------------------------------------------

def action(fields: str, *, process: bool = True) -> str:
    """A spec with one action named `api` carrying `fields` (YAML block lines)."""
    cmd = "" if "cmd:" in fields else "    cmd: [srv]\n"
    flag = "    process: true\n" if process else ""
    return f"name: web\nactions:\n  - name: api\n{cmd}{flag}{fields}\n"


VALID = {
    "signal as a number": action("    stop: {signal: 15}"),
    "signal in lower case without SIG": action("    stop: {signal: term}"),
    "signal with spaces around": action("    stop: {signal: ' SIGHUP '}"),
    "signal alias": action("    stop: {signal: SIGIOT}"),
    "signal number as 15.0": action("    stop: {signal: 15.0}"),
    "http URL in capitals": action("    health: {http: 'HTTP://127.0.0.1:8080/health'}"),
    "http URL to IPv6 with port": action("    health: {http: 'http://[::1]:65535/x?y=1'}"),
    "http URL with a user": action("    health: {http: 'http://u:p@localhost/'}"),
    "integer written as 5.0": action("    logs: {keep: 5.0}"),
    "bounds, low end": action("    tcp_ports: [1]\n    logs: {keep: 0, max_size: 4KiB}\n"
                              "    backoff: {initial: 10ms, max: 10ms, factor: 1, "
                              "reset_after: 1s}"),
    "bounds, high end": action("    tcp_ports: [65535]\n    logs: {keep: 100, max_size: 1GiB}\n"
                               "    backoff: {factor: 10, max: 1h, reset_after: 24h}\n"
                               "    health: {tcp: 1, failures: 100}"),
    "env numbers": action("    env: {PORT: 8080, RATIO: 0.5, EMPTY: ''}"),
    "a shell command": action("    cmd: 'exec srv --port 8080'"),
    "exec probe": action("    health: {exec: [curl, -f, 'http://127.0.0.1/']}"),
    "unix probe": action("    health: {unix: api.sock}"),
    "one-shot with empty process-only keys": action(
        "    singleton: false\n    kill_others: false\n    sockets: []\n    tcp_ports: []\n"
        "    pidfile: null\n    health: null", process=False),
    "null restart": action("    restart: null"),
    "limits at their bounds": action("    limits: {max_rss: 1MiB, nofile: 1, nproc: unlimited, "
                                     "core: 0, memlock: 0B, as: 1MiB, fsize: unlimited}"),
}


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_valid_specs_pass_both(text: str, state_dir: Path) -> None:
    assert loader_errors(text, state_dir) == []
    assert schema_errors(text) == []


INVALID = {
    # unknown keys
    "unknown action key": action("    restrat: always"),
    "unknown top-level key": "nmae: web\nname: web\nactions:\n  - {name: a, cmd: [x]}\n",
    "unknown backoff key": action("    backoff: {intial: 1s}"),
    "missing cmd": "name: web\nactions:\n  - {name: a}\n",
    "missing name": "actions:\n  - {name: a, cmd: [x]}\n",
    # signals
    "unknown signal name": action("    stop: {signal: SIGFOO}"),
    "signal number 0": action("    stop: {signal: 0}"),
    "unknown signal number": action("    stop: {signal: 99}"),
    "signal with a space inside": action("    stop: {signal: 'SIG TERM'}"),
    "signal SIG twice": action("    stop: {signal: SIGSIGTERM}"),
    "signal as a boolean": action("    stop: {signal: true}"),
    "signal as a list": action("    stop: {signal: [TERM]}"),
    # health URLs
    "https health URL": action("    health: {http: 'https://127.0.0.1:8443/health'}"),
    "ftp health URL": action("    health: {http: 'ftp://127.0.0.1/'}"),
    "URL without a host": action("    health: {http: 'http://:8080/'}"),
    "URL with port 65536": action("    health: {http: 'http://127.0.0.1:65536/'}"),
    "URL with a space in front": action("    health: {http: ' http://127.0.0.1/'}"),
    "URL without a scheme": action("    health: {http: '127.0.0.1:8080/health'}"),
    # numbers out of range
    "port 0": action("    tcp_ports: [0]"),
    "negative port": action("    tcp_ports: [-1]"),
    "port too large": action("    tcp_ports: [65536]"),
    "port listed twice": action("    tcp_ports: [8080, 8080]"),
    "negative keep": action("    logs: {keep: -1}"),
    "keep too large": action("    logs: {keep: 101}"),
    "keep 5.5": action("    logs: {keep: 5.5}"),
    "zero failures": action("    health: {tcp: 8080, failures: 0}"),
    "too many failures": action("    health: {tcp: 8080, failures: 101}"),
    "factor below 1": action("    backoff: {factor: 0.5}"),
    "factor too large": action("    backoff: {factor: 11}"),
    "negative duration": action("    stop: {timeout: -5s}"),
    # durations and sizes
    "duration without a unit": action("    stop: {timeout: 10}"),
    "duration with a word unit": action("    stop: {timeout: 10 sec}"),
    "duration with a non-ASCII digit": action("    stop: {timeout: \u0663s}"),
    "size without a unit": action("    logs: {max_size: 10485760}"),
    "size with a bad unit": action("    logs: {max_size: 10 mb}"),
    # names
    "capital service name": "name: Web\nactions:\n  - {name: a, cmd: [x]}\n",
    "dotted action name": "name: web\nactions:\n  - {name: a.b, cmd: [x]}\n",
    "name starting with a dash": "name: -web\nactions:\n  - {name: a, cmd: [x]}\n",
    "name too long": f"name: {'w' * 65}\nactions:\n  - {{name: a, cmd: [x]}}\n",
    "after naming an invalid name": "name: web\nactions:\n  - {name: a, cmd: [x]}\n"
                                    "  - {name: b, cmd: [x], after: [A.b]}\n",
    "bad env name": action("    env: {1X: a}"),
    # wrong types
    "process as a string": action('    process: "yes"', process=False),
    "process as a number": action("    process: 1", process=False),
    "keep as a string": action('    logs: {keep: "5"}'),
    "port as a string": action('    tcp_ports: ["8080"]'),
    "factor as a string": action('    backoff: {factor: "2"}'),
    "factor as a boolean": action("    backoff: {factor: true}"),
    "cmd as a number": action("    cmd: 5"),
    "empty argv": action("    cmd: []"),
    "blank program": action("    cmd: ['  ', x]"),
    "blank shell command": action("    cmd: '   '"),
    "NUL in an argv item": action('    cmd: ["srv", "a\\0b"]'),
    "NUL in a path": action('    cwd: "/srv\\0x"'),
    "env value a boolean": action("    env: {A: true}"),
    "env as a list": action("    env: [A]"),
    "actions as a mapping": "name: web\nactions: {a: {cmd: [x]}}\n",
    "no actions": "name: web\nactions: []\n",
    "after as a string": "name: web\nactions:\n  - {name: a, cmd: [x]}\n"
                         "  - {name: b, cmd: [x], after: a}\n",
    "health as a number": action("    health: 8080"),
    "health without a probe": action("    health: {interval: 1s}"),
    "health with two probes": action("    health: {tcp: 8080, unix: a.sock}"),
    "restart policy unknown": action("    restart: sometimes"),
    "description as a number": "name: web\ndescription: 5\nactions:\n  - {name: a, cmd: [x]}\n",
    "a document that is a list": "- name: web\n",
    # process-only keys on a one-shot
    "health on a one-shot": action("    health: {tcp: 8080}", process=False),
    "ports on a one-shot": action("    tcp_ports: [8080]", process=False),
    "singleton one-shot": action("    singleton: true", process=False),
    "pidfile on a one-shot": action("    pidfile: a.pid", process=False),
    "unlimited open files": action("    limits: {nofile: unlimited}"),
    "no open files": action("    limits: {nofile: 0}"),
    "a size limit without a unit": action("    limits: {core: 10}"),
    "an unknown limit": action("    limits: {rss: 1GiB}"),
}


@pytest.mark.parametrize("text", INVALID.values(), ids=INVALID.keys())
def test_invalid_specs_fail_both(text: str, state_dir: Path) -> None:
    assert loader_errors(text, state_dir), "the loader accepted it"
    assert schema_errors(text), "the JSON Schema accepted it"


# What a JSON Schema cannot say: ranges of values that are strings there (durations, sizes),
# relations between values, names that must exist elsewhere, facts of YAML and of the host.
# docs/spec.md ("What only the loader checks") lists the same.
LOADER_ONLY = {
    "duration above its range": action("    stop: {timeout: 2h}"),
    "duration below its range": action("    backoff: {initial: 1ms}"),
    "size below its range": action("    logs: {max_size: 1KiB}"),
    "size limit below its range": action("    limits: {as: 4KiB}"),
    "max shorter than initial": action("    backoff: {initial: 5s, max: 1s}"),
    "duplicate action names": "name: web\nactions:\n  - {name: a, cmd: [x]}\n"
                              "  - {name: a, cmd: [y]}\n",
    "unknown after target": "name: web\nactions:\n  - {name: a, cmd: [x], after: [b]}\n",
    "dependency cycle": "name: web\nactions:\n  - {name: a, cmd: [x], after: [b]}\n"
                        "  - {name: b, cmd: [x], after: [a]}\n",
    "relative path climbing out of run/": action("    pidfile: ../state.db"),
    "env number YAML changes": action("    env: {MODE: 0755}"),
    "duplicate YAML key": action("    restart: always\n    restart: never"),
}


@pytest.mark.parametrize("text", LOADER_ONLY.values(), ids=LOADER_ONLY.keys())
def test_what_only_the_loader_checks(text: str, state_dir: Path) -> None:
    """The loader refuses these; the schema cannot tell. If the schema learns to refuse one,
    move it to INVALID (and out of docs/spec.md's list)."""
    assert loader_errors(text, state_dir)
    assert schema_errors(text) == []
