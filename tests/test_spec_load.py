"""Loading specs: YAML with exact positions, the specs dir, last-good fallback, file safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yaml.nodes import MappingNode, ScalarNode

from reconciler.spec.load import (
    _LOADER,
    SpecError,
    SpecErrors,
    _compose_all,
    _could_nest_deeply,
    load_specs,
    parse_text,
)
from reconciler.spec.model import TcpHealth

VALID = """\
# yaml-language-server: $schema=../docs/spec.schema.json
name: web
description: public API
actions:
  - name: migrate
    cmd: [./manage.py, migrate]
  - name: api
    process: true
    cmd: [python3, -m, http.server, "8080", --bind, 127.0.0.1]
    after: [migrate]
    env: {PYTHONUNBUFFERED: "1", PORT: 8080}
    tcp_ports: [8080]
    backoff: {initial: 200ms, max: 30s, factor: 2, reset_after: 30s}
    stop: {signal: TERM, timeout: 10s}
    health:
      tcp: 8080
      interval: 2s
    logs: {keep: 3, max_size: 1MiB}
---
---
name: worker
actions:
  - {name: run, process: true, cmd: "exec sleep 1000"}
"""


def write(specs_dir: Path, name: str, text: str, mode: int = 0o644) -> Path:
    path = specs_dir / name
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecErrors) as exc:
        parse_text(textwrap.dedent(text), "f.yaml")
    assert exc.value.errors, "SpecErrors without errors"
    return [str(e) for e in exc.value.errors]


def service_doc(name: str, action: str = "main") -> str:
    return f"name: {name}\nactions:\n  - {{name: {action}, process: true, cmd: [sleep, '9']}}\n"


# --- one file -------------------------------------------------------------------------------

def test_valid_multi_document_file() -> None:
    web, worker = parse_text(VALID, "web.yaml")
    assert (web.name, web.description, worker.name) == ("web", "public API", "worker")
    migrate, api = web.actions
    assert not migrate.process and migrate.argv == ["./manage.py", "migrate"]
    assert api.after == ["migrate"] and api.env == {"PYTHONUNBUFFERED": "1", "PORT": "8080"}
    assert api.stop.signal == "SIGTERM" and api.logs.max_size == 1024 * 1024
    assert isinstance(api.health, TcpHealth) and api.health.tcp == 8080
    assert worker.actions[0].argv == ["/bin/sh", "-c", "exec sleep 1000"]


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "---\n", "---\n...\n", "---\n---\n",
                                  "--- ~\n"])
def test_a_file_without_services_is_an_error(text: str) -> None:
    """A half-written file (truncated, not yet written) must not read as "remove them all"."""
    with pytest.raises(SpecErrors) as caught:
        parse_text(text, "f.yaml")
    [error] = caught.value.errors
    assert str(error) == "f.yaml:1:1: has no services: delete the file to remove them"


def test_anchors_and_merge_keys_work() -> None:
    [svc] = parse_text(textwrap.dedent("""\
        name: web
        actions:
          - &base {name: a, process: true, cmd: [srv], env: {A: "1"}}
          - <<: *base
            name: b
            env: {A: "2"}
        """), "f.yaml")
    assert [(a.name, a.cmd, a.env) for a in svc.actions] == [
        ("a", ["srv"], {"A": "1"}), ("b", ["srv"], {"A": "2"})]


ERROR_CASES = [
    pytest.param("name: web\nactions: [\n",
                 "f.yaml:3:1: YAML syntax error: did not find expected node content",
                 id="syntax-error"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    cmdd: [y]\n",
                 "f.yaml:5:5: actions[0]: unknown key 'cmdd' (did you mean 'cmd'?)",
                 id="unknown-key"),
    pytest.param("name: web\nactions:\n  - name: a\n    process: true\n",
                 "f.yaml:3:5: actions[0]: missing required key 'cmd'",
                 id="missing-key"),
    pytest.param("name: web\n", "f.yaml:1:1: missing required key 'actions'",
                 id="missing-top-level-key"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    tcp_ports: 8080\n",
                 "f.yaml:5:16: actions[0].tcp_ports: must be a list", id="wrong-type"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    process: maybe\n",
                 "f.yaml:5:14: actions[0].process: must be true or false", id="wrong-bool"),
    pytest.param("name: web\nactions:\n  - {name: a, cmd: x}\n  - name: b\n    cmd: y\n"
                 "    restart: sometimes\n",
                 "f.yaml:6:14: actions[1].restart: must be one of always, on-failure, never",
                 id="bad-enum"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    name: b\n",
                 "f.yaml:5:5: duplicate key 'name' (first at line 3)", id="duplicate-key"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    stop: {timeout: 10}\n",
                 "f.yaml:5:21: actions[0].stop.timeout: durations need a unit, e.g. '10s'",
                 id="bare-duration"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    stop:\n"
                 "      timeout: 10 sec\n",
                 "f.yaml:6:16: actions[0].stop.timeout: invalid duration '10 sec'",
                 id="bad-duration"),
    pytest.param("name: web\nactions:\n  - name: a\n    process: true\n    cmd: [x]\n"
                 "    health:\n      tcp: 8080\n      http: http://127.0.0.1:8080/\n",
                 "f.yaml:7:7: actions[0].health: needs exactly one of tcp, unix, http, exec "
                 "(found tcp and http)", id="two-probes"),
    pytest.param("name: web\nactions:\n  - name: a\n    process: true\n    cmd: [x]\n"
                 "    health:\n      tcp: 8080\n      intervall: 2s\n",
                 "f.yaml:8:7: actions[0].health: unknown key 'intervall' "
                 "(did you mean 'interval'?)", id="probe-unknown-key"),
    pytest.param("name: web\nactions:\n  - name: a\n    process: true\n    cmd: [x]\n"
                 "    health: {tcp: 8080, timeout: 3}\n",
                 "f.yaml:6:34: actions[0].health.timeout: durations need a unit, e.g. '3s'",
                 id="probe-field-error"),
    pytest.param("name: web\nactions:\n  - name: migrate\n    cmd: [x]\n  - name: api\n"
                 "    cmd: [y]\n    after: [migrat]\n",
                 "f.yaml:7:13: actions[1].after[0]: unknown action or "
                 "service 'migrat' (did you mean 'migrate'?)", id="after-unknown"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    after: [b]\n"
                 "  - name: b\n    cmd: [y]\n    after: [a]\n",
                 "f.yaml:8:13: actions[1].after[0]: cycle a -> b -> a", id="after-cycle"),
    pytest.param("name: web\nactions:\n  - name: a\n"
                 "    cmd: !!python/object/apply:os.system [id]\n",
                 "f.yaml:4:10: unsupported tag '!!python/object/apply:os.system' "
                 "(specs are plain data)", id="unsafe-tag"),
    pytest.param("name: a\nactions: [{name: x, cmd: y}]\n---\n- just\n- a list\n",
                 "f.yaml:4:1: a spec document must be a mapping (a service with name and "
                 "actions), not a list", id="non-mapping-document"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    env:\n      DEBUG: yes\n",
                 "f.yaml:6:14: actions[0].env.DEBUG: must be a string, not a boolean; "
                 "YAML read `yes` as a boolean; quote it", id="bool-env"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [chmod, 0755, f]\n",
                 "f.yaml:4:18: actions[0].cmd[1]: must be a string; YAML read `0755` as a "
                 "number; quote it", id="octal-cmd-item"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    env: {UMASK: 0022}\n",
                 "f.yaml:5:18: actions[0].env.UMASK: YAML read `0022` as the number 18; "
                 "quote it", id="octal-env"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    env: {on: b}\n",
                 "f.yaml:5:11: mapping keys must be strings; YAML read `on` as a boolean; "
                 "quote it", id="bool-key"),
    pytest.param("name: Web\nactions: [{name: a, cmd: x}]\n",
                 "f.yaml:1:7: name: invalid name 'Web': use lowercase letters", id="bad-name"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n    env: {1X: a}\n",
                 "f.yaml:5:11: actions[0].env.1X: invalid environment variable name '1X'",
                 id="bad-env-name"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: x\n    singleton: true\n",
                 "f.yaml:5:16: actions[0].singleton: only process actions can set singleton",
                 id="one-shot-singleton"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: [x]\n  - name: a\n    cmd: [y]\n",
                 "f.yaml:5:11: actions[1].name: duplicate action name 'a' (first at actions[0])",
                 id="duplicate-action"),
    pytest.param("name: web\nactions:\n  - name: a\n    process: true\n    cmd: [x]\n"
                 "    tcp_ports: [80, 81, 80]\n",
                 "f.yaml:6:25: actions[0].tcp_ports[2]: port 80 is listed twice",
                 id="duplicate-port"),
    pytest.param("a: &x [*x]\n", "f.yaml:1:4: an alias refers to the collection that "
                 "contains it", id="recursive-alias"),
    pytest.param("name: web\nactions: *nowhere\n", "f.yaml:2:10: YAML syntax error: found "
                 "undefined alias", id="undefined-alias"),
    pytest.param("name: web\nactions:\n  - name: a\n    cmd: \x01\n",
                 "f.yaml:4:10: character '\\x01' is not allowed in YAML", id="control-char"),
    pytest.param("name: a\nactions: [{name: x, cmd: y}]\n---\nname: a\n"
                 "actions: [{name: x, cmd: y}]\n",
                 "f.yaml:4:7: service 'a' is already defined in this file (line 1)",
                 id="duplicate-service-in-file"),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_error_positions(text: str, expected: str) -> None:
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors


_WITHOUT_LIBYAML = """
import json, sys, textwrap
sys.modules["yaml._yaml"] = None  # as on a system whose PyYAML was built without libyaml
import yaml
from reconciler.spec.load import SpecErrors, parse_text
assert not yaml.__with_libyaml__
found = []
for text in json.load(sys.stdin):
    try:
        parse_text(textwrap.dedent(text), "f.yaml")
        found.append([])
    except SpecErrors as exc:
        found.append([str(e) for e in exc.errors])
