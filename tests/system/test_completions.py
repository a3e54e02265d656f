"""sockd(8) rendered by groff, and the shell completions run by bash and zsh as a user's shell would.

That the committed files are what the generator writes is in tests/unit/test_manpage.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.unit.test_manpage import BASH, MAN, ZSH, everyOption

GROFF = shutil.which("groff")
ZSH_BIN = shutil.which("zsh")
BASH_COMPLETION = Path("/usr/share/bash-completion/bash_completion")


@pytest.mark.skipif(GROFF is None, reason="groff is not installed")
def test_man_page_renders_without_warnings() -> None:
    result = subprocess.run([GROFF, "-man", "-Tutf8", "-ww", "-z", str(MAN)], capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    rendered = subprocess.run([GROFF, "-man", "-Tascii", str(MAN)], capture_output=True, text=True, timeout=60)
    plain = re.sub(r".\x08", "", rendered.stdout)
    assert "SOCKD(8)" in plain and "--max-per-source" in plain and "EXIT STATUS" in plain


# ---------------------------------------------------------------------------------------------------------------
# bash


def complete(words: list[str], withBashCompletion: bool = False) -> list[str]:
    """What the bash completion offers for the last of C{words} (the command line so far)."""
    script = ""
    if withBashCompletion:
        script += f"source {BASH_COMPLETION}\n"
    script += f"source {BASH}\n"
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script += (f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; COMP_LINE=\"${{COMP_WORDS[*]}}\"; "
               "COMP_POINT=${#COMP_LINE}; _sockd; printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_completes_every_option_name() -> None:
    offered = complete(["sockd", "--"])
    for name in everyOption():
        if name != "worker":  # internal: between a --workers parent and its workers
            assert f"--{name}" in offered, name
    assert {"--log-format", "--log-level", "--log-file", "--reactor"} <= set(offered)


def test_bash_completes_values_that_are_not_file_names() -> None:
    assert complete(["sockd", "--workers", ""]) == ["auto", "1", "2", "4", "8"]
    assert "tcp:9101:interface=127.0.0.1" in complete(["sockd", "--metrics", ""])
    assert complete(["sockd", "--ack", "tc"]) == ["tcp:", "tcp6:"]
    assert "udp:" in complete(["sockd", "--echo", ""])
    assert complete(["sockd", "--log-format", ""]) == ["text", "json"]
    assert complete(["sockd", "--metrics=tcp:9101"]) == ["--metrics=tcp:9101:interface=127.0.0.1",
                                                         "--metrics=tcp:9101"]
    assert complete(["sockd", "--max-connections", ""]) == []  # a number: nothing to offer, not file names


def test_bash_completes_config_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sockd.toml").write_text("")
    (tmp_path / "notes.txt").write_text("")
    monkeypatch.chdir(tmp_path)
    assert complete(["sockd", "--config", ""]) == ["sockd.toml"]
    assert sorted(complete(["sockd", "--quotes", ""])) == ["notes.txt", "sockd.toml"]


@pytest.mark.skipif(not BASH_COMPLETION.exists(), reason="bash-completion is not installed")
def test_bash_completion_with_the_bash_completion_package() -> None:
    assert complete(["sockd", "--workers", "a"], withBashCompletion=True) == ["auto"]
    assert complete(["sockd", "--log-l"], withBashCompletion=True) == ["--log-level="]


# ---------------------------------------------------------------------------------------------------------------
# zsh


@pytest.mark.skipif(ZSH_BIN is None, reason="zsh is not installed")
def test_zsh_completion_parses() -> None:
    result = subprocess.run([ZSH_BIN, "-n", str(ZSH)], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, "")


#: Types each line into an interactive zsh (in a pseudo-terminal) and completes it once with the completion
#: system, writing the resulting command line to a file: the real _arguments machinery, not a parse check.
ZSH_DRIVER = r'''
zmodload zsh/zpty
dir=$1 out=$2; shift 2
zpty z zsh -f -i
zpty -w z "PS1=''; fpath=($dir \$fpath); autoload -U compinit; compinit -u -D; sockd() { }"
zpty -w z "show() { zle complete-word; print -r -- \"\$BUFFER\" >> $out; BUFFER=''; }; zle -N show; bindkey '^T' show"
for line in "$@"; do
  zpty -w -n z "$line"$'\x14'
done
for i in {1..100}; do
  [[ -f $out && $(wc -l < $out) -ge $# ]] && break
  sleep 0.1
done
zpty -w z "exit"
zpty -d z
'''


@pytest.mark.skipif(ZSH_BIN is None, reason="zsh is not installed")
def test_zsh_completes_options_and_values(tmp_path: Path) -> None:
    functions = tmp_path / "functions"
    functions.mkdir()
    shutil.copy(ZSH, functions / "_sockd")
    (tmp_path / "drive.zsh").write_text(ZSH_DRIVER)
    cases = {
        "sockd --work": "sockd --workers=",
        "sockd --workers a": "sockd --workers auto ",
        "sockd --ack tcp6": "sockd --ack tcp6:",  # a listen description goes on: no space
        "sockd --metrics tcp:9101:i": "sockd --metrics tcp:9101:interface=127.0.0.1 ",
        "sockd --log-format j": "sockd --log-format json ",
        "sockd --max-conn": "sockd --max-connections=",
    }
    out = tmp_path / "completed"
    subprocess.run([ZSH_BIN, "-f", str(tmp_path / "drive.zsh"), str(functions), str(out), *cases],
                   capture_output=True, timeout=60, cwd=tmp_path)
    assert out.read_text().splitlines() == list(cases.values())
