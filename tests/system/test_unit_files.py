"""The systemd units say only true things: no stale workarounds, real commands, and no endless restarts.

tests/system/test_systemd.py runs the units' commands and checks their sandbox; these
tests hold the units' text to the code: what a comment tells the operator to run
must exist with those options, a workaround the code made unnecessary must be
gone, and a failure that a restart cannot fix (exit status 2 or 78) must not be
retried every RestartSec for ever.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from sockd.tap import Options
from tests.daemon import BIN, REACTOR, TWISTD
from tests.system.test_systemd import ANALYZE, SERVICES, UNITS, parseUnit, sockdArgs, values

#: Commands of other packages that the units' comments name (installing, enabling).
OTHER_COMMANDS = {"systemctl", "adduser", "systemd-sysusers", "pip"}


def mentionedCommands(path: Path) -> list[list[str]]:
    """Every command a unit runs (Exec*=) or tells the reader to run (`...` in its comments)."""
    commands = [shlex.split(v.lstrip("-@:+!")) for _, k, v in parseUnit(path) if k.startswith("Exec")]
    comments = "\n".join(line.lstrip("# ") for line in path.read_text().splitlines() if line.startswith("#"))
    commands += [shlex.split(c) for c in re.findall(r"`([^`]+)`", comments.replace("\n", " "))]
    return commands


def sockdOptionWords(words: list[str]) -> list[str]:
    """The --options after the daemon's name in a sockd or twistd sockd command line."""
    if Path(words[0]).name == "twistd":
        words = words[words.index("sockd") + 1:] if "sockd" in words else []
    else:
        words = words[1:]
    return [w.split("=")[0] for w in words if w.startswith("--")]


@pytest.mark.parametrize("name", [*SERVICES, "sockd.socket", "sockd.sysusers.conf"])
def test_every_command_a_unit_mentions_exists_with_its_options(name: str) -> None:
    known = {f"--{o.rstrip('=')}" for o in Options().longOpt}
    for words in mentionedCommands(UNITS / name):
        program = Path(words[0]).name
        if program.startswith("--"):  # options to add to the daemon's command line
            unknown = [w.split("=")[0] for w in words if w.startswith("--") and w.split("=")[0] not in known]
            assert not unknown, f"{name}: `{' '.join(words)}`: {unknown} are not sockd options"
        elif program in ("sockd", "twistd"):
            installed = BIN / program
            assert installed.exists(), f"{name} mentions `{' '.join(words)}`: there is no {program} command"
            unknown = [w for w in sockdOptionWords(words) if w not in known]
            assert not unknown, f"{name}: `{' '.join(words)}`: {unknown} are not sockd options"
        elif program in ("kill", "chmod"):
            assert words[0].startswith("/"), words
        else:
            assert program in OTHER_COMMANDS or shutil.which(program), f"{name}: unknown command {words}"


def test_no_stale_workarounds_in_the_activated_service() -> None:
    """sockd keeps an adopted Unix socket's mode and makes inherited sockets non-blocking itself."""
    activated = UNITS / "sockd-activated.service"
    assert not values(activated, "ExecStartPost"), "a chmod fix-up the code made unnecessary"
    assert not values(activated, "NonBlocking")
    text = activated.read_text()
    assert "does not set" not in text and "Remove when" not in text, "a comment about a fixed limitation"


@pytest.mark.parametrize("name", SERVICES)
def test_units_do_not_restart_a_bad_configuration(name: str) -> None:
    """Exit 2 (usage) and 78 (EX_CONFIG) fail again on restart: Restart=on-failure must not retry them."""
    unit = UNITS / name
    assert values(unit, "Restart") == ["on-failure"]
    prevented = {int(s) for v in values(unit, "RestartPreventExitStatus") for s in v.split()}
    assert {2, 78} <= prevented


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_restart_prevent_exit_status_is_understood_by_systemd(tmp_path: Path) -> None:
    """systemd-analyze dump of the verified unit shows the setting parsed, not ignored as unknown."""
    for name in SERVICES:
        text = (UNITS / name).read_text().replace("/usr/local/bin/twistd", TWISTD)
        (tmp_path / name).write_text(text)
    (tmp_path / "sockd.socket").write_text((UNITS / "sockd.socket").read_text())
    result = subprocess.run([ANALYZE, "verify", "--man=no", *(f"./{n}" for n in SERVICES), "./sockd.socket"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


#: (arguments replacing the unit's listen options, the exit status the runtime promises)
BAD_STARTS = {
    "bad option": (["--no-such-option"], 2),
    "bad description": (["--ack", "nonsense"], 78),
    "bad config file": (["--config", "{broken}"], 78),
}


@pytest.mark.parametrize("case", BAD_STARTS)
def test_unit_command_exits_with_a_status_the_unit_will_not_restart(case: str, tmp_path: Path) -> None:
    """The unit's own twistd command line, broken three ways, ends in a RestartPreventExitStatus= status."""
    broken = tmp_path / "sockd.toml"
    broken.write_text("max_connections = 'many'\n")
    args, expected = BAD_STARTS[case]
    args = [a.replace("{broken}", str(broken)) for a in args]
    unit = UNITS / "sockd.service"
    command = [TWISTD, *REACTOR, "--nodaemon", "--pidfile=", "--logfile", str(tmp_path / "log"), "sockd", *args]
    assert sockdArgs(unit)  # the real unit runs twistd ... sockd with options, as here
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    prevented = {int(s) for v in values(unit, "RestartPreventExitStatus") for s in v.split()}
    assert result.returncode == expected, result.stderr
    assert result.returncode in prevented