print(json.dumps(found))
"""


def test_pure_python_yaml_gives_the_same_positions() -> None:
    """Without libyaml the messages of syntax errors differ; the positions must not. Run in
    a fresh interpreter that cannot import libyaml, as on a host without it."""
    cases = [case.values for case in ERROR_CASES]
    done = subprocess.run([sys.executable, "-c", _WITHOUT_LIBYAML], input=json.dumps(
        [text for text, _ in cases]), capture_output=True, text=True, check=True, timeout=60,
        cwd=Path(__file__).resolve().parents[1])
    for (text, expected), errors in zip(cases, json.loads(done.stdout), strict=True):
        position = expected.split(" ", 1)[0]
        assert any(e.startswith(position) for e in errors), (text, errors)


def test_every_problem_in_a_file_is_reported() -> None:
    errors = errors_of("""\
        name: web
        actions:
          - name: a
            cmd: [x]
            restart: sometimes
            cmdd: 1
          - name: b
        """)
    assert [e.split(": ")[0] for e in errors] == ["f.yaml:5:14", "f.yaml:6:5", "f.yaml:7:5"]


def test_errors_sort_and_print_as_file_line_column() -> None:
    error = SpecError("specs/web.yaml", 3, 5, "boom")
    assert str(error) == "specs/web.yaml:3:5: boom"
    assert sorted([SpecError("b", 1, 1, "x"), SpecError("a", 9, 1, "x"),
                   SpecError("a", 2, 7, "x")])[0] == SpecError("a", 2, 7, "x")


def test_very_deep_nesting_is_an_error_not_a_crash() -> None:
    for text in ("[" * 100_000 + "]" * 100_000, "- " * 50_000 + "x", "a: " + "[" * 900 + "]" * 900):
        errors = errors_of(text)
        assert errors[0].startswith("f.yaml:1:")


def test_deep_document_among_many_small_ones_is_still_scanned() -> None:
    """The depth scan runs per document (issue 13: 200 small documents skip it), yet a deep
    one after them is still refused at its place (libyaml's own limit, met by the scan
    first, or the scan's: either names the nesting)."""
    small = "---\n".join(service_doc(f"s{i:03d}") for i in range(300))
    for deep in ("a: " + "[" * 1500 + "]" * 1500 + "\n", "- " * 1500 + "x\n"):
        errors = errors_of(small + "---\n" + deep)
        line = small.count("\n") + 2
        assert errors[0].startswith(f"f.yaml:{line}:"), errors[0]
        assert "nesting depth" in errors[0] or "nested more than" in errors[0], errors[0]


def test_a_marker_line_inside_a_deep_collection_does_not_hide_its_depth() -> None:
    """A `---` line cannot split a collection: in a flow one it is a syntax error, before
    the composer nests past it; no crash, one error either way."""
    for text in ("[" * 1500 + "\n---\n" + "[" * 1500 + "]" * 3000,
                 "[" * 20_000 + "\n---\n" + "]" * 20_000,
                 "[" * 999 + "\n...\n" + "[" * 999 + "\n---\n" + "[" * 999 + "]" * 2997):
        errors = errors_of(text)
        assert len(errors) == 1 and errors[0].startswith("f.yaml:"), errors


def test_many_small_documents_skip_the_depth_scan() -> None:
    """What the cut is: 300 services hold ~3600 indicators, none of their documents 1000."""
    small = "---\n".join(service_doc(f"s{i:03d}") for i in range(300))
    assert sum(small.count(c) for c in "[{-:?") >= 2000
    assert not _could_nest_deeply(small)
    assert _could_nest_deeply(small + "---\n" + "- " * 1001 + "x\n")
    assert not _could_nest_deeply(small + "---\n" + "- " * 999 + "x\n")


_SCALAR_ZOO = """\
a: [yes, no, 'yes', "no", on, off, ~, null, '', 0755, '0755', 1.10, 1e3, .inf, -.nan, 0x1f]
b: {t: 2001-12-14t21:59:43.10-05:00, d: 2002-12-14, s: "2002-12-14", n: 12_000, x: 0b101}
c: [true, True, TRUE, tRUE, 'true', plain text, "quoted text", !!str 5, !!int "7", 190:20:30]
d: |
  block
e: >
  folded
---
- yes
- name
"""


def _nodes(node: Any) -> list[tuple[str, str, int, int]]:
    if isinstance(node, ScalarNode):
        return [(node.tag, node.value, node.start_mark.line, node.start_mark.column)]
    children = [n for pair in node.value for n in pair] if isinstance(node, MappingNode) \
        else node.value
    return [(node.tag, "", node.start_mark.line, node.start_mark.column),
            *(item for child in children for item in _nodes(child))]


def test_remembered_tags_are_the_loaders_own() -> None:
    """The composing loader remembers each scalar's resolved tag (issue 13): cold and warm,
    every node has the tag, value and mark the plain safe loader gives it."""
    expected = [_nodes(root) for root in yaml.compose_all(_SCALAR_ZOO, Loader=_LOADER)]
    for _ in range(2):  # the second time from what the first remembered
        assert [_nodes(root) for root in _compose_all(_SCALAR_ZOO)] == expected
    assert {tag for tag, *_ in expected[0]} >= {
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null", "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:str"}


# --- never a traceback ----------------------------------------------------------------------

@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_random_text_never_raises_anything_but_spec_errors(text: str) -> None:
    try:
        parse_text(text, "f.yaml")
    except SpecErrors as exc:
        assert all(isinstance(e, SpecError) and e.line >= 1 and e.column >= 1
                   for e in exc.errors)


_YAML_BITS = st.sampled_from([
    "\n", " ", "  ", "- ", ": ", "[", "]", "{", "}", ",", "'", '"', "#", "&a ", "*a", "<<: ",
    "!!python/object:os.system ", "!!str ", "!!int ", "yes", "0755", "~", "---\n", "...\n",
    "name", "cmd", "actions", "health", "tcp: ", "5s", "1x", "\t", "\x00", "\ud800", "é",
    "?", "|", ">", "%YAML 1.1\n", "!", "@", "`",
])


@st.composite
def mutated_valid_yaml(draw: st.DrawFn) -> str:
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        if kind == "insert":
            text = text[:position] + draw(_YAML_BITS) + text[position:]
        elif kind == "delete":
            text = text[:position] + text[position + draw(st.integers(1, 20)):]
        else:
            text = text[:position] + draw(_YAML_BITS) + text[position + 1:]
    return text


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated_valid_yaml())
def test_mutated_yaml_never_raises_anything_but_spec_errors(text: str) -> None:
    try:
        services = parse_text(text, "f.yaml")
    except SpecErrors as exc:
        lines = text.count("\n") + 2
        assert all(1 <= e.line <= lines and e.column >= 1 for e in exc.errors), exc.errors
    else:
        assert all(s.actions for s in services)


# --- the specs dir --------------------------------------------------------------------------

def test_load_good_dir(specs_dir: Path) -> None:
    write(specs_dir, "web.yaml", VALID)
    write(specs_dir, "b.yml", service_doc("b"))
    write(specs_dir, ".hidden.yaml", "not: [valid\n")
    write(specs_dir, "notes.txt", "not: [valid\n")
    write(specs_dir, "web.yaml.orig", "not: [valid\n")
    (specs_dir / "sub").mkdir()
    write(specs_dir / "sub", "deep.yaml", service_doc("deep"))
    result = load_specs(specs_dir)
    assert result.ok and result.dir_error is None and result.errors == ()
    assert list(result.files) == ["b.yml", "web.yaml"]
    assert set(result.services) == {"web", "worker", "b"}
    assert result.sources == {"b": "b.yml", "web": "web.yaml", "worker": "web.yaml"}
    outcome = result.files["web.yaml"]
    assert outcome.content == VALID and not outcome.used_last_good and outcome.errors == ()
    assert outcome.hash is not None and len(outcome.hash) == 64


def test_errors_carry_the_path_and_sort_by_file(specs_dir: Path) -> None:
    write(specs_dir, "b.yaml", "name: b\nactions: [\n")
    write(specs_dir, "a.yaml", "name: a\nactions:\n  - name: x\n    cmdd: [a]\n")
    result = load_specs(specs_dir)
    assert not result.ok
    first = result.errors[0]
    assert (first.file, first.line, first.column) == (str(specs_dir / "a.yaml"), 3, 5)
    assert [e.file for e in result.errors] == sorted(e.file for e in result.errors)
    assert str(result.errors[-1]).startswith(f"{specs_dir / 'b.yaml'}:3:1: ")
    assert result.services == {} and result.files["a.yaml"].content is None


def test_duplicate_service_across_files_is_an_error_in_the_later_file(specs_dir: Path) -> None:
    write(specs_dir, "a.yaml", service_doc("web"))
    write(specs_dir, "b.yaml", service_doc("other") + "---\n" + service_doc("web"))
    result = load_specs(specs_dir)
    assert [str(e) for e in result.errors] == [
        f"{specs_dir / 'b.yaml'}:5:7: service 'web' is already defined in a.yaml"]
    assert set(result.services) == {"web"} and result.sources["web"] == "a.yaml"
    assert result.files["b.yaml"].content is None and result.files["a.yaml"].content


def test_last_good_used_when_a_file_is_broken(specs_dir: Path) -> None:
    good = service_doc("web")
    write(specs_dir, "web.yaml", "name: web\nactions: [\n")
    result = load_specs(specs_dir, {"web.yaml": good})
    outcome = result.files["web.yaml"]
    assert outcome.used_last_good and outcome.content is None and outcome.hash is None
    assert outcome.errors and result.errors == outcome.errors and not result.ok
    assert result.services["web"].actions[0].argv == ["sleep", "9"]
    assert result.sources == {"web": "web.yaml"}


def test_last_good_not_used_when_the_file_is_good(specs_dir: Path) -> None:
    write(specs_dir, "web.yaml", service_doc("web", action="new"))
    result = load_specs(specs_dir, {"web.yaml": service_doc("web", action="old")})
    assert result.ok and not result.files["web.yaml"].used_last_good
    assert [a.name for a in result.services["web"].actions] == ["new"]


def test_broken_file_without_last_good_contributes_nothing(specs_dir: Path) -> None:
    write(specs_dir, "web.yaml", service_doc("web") + "---\nname: [\n")
    result = load_specs(specs_dir, {"other.yaml": service_doc("other")})
    assert result.services == {} and not result.files["web.yaml"].used_last_good
    assert "other.yaml" not in result.files  # a vanished file contributes nothing


def test_last_good_that_now_clashes_is_not_used(specs_dir: Path) -> None:
    write(specs_dir, "a.yaml", service_doc("web"))
    write(specs_dir, "b.yaml", "broken: [\n")
    result = load_specs(specs_dir, {"b.yaml": service_doc("web", action="other")})
    assert not result.files["b.yaml"].used_last_good
    assert result.sources == {"web": "a.yaml"}


def test_last_good_used_when_the_file_is_refused(specs_dir: Path) -> None:
    write(specs_dir, "web.yaml", service_doc("web"), mode=0o666)
    result = load_specs(specs_dir, {"web.yaml": service_doc("web")})
    assert result.files["web.yaml"].used_last_good and "web" in result.services
    assert "writable by group or others" in result.errors[0].message


def test_invalid_utf8_is_an_error_at_1_1(specs_dir: Path) -> None:
    path = specs_dir / "bad.yaml"
    path.write_bytes(b"name: web\ndescription: caf\xe9\n")
    path.chmod(0o644)
    [error] = load_specs(specs_dir).errors
    assert (error.file, error.line, error.column) == (str(path), 1, 1)
    assert "not valid UTF-8 (bad byte at line 2, column 17)" in error.message


def test_missing_or_non_dir_specs_dir(tmp_path: Path) -> None:
    missing = load_specs(tmp_path / "nope")
    assert missing.dir_error and "does not exist" in missing.dir_error and not missing.ok
    assert missing.services == {} and missing.files == {}
    (tmp_path / "file").write_text("x")
    assert "not a directory" in (load_specs(tmp_path / "file").dir_error or "")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any directory")
def test_unreadable_specs_dir(specs_dir: Path) -> None:
    specs_dir.chmod(0)
    try:
        assert "permission denied" in (load_specs(specs_dir).dir_error or "")
    finally:
        specs_dir.chmod(0o755)


def test_empty_specs_dir_is_ok(specs_dir: Path) -> None:
    result = load_specs(specs_dir)
    assert result.ok and result.services == {} and result.files == {}


# --- file safety ----------------------------------------------------------------------------

def test_group_or_world_writable_file_is_refused(specs_dir: Path) -> None:
    path = write(specs_dir, "web.yaml", service_doc("web"), mode=0o666)
    error = SpecError(str(path), 1, 1, f"refusing {path}: writable by group or others "
                                       f"(mode 0666); run: chmod go-w {path}")
    result = load_specs(specs_dir)
    assert result.errors == (error,) and result.services == {}
    path.chmod(0o620)
    assert load_specs(specs_dir).errors != ()
    path.chmod(0o600)
    result = load_specs(specs_dir)
    assert result.errors == () and set(result.services) == {"web"}


def test_symlink_outside_the_specs_dir_is_refused(specs_dir: Path, tmp_path: Path) -> None:
    outside = write(tmp_path, "outside.yaml", service_doc("web"))
    (specs_dir / "web.yaml").symlink_to(outside)
    result = load_specs(specs_dir)
    [error] = result.errors
    assert "outside the specs dir" in error.message and result.services == {}


def test_symlink_inside_the_specs_dir_is_fine(specs_dir: Path) -> None:
    (specs_dir / "lib").mkdir()
    target = write(specs_dir / "lib", "web.yaml", service_doc("web"))
    (specs_dir / "web.yaml").symlink_to(target)
    (specs_dir / "rel.yaml").symlink_to("lib/web.yaml")
    result = load_specs(specs_dir)
    assert set(result.services) == {"web"}
    [error] = result.errors  # rel.yaml defines web again: a duplicate, not an unsafe file
    assert "already defined" in error.message and "refusing" not in error.message


def test_broken_symlink_is_refused(specs_dir: Path) -> None:
    (specs_dir / "web.yaml").symlink_to(specs_dir / "gone.yaml")
    [error] = load_specs(specs_dir).errors
    assert "broken symlink" in error.message


def test_non_regular_files_are_refused_without_blocking(specs_dir: Path) -> None:
    (specs_dir / "dir.yaml").mkdir()
    os.mkfifo(specs_dir / "fifo.yaml", 0o644)
    result = load_specs(specs_dir)
    assert [e.message.split(": ", 1)[1] for e in result.errors] == [
        "not a regular file (a directory); rename or remove it",
        "not a regular file (a FIFO); rename or remove it"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_file_owned_by_someone_else_is_refused(specs_dir: Path) -> None:
    path = write(specs_dir, "web.yaml", service_doc("web"))
    os.chown(path, 65534, 65534)
    [error] = load_specs(specs_dir).errors
    assert "not by root or" in error.message and "run: chown" in error.message


def test_oversized_file_is_refused(specs_dir: Path) -> None:
    write(specs_dir, "big.yaml", "# " + "x" * (1024 * 1024) + "\n")
    [error] = load_specs(specs_dir).errors
    assert "larger than" in error.message
