"""`reconcile status` parsed without argparse (issue 13): argparse, with gettext and locale,
is a few ms of a command whose goal is 2.5× `python -c pass`.

Only the plain forms are recognised: `status` with `--specs DIR`, `--state-dir DIR` and
`-o/--output table|json` (space- or `--flag=value`-separated, before or after the command).
Anything else (`--help`, an abbreviation, another flag, a value starting with `-`, a bad
choice) returns None and goes through argparse, which prints its own help or error. The
namespace is the one argparse builds for the same argv (tests/test_cli_quick.py compares them
flag by flag), so `status` runs the same code either way.
"""

TYPE_CHECKING = False  # not `typing`'s: its import costs more than this whole parse
if TYPE_CHECKING:
    from argparse import Namespace
    from collections.abc import Sequence
else:  # the same attribute bag, without importing argparse
    from types import SimpleNamespace as Namespace

COMMAND = "status"
# the flags `status` shares with the top level, and the attribute each sets
_VALUED = {"--specs": "specs", "--state-dir": "state_dir", "-o": "output", "--output": "output"}
_CHOICES = {"output": ("table", "json")}  # = args.OUTPUTS
# what argparse's top-level parser sets when its flags are not given (args.build_parser)
_DEFAULTS = {"output": "table", "once": False, "wait": "60s", "settle": "200ms",
             "resync": "30s", "metrics_addr": None, "metrics_textfile": None,
             "sample_interval": None, "log_format": None}


def quick_args(argv: "Sequence[str]") -> "Namespace | None":
    """The namespace argparse would give for a plain `status` argv, else None."""
    values: dict[str, object] = dict(_DEFAULTS)
    command_seen = False
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == COMMAND and not command_seen:
            command_seen = True
            i += 1
            continue
        flag, eq, value = token.partition("=")
        if eq and flag.startswith("--") and flag in _VALUED:
            i += 1
        elif not eq and token in _VALUED and i + 1 < len(tokens):
            flag, value = token, tokens[i + 1]
            i += 2
        else:
            return None  # argparse's business: help, errors, other flags and commands
        name = _VALUED[flag]
        if value.startswith("-") or value not in _CHOICES.get(name, (value,)):
            return None
        values[name] = value
    if not command_seen:
        return None
    values["command"] = COMMAND
    return Namespace(**values)
