"""Secrets on command lines never reach output."""

from __future__ import annotations

from reconciler.redact import MASK, command_line, redact_argv


def test_assignments_flags_and_shell_words_are_masked() -> None:
    argv = ["app", "--password=hunter2", "--token", "abc", "API_KEY=k1", "--port=80",
            "sh -c 'DB_PASSWORD=pw exec run --secret s3 --name web'"]
    out = redact_argv(argv)
    assert out[:6] == ["app", f"--password={MASK}", "--token", MASK, f"API_KEY={MASK}",
                       "--port=80"]
    assert "pw" not in out[6] and "s3" not in out[6] and "--name web" in out[6]
    assert not any(secret in " ".join(out) for secret in ("hunter2", "abc", "k1"))


def test_ordinary_arguments_are_untouched() -> None:
    argv = ["python3", "-m", "http.server", "8080", "--bind", "127.0.0.1", "MODE=fast"]
    assert redact_argv(argv) == argv


def test_process_descriptions_in_reasons_are_redacted_and_one_line() -> None:
    from reconciler.identity import Identity
    from reconciler.observed import ProcInfo

    proc = ProcInfo(Identity("b", 77, 1), ("app", "--password=hunter2", "x\ny"), 77, 77)
    assert proc.describe() == f"pid 77 (app --password={MASK} x y)"


def test_a_command_line_shown_to_an_operator_has_no_control_characters() -> None:
    assert command_line(["sh", "-c", "printf '\x1b[2J'; echo\x07 done"]) == \
        "sh -c printf '\\x1b[2J'; echo\\x07 done"
