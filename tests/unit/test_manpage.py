"""sockd(8) and the shell completions: generated from sockd.tap.Options and committed up to date.

An option added to sockd without regenerating (C{python -m sockd.manual})
fails here, and so does an option whose value the generator cannot describe.
groff, bash and zsh run them in tests/system/test_completions.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sockd import manual, tap
from sockd.tap import Options

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "contrib" / "man" / "sockd.8"
BASH = ROOT / "contrib" / "completion" / "sockd"
ZSH = ROOT / "contrib" / "completion" / "_sockd"


def everyOption() -> list[str]:
    return list(dict.fromkeys(o.rstrip("=") for o in Options().longOpt))


def test_committed_files_are_what_the_generator_writes() -> None:
    result = subprocess.run([sys.executable, "-m", "sockd.manual", "--check", "--root", str(ROOT)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, f"run `python -m sockd.manual` and commit: {result.stderr}"
    for relative, generate in manual.OUTPUTS.items():
        assert (ROOT / relative).read_text() == generate(), relative


def test_man_page_lists_every_option() -> None:
    text = MAN.read_text()
    for name in tap.HIDDEN:
        assert f"\\-\\-{name}\\fR" not in text, f"the internal --{name} is in the man page"
    for name in everyOption():
        if name in tap.HIDDEN:
            continue
        assert f"\\fB\\-\\-{name.replace('-', chr(92) + '-')}\\fR" in text, name
    for short in Options().shortOpt.replace(":", ""):
        assert f"\\fB\\-{short}\\fR, " in text, short
    for name in manual.RUNNER:
        assert f"\\-\\-{name.replace('-', chr(92) + '-')}" in text, name


def test_man_page_marks_the_per_service_and_repeatable_options() -> None:
    text = MAN.read_text()
    listen = text.split(".SH LISTEN OPTIONS", 1)[1].split(".SH OPTIONS", 1)[0]
    for service in tap.SERVICES:
        assert f"\\fB\\-\\-{service.name}\\fR \\fIDESC\\fR" in listen, service.name
    repeated = [tap.optionName(f.name) for f in tap.FIELDS if f.metadata["repeat"]]
    assert repeated, "no repeatable settings?"
    for name in repeated:
        escaped = name.replace("-", "\\-")
        entry = text.split(f"\\fB\\-\\-{escaped}\\fR", 1)[1].split(".TP", 1)[0]
        assert "repeatable" in entry, name


def test_man_page_values_that_are_not_file_names() -> None:
    text = MAN.read_text()
    workers = text.split("\\fB\\-\\-workers\\fR", 1)[1].split(".TP", 1)[0]
    assert "auto" in workers


def test_generator_refuses_an_option_it_cannot_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    class WithNewOption(tap.Options):
        optParameters = [*tap.Options.optParameters, ["frobnicate", None, None, "a new option"]]

    monkeypatch.setattr(tap, "Options", WithNewOption)
    with pytest.raises(ValueError, match="--frobnicate"):
        manual.manPage()


# ---------------------------------------------------------------------------------------------------------------
# The completions, read as files (bash and zsh run them in tests/system/test_completions.py)


def test_zsh_completion_covers_every_option() -> None:
    text = ZSH.read_text()
    assert text.startswith("#compdef sockd\n")
    for name in everyOption():
        if name != "worker":
            assert f"--{name}" in text, name
    assert "_sockd_workers() { compadd -- 'auto' '1' '2' '4' '8'; }" in text
    assert "'*--ack=[" in text, "a repeatable option is marked with *"
