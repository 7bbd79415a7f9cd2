"""Spec loading never produces a traceback: any text, any bytes, any mutation of a valid
spec either parses or yields `file:line:column: message` errors whose positions exist in
the text. Reproducible: hypothesis is derandomized and has no example database."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import cli
from reconciler.spec.load import SpecError, SpecErrors, load_specs, parse_text

FUZZ = settings(derandomize=True, deadline=None, database=None, max_examples=300,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
ERROR_LINE = re.compile(r"^(?P<file>.+):(?P<line>[1-9]\d*):(?P<column>[1-9]\d*): (?P<msg>.+)$")

VALID = """\
name: web
description: public API
actions:
  - name: migrate
    cmd: [./manage.py, migrate]
  - name: api
    process: true
    cmd: [python3, -m, http.server, "8080", --bind, 127.0.0.1]
    after: [migrate]
    env: {PYTHONUNBUFFERED: "1", MODE: "0755"}
    singleton: true
    pidfile: api.pid
    sockets: [api.sock]
    tcp_ports: [8080]
    kill_others: false
    restart: always
    backoff: {initial: 200ms, max: 30s, factor: 2, reset_after: 30s}
    stop: {signal: SIGTERM, timeout: 10s}
    health: {tcp: 8080, interval: 2s, timeout: 1s, failures: 3}
    logs: {keep: 5, max_size: 10MiB}
---
name: other
actions:
  - {name: a, process: true, cmd: "sleep 10", health: {exec: "true"}}
