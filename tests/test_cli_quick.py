"""`cli/quick.py`: a plain `status` argv parsed without argparse gives exactly argparse's
namespace, and everything else is left to argparse (which owns help and errors)."""

from __future__ import annotations

import pytest

from reconciler.cli.args import build_parser
from reconciler.cli.quick import quick_args

PLAIN = [
    ["status"],
    ["status", "--specs", "A", "--state-dir", "B"],
    ["status", "-o", "json"],
    ["status", "--output", "table"],
    ["-o", "json", "status"],
    ["-o", "json", "status", "-o", "table"],  # the last one wins, as in argparse
    ["--specs", "A", "status", "--specs", "B"],
    ["--specs=A", "status", "--state-dir=B", "--output=json"],
    ["--specs", "status", "status"],  # a value that is the command's name
    ["status", "--specs", ""],
    ["status", "--specs", "a dir/with=equals"],
]
NOT_PLAIN = [
    [], ["--help"], ["status", "--help"], ["status", "-h"], ["info"], ["events"],
    ["status", "status"], ["status", "extra"], ["status", "--spec", "A"],  # an abbreviation
    ["status", "-o", "xml"], ["status", "-ojson"], ["status", "-o=json"],
    ["status", "--specs"], ["status", "--specs", "-x"], ["status", "--specs=-x"],
    ["--once", "status"], ["status", "--labels", "f"], ["status", "--rebind"], ["status", "--"],
    ["--version"],
]


@pytest.mark.parametrize("argv", PLAIN, ids=" ".join)
def test_a_plain_status_gets_argparse_s_namespace(argv: list[str]) -> None:
    quick = quick_args(argv)
    assert quick is not None
    assert vars(quick) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", NOT_PLAIN, ids=" ".join)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert quick_args(argv) is None
