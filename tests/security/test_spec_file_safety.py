"""Whoever can write a spec can run commands as the reconciler's user: spec files that others
could have written, and symlinks leading out of the specs dir, are refused with a message
that says how to fix it; unsafe YAML tags never construct objects."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.spec.load import SpecErrors, load_specs, parse_text
from tests.security.common import write_spec

GOOD = "name: a\nactions:\n  - {name: x, cmd: [a]}\n"


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666, 0o777, 0o620, 0o602])
def test_spec_writable_by_group_or_others_is_refused(specs_dir: Path, mode: int,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = write_spec(specs_dir, "a.yaml", GOOD, mode=mode)
    loaded = load_specs(specs_dir)
    assert loaded.services == {}
    [error] = loaded.errors
    assert (error.file, error.line, error.column) == (str(path), 1, 1)
    assert "writable by group or others" in error.message
    assert f"chmod go-w {path}" in error.message
    assert cli.main(["validate", str(specs_dir)]) == 2
    assert f"{path}:1:1: refusing" in capsys.readouterr().err


def test_spec_owned_by_another_user_is_refused(specs_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown a file to another user")
    path = write_spec(specs_dir, "a.yaml", GOOD)
    os.chown(path, 65534, 65534)
    [error] = load_specs(specs_dir).errors
    assert "owned by" in error.message and "chown" in error.message


def test_symlink_out_of_the_specs_dir_is_refused(specs_dir: Path, tmp_path: Path) -> None:
    outside = write_spec(tmp_path, "elsewhere.yaml", GOOD)
    link = specs_dir / "a.yaml"
    link.symlink_to(outside)
    loaded = load_specs(specs_dir)
    assert loaded.services == {}
    [error] = loaded.errors
    assert error.file == str(link)
    assert "outside the specs dir" in error.message and str(outside) in error.message


def test_relative_symlink_climbing_out_is_refused(specs_dir: Path, tmp_path: Path) -> None:
    write_spec(tmp_path, "elsewhere.yaml", GOOD)
    (specs_dir / "a.yaml").symlink_to("../elsewhere.yaml")
    [error] = load_specs(specs_dir).errors
    assert "outside the specs dir" in error.message


def test_symlink_chain_ending_outside_is_refused(specs_dir: Path, tmp_path: Path) -> None:
    outside = write_spec(tmp_path, "elsewhere.yaml", GOOD)
    (specs_dir / "hop").symlink_to(outside)  # not a spec name itself
    (specs_dir / "a.yaml").symlink_to("hop")
    [error] = load_specs(specs_dir).errors
    assert "outside the specs dir" in error.message


def test_symlink_inside_the_specs_dir_is_accepted(specs_dir: Path) -> None:
    write_spec(specs_dir, "real.yml", GOOD)
    (specs_dir / "b.yaml").symlink_to("real.yml")
    loaded = load_specs(specs_dir)
    # both names resolve to the same service: one is reported as a duplicate, not refused
    assert not any("refusing" in e.message for e in loaded.errors)
    assert "a" in loaded.services


def test_fifo_and_directory_named_like_specs_are_refused_without_hanging(
        specs_dir: Path) -> None:
    os.mkfifo(specs_dir / "pipe.yaml", 0o644)
    (specs_dir / "dir.yaml").mkdir()
    messages = {Path(e.file).name: e.message for e in load_specs(specs_dir).errors}
    assert "not a regular file" in messages["pipe.yaml"]
    assert "not a regular file" in messages["dir.yaml"]


def test_refused_file_keeps_its_last_good_version(specs_dir: Path) -> None:
    path = write_spec(specs_dir, "a.yaml", GOOD)
    first = load_specs(specs_dir)
    last_good = {"a.yaml": first.files["a.yaml"].content or ""}
    os.chmod(path, 0o666)
    again = load_specs(specs_dir, last_good)
    assert "a" in again.services and again.files["a.yaml"].used_last_good
    assert again.errors


UNSAFE = [
    "!!python/object:os.system {{}}",
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/module:os",
    "!!python/tuple [1, 2]",
    "!!binary aGVsbG8=",
    "!!set {{a, b}}",
    "!!omap [{{a: 1}}]",
    "!custom thing",
    "!<tag:example.com,2000:x> 1",
]


@pytest.mark.parametrize("value", UNSAFE)
@pytest.mark.parametrize("where", ["cmd", "env", "top"])
def test_unsafe_yaml_tags_are_rejected_and_never_constructed(tmp_path: Path, value: str,
                                                             where: str) -> None:
    marker = tmp_path / "pwned"
    tagged = value.format(marker=marker)
    text = {
        "cmd": f"name: a\nactions:\n  - name: x\n    cmd: {tagged}\n",
        "env": f"name: a\nactions:\n  - name: x\n    cmd: [a]\n    env:\n      A: {tagged}\n",
        "top": f"--- {tagged}\n",
    }[where]
    with pytest.raises(SpecErrors) as caught:
        parse_text(text, "f.yaml")
    assert not marker.exists()
    messages = [str(e) for e in caught.value.errors]
    assert any("unsupported tag" in m or "must be a mapping" in m for m in messages), messages
    for error in caught.value.errors:
        assert error.line >= 1 and error.column >= 1


def test_unsafe_tag_on_a_whole_service_document(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = (f"--- !!python/object/apply:os.system\nargs: ['touch {marker}']\n"
            f"--- !!python/object:collections.OrderedDict\nname: a\n")
    with pytest.raises(SpecErrors) as caught:
        parse_text(text, "f.yaml")
    assert not marker.exists()
    assert all("unsupported tag" in e.message for e in caught.value.errors)
    assert [e.line for e in caught.value.errors] == [1, 3]
