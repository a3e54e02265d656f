"""sockd-client's command line: --version, and usage errors that name the options actually given.

Parsing is checked in-process (it raises SystemExit before anything is sent);
--version and the -q load run go through the installed command.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sockd import __version__
from sockd.client.cli import parseArgs
from tests.daemon import BIN, Daemon, withStderrOnATerminal

CLIENT = str(BIN / "sockd-client")


def usageError(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a usage mistake prints (status 2)."""
    with pytest.raises(SystemExit) as exited:
        parseArgs(args)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("sockd-client: error: "), err
    return err.strip()


def test_version_prints_the_version_and_exits_0() -> None:
    result = subprocess.run([CLIENT, "--version"], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"sockd-client {__version__}\n", "")


@pytest.mark.parametrize("args, named, unnamed", [
    (["-c", "3", "-C", "2"], ["ping (-c/--count)", "load (-C/--concurrency)"], ["--interval", "--duration"]),
    (["-i", "1", "-d", "3", "--discard"], ["ping (-i/--interval)", "load (-d/--duration, --discard)"],
     ["--count", "--concurrency", "--chargen"]),
    (["-c", "1", "--daytime"], ["ping (-c/--count)", "the clock check (--daytime)"], ["--time,", "--interval"]),
    (["--chargen", "--time"], ["load (--chargen)", "the clock check (--time)"], ["ping", "--discard"]),
    (["-q", "--time"], ["-q/--quiet", "ping or load"], ["--count", "--interval"]),
])
def test_a_mode_clash_names_the_options_given(args: list[str], named: list[str], unnamed: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    line = usageError(["127.0.0.1", "7", *args], capsys)
    for words in named:
        assert words in line, (words, line)
    for words in unnamed:
        assert words not in line, (words, line)


@pytest.mark.parametrize("args, mode", [
    (["-C", "4", "-d", "2", "-q"], "load"),  # -q with load: no live line, the summary only
    (["-q"], "ping"),  # -q alone: a quiet ping until Ctrl-C, as before
    (["-c", "2", "-q"], "ping"),
    (["--time"], "clock"),
    ([], "once"),
])
def test_quiet_goes_with_ping_and_load(args: list[str], mode: str) -> None:
    assert parseArgs(["127.0.0.1", "7", *args]).mode == mode


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(["--no-log-messages", "--echo", "tcp:0:interface=127.0.0.1"], tmp_path_factory.mktemp("cli"))
    yield d
    d.stop()


def test_quiet_load_prints_the_summary_and_no_live_line(echo: Daemon) -> None:
    """-C 4 -d 2 -q (here shorter) is a load run that keeps the terminal free of the once-a-second line."""
    host, port = echo.address("echo", "tcp")
    code, out, terminal = withStderrOnATerminal(
        [CLIENT, host, str(port), "-C", "4", "-d", "1.3", "--warmup", "0", "-q"])
    assert code == 0, out
    assert terminal == b""  # no live line (without -q one is written once a second: see test_client_measure.py)
    assert out.startswith("--- ") and "load statistics (tcp, echo, 64 bytes, 4 connections)" in out, out


def test_the_console_script_is_the_package_main() -> None:
    """pyproject's sockd-client = "sockd.client:main" keeps working after the move to a package."""
    import sockd.client
    from sockd.client import cli

    assert sockd.client.main is cli.main
    assert 'sockd-client = "sockd.client:main"' in (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