"""
TOKENS = ["", " ", "\n", "\t", ":", "- ", "[", "]", "{", "}", ",", "'", '"', "&a", "*a", "<<",
          "!!str", "!!python/object:os.system", "!x", "%YAML 1.1", "---", "...", "#", "|", ">",
          "yes", "no", "0755", "1.10", "~", "null", "-1", "99999999999999999999", "1e400",
          "\u2028", "\u0085", "\r", "\x00", "\ufeff", "é", "🙂", "name", "actions", "cmd",
          "process", "health", "tcp", "unknownkey", "10MiB", "5", "true", "@", "`"]


def _lines_upper_bound(text: str) -> int:
    # YAML also breaks lines at \r, NEL, LS and PS; count every kind so either view fits
    return len(re.split("\r\n|[\n\r\x85\u2028\u2029]", text)) + 1


def check_errors(errors: list[SpecError], text: str, filename: str) -> None:
    assert errors, "SpecErrors without errors"
    longest = max((len(line) for line in text.split("\n")), default=0)
    for error in errors:
        assert error.file == filename
        assert 1 <= error.line <= _lines_upper_bound(text), (error, text)
        assert 1 <= error.column <= longest + 2, (error, text)
        assert error.message and "\n" not in error.message.strip("\n"), error
        match = ERROR_LINE.match(str(error))
        assert match is not None, str(error)
        assert int(match["line"]) == error.line and int(match["column"]) == error.column
        assert "Traceback" not in error.message


def parse_or_errors(text: str, filename: str = "f.yaml") -> None:
    try:
        services = parse_text(text, filename)
    except SpecErrors as exc:
        check_errors(exc.errors, text, filename)
    else:
        assert all(s.name for s in services)


@FUZZ
@given(st.text(max_size=400))
def test_random_text_never_raises(text: str) -> None:
    parse_or_errors(text)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=60).map("".join))
def test_yamlish_token_soup_never_raises(text: str) -> None:
    parse_or_errors(text)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = VALID
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "replace", "dup-line", "drop-line",
                                     "swap-lines", "indent"]))
        lines = text.split("\n")
        if kind == "delete" and text:
            a = draw(st.integers(0, len(text) - 1))
            text = text[:a] + text[a + draw(st.integers(1, 20)):]
        elif kind == "insert":
            a = draw(st.integers(0, len(text)))
            text = text[:a] + draw(st.sampled_from(TOKENS) | st.text(max_size=5)) + text[a:]
        elif kind == "replace" and text:
            a = draw(st.integers(0, len(text) - 1))
            text = text[:a] + draw(st.sampled_from(TOKENS)) + text[a + 1:]
        elif kind == "dup-line":
            i = draw(st.integers(0, len(lines) - 1))
            text = "\n".join([*lines[:i + 1], lines[i], *lines[i + 1:]])
        elif kind == "drop-line":
            i = draw(st.integers(0, len(lines) - 1))
            text = "\n".join(lines[:i] + lines[i + 1:])
        elif kind == "swap-lines" and len(lines) > 1:
            i = draw(st.integers(0, len(lines) - 2))
            lines[i], lines[i + 1] = lines[i + 1], lines[i]
            text = "\n".join(lines)
        elif kind == "indent":
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = draw(st.sampled_from(["", " ", "  ", "\t"])) + lines[i].lstrip()
            text = "\n".join(lines)
    return text


def test_the_seed_spec_is_valid() -> None:
    assert [s.name for s in parse_text(VALID, "f.yaml")] == ["web", "other"]


@FUZZ
@given(mutated())
def test_mutated_valid_specs_never_raise(text: str) -> None:
    parse_or_errors(text)


NAMES = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True)
# printable text: YAML 1.1 itself forbids control characters and folds NEL/LS/PS, which is
# PyYAML's business (and reported as file:line:column errors), not a round-trip promise
ARG = st.text(st.characters(whitelist_categories=("L", "N", "P", "S", "Zs")),
              min_size=1, max_size=12)
PROGRAM = st.from_regex(r"[A-Za-z0-9_./-]{1,12}", fullmatch=True)
DURATION = st.integers(10, 30_000).map(lambda n: f"{n}ms")  # within the bounds, ≤ 30s max


@st.composite
def valid_service(draw: st.DrawFn) -> dict[str, object]:
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    actions = []
    for i, name in enumerate(names):
        process = draw(st.booleans())
        action: dict[str, object] = {"name": name, "cmd": [draw(PROGRAM),
                                                            *draw(st.lists(ARG, max_size=3))]}
        if process:
            action["process"] = True
            if draw(st.booleans()):
                action["tcp_ports"] = draw(st.lists(st.integers(1, 65535), max_size=3,
                                                    unique=True))
            if draw(st.booleans()):
                action["singleton"] = True
            if draw(st.booleans()):
                action["backoff"] = {"initial": draw(DURATION), "factor": 2}
        if i and draw(st.booleans()):
            action["after"] = [names[0]]
        if draw(st.booleans()):
            action["env"] = draw(st.dictionaries(
                st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), ARG, max_size=3))
        actions.append(action)
    return {"name": draw(NAMES), "description": draw(ARG), "actions": actions}


@FUZZ
@given(valid_service(), st.sampled_from(["block", "flow", "json"]))
def test_generated_valid_specs_load_and_keep_their_values(service: dict[str, object],
                                                         style: str) -> None:
    if style == "json":
        text = json.dumps(service, ensure_ascii=False)  # YAML 1.1 lacks \\u surrogate pairs
    else:
        text = yaml.safe_dump(service, default_flow_style=style == "flow", allow_unicode=True)
    [loaded] = parse_text(text, "f.yaml")
    assert loaded.name == service["name"]
    actions = service["actions"]
    assert isinstance(actions, list)
    assert [a.name for a in loaded.actions] == [a["name"] for a in actions]
    for got, want in zip(loaded.actions, actions, strict=True):
        assert list(got.cmd) == want["cmd"]  # type: ignore[arg-type]
        assert dict(got.env) == want.get("env", {})


FILES = st.lists(st.tuples(st.sampled_from(["a.yaml", "b.yml", "c.yaml", ".hidden.yaml",
                                            "d.txt"]),
                           st.binary(max_size=200) | mutated().map(str.encode)
                           | st.sampled_from([VALID.encode(), b"\xff\xfe", b"\x00" * 5])),
                 max_size=4)


def _write_dir(root: Path, files: list[tuple[str, bytes]]) -> Path:
    specs = root / "specs"
    specs.mkdir()
    for name, data in files:
        (specs / name).write_bytes(data)
        os.chmod(specs / name, 0o644)
    return specs


@FUZZ
@given(FILES)
def test_load_specs_and_cli_validate_never_raise(files: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        specs = _write_dir(Path(tmp), files)
        loaded = load_specs(specs)
        for error in loaded.errors:
            assert ERROR_LINE.match(str(error)), str(error)
            assert Path(error.file).parent == specs
            assert error.line >= 1 and error.column >= 1
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["validate", str(specs)])
        assert code in (0, 2), err.getvalue()
        assert (code == 0) == loaded.ok
        assert "Traceback" not in err.getvalue() and "internal error" not in err.getvalue()
        for line in err.getvalue().splitlines():
            assert ERROR_LINE.match(line) or line.startswith("reconcile: "), line
        with contextlib.redirect_stdout(io.StringIO()) as jout:
            assert cli.main(["validate", str(specs), "-o", "json"]) == code
        assert [f"{e['file']}:{e['line']}:{e['column']}: {e['message']}" for e in json.loads(
            jout.getvalue())["errors"] if e["file"] is not None] == [str(e) for e in loaded.errors]
