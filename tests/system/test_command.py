"""The C{sockd} console command: C{twist sockd} under sockd's own name, serving for real.

Operators and units run C{sockd --ack ...} without knowing Twisted; these tests
run the installed console script and talk to it over loopback and a Unix socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from sockd.command import splitArguments
from sockd.tap import HIDDEN, Options
from tests.daemon import (
    BIN,
    COMMAND_REACTOR,
    LISTENING,
    TWISTD,
    children,
    connect,
    recvExactly,
    udpExchange,
    waitFor,
)

SOCKD = str(BIN / "sockd")
ACK = b"I got your message"
TIMEOUT = 15.0
#: A graceful stop exits 0 (tests/system/test_exit_status.py).
CLEAN = (0,)


class Command:
    """One running C{sockd} command and the listeners its log announced."""

    def __init__(self, args: list[str], cwd: Path, expect: int) -> None:
        self.logPath = cwd / "sockd.log"
        self.stderrPath = cwd / "sockd.stderr"
        with open(self.stderrPath, "wb") as stderr:
            self.process = subprocess.Popen([SOCKD, *COMMAND_REACTOR, "--log-file", str(self.logPath), *args], cwd=cwd,
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
        self.listeners: dict[str, str] = {}
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            found = LISTENING.findall(self.log())
            if len(found) >= expect:
                self.listeners = {transport: address for _, transport, address in found}
                return
            assert self.process.poll() is None, f"sockd exited {self.process.returncode}: {self.stderr()}"
            time.sleep(0.05)
        raise AssertionError(f"sockd did not announce {expect} listeners:\n{self.log()}")

    def log(self) -> str:
        return self.logPath.read_text(errors="replace") if self.logPath.exists() else ""

    def stderr(self) -> str:
        return self.stderrPath.read_text(errors="replace")

    def address(self, transport: str) -> tuple[str, int]:
        host, _, port = self.listeners[transport].rpartition(":")
        return host, int(port)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


@pytest.fixture
def command(tmp_path: Path) -> Iterator:
    started: list[Command] = []

    def start(*args: str, expect: int = 1) -> Command:
        c = Command(list(args), tmp_path, expect)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([SOCKD, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_command_serves_tcp_udp_and_unix_then_stops_on_sigterm(command, tmp_path: Path) -> None:
    """The command binds (twist alone would not: sockd binds in privilegedStartService) and drains on SIGTERM."""
    unixPath = tmp_path / "ack.sock"
    c = command("--log-format", "text", "--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1",
                "--ack", f"unix:{unixPath}", expect=3)
    with connect(c.address("tcp")) as s:
        s.sendall(b"hello command\n")
        assert recvExactly(s, len(ACK)) == ACK
    assert udpExchange(c.address("udp"), b"hello") == b"Got your message\n"
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(str(unixPath))
        s.sendall(b"hello unix\n")
        assert recvExactly(s, len(ACK)) == ACK
    assert "Here is the message: hello command" in c.log()
    # A message without its newline yet is still answered at SIGTERM: the drain, not a drop.
    with connect(c.address("tcp")) as s:
        s.sendall(b"partial")
        time.sleep(0.05)
        c.process.send_signal(signal.SIGTERM)
        assert recvExactly(s, len(ACK)) == ACK
    assert c.process.wait(TIMEOUT) == 0  # not c.stop(): a second SIGTERM would cut the drain short
    assert not unixPath.exists(), "the Unix socket file is removed at stop"
    assert "Traceback" not in c.stderr() + c.log()


def test_runner_options_anywhere_json_log(command) -> None:
    """--log-format after sockd's own options still reaches the runner: one JSON object per line (sockd's records,
    see test_json_logging.py)."""
    c_ = command("--ack", "tcp:0:interface=127.0.0.1", "--log-format", "json", "--log-level", "info", expect=0)
    deadline = time.monotonic() + TIMEOUT
    events: list[dict] = []
    while time.monotonic() < deadline and not any(e.get("namespace") == "sockd.listeners" for e in events):
        log = c_.log()
        events = [json.loads(line) for line in log[:log.rfind("\n") + 1].splitlines()]
        time.sleep(0.05)
    listening = [e for e in events if e.get("namespace") == "sockd.listeners"]
    assert listening and listening[0]["service"] == "ack", events
    assert c_.stop() in CLEAN


def test_command_with_workers(command) -> None:
    """--workers under the command: the parent binds, two workers serve, SIGTERM stops them all."""
    c = command("--log-format", "text", "--workers", "2", "--ack", "tcp:0:interface=127.0.0.1")
    waitFor(lambda: len(children(c.process.pid)) == 2, "two workers")
    for i in range(4):
        with connect(c.address("tcp")) as s:
            s.sendall(b"to a worker %d\n" % i)
            assert recvExactly(s, len(ACK)) == ACK
    workers = children(c.process.pid)
    assert c.stop() in CLEAN
    waitFor(lambda: not [p for p in workers if Path(f"/proc/{p}").exists()], "the workers to exit")


def test_help_names_the_command_and_every_option(tmp_path: Path) -> None:
    result = run("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: sockd [runner options]")
    for spec in Options().longOpt:
        name = spec.rstrip("=")
        if name not in HIDDEN:
            assert f"--{name}" in result.stdout, name
    for name in ("--log-format", "--log-level", "--log-file", "--reactor"):
        assert name in result.stdout
    assert "twist " not in result.stdout.split("\n", 1)[0]


HELPS = {"sockd": [SOCKD], "twistd sockd": [TWISTD, "sockd"]}


def _optionEntries(helpText: str) -> dict[str, str]:
    """Each option's whole entry in a help text (its first line and the wrapped lines under it)."""
    entries: dict[str, str] = {}
    name = None
    for line in helpText.splitlines():
        if line.lstrip().startswith("-"):
            name = line.split("--", 1)[1].split()[0].rstrip("=")
            entries[name] = line
        elif name and line.startswith(" " * 20):
            entries[name] += " " + line.strip()
        else:
            name = None
    return entries


@pytest.mark.parametrize("command", list(HELPS))
def test_help_shows_each_default_once_no_none_and_no_internal_option(command: str, tmp_path: Path) -> None:
    result = subprocess.run([*HELPS[command], "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    entries = _optionEntries(result.stdout)
    assert "log-level" in entries and "metrics" in entries, result.stdout
    for entry in entries.values():
        assert entry.count("[default:") <= 1, entry
        assert "[default: None]" not in entry, entry
    for name in HIDDEN:
        assert name not in entries and f"--{name}=" not in result.stdout, f"the internal --{name} is shown"
    ownLevel = command == "twistd sockd"  # under the sockd command, --log-level is the runner's
    assert entries["log-level"].endswith("[default: info]" if ownLevel else "(default: info)."), entries
    assert result.stdout.count("--log-level=") == 1, "--log-level listed twice"
    assert entries["unix-mode"].endswith("[default: 660]"), entries["unix-mode"]


def test_help_lines_are_wrapped_runner_options_too(tmp_path: Path) -> None:
    result = subprocess.run([SOCKD, "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "COLUMNS": "80"})
    runner = result.stdout.split("Runner options", 1)[1]
    assert "--reactor=" in runner and "--log-format=" in runner
    long = [line for line in result.stdout.splitlines() if len(line) > 80 and not line.startswith("Usage:")]
    assert long == [], long


@pytest.mark.parametrize("command", list(HELPS))
def test_dash_h_is_help(command: str, tmp_path: Path) -> None:
    short = subprocess.run([*HELPS[command], "-h"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    full = subprocess.run([*HELPS[command], "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert (short.returncode, short.stderr) == (0, ""), short.stderr
    assert short.stdout == full.stdout


@pytest.mark.parametrize("command", list(HELPS))
def test_usage_error_names_the_command_that_was_run(command: str, tmp_path: Path) -> None:
    result = subprocess.run([*HELPS[command], "--max-message", "abc"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"sockd: error: --max-message abc: must be a whole number of at least 1 (see {command} --help)"]


def test_version_is_the_distribution_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout.strip()) == (0, f"sockd {version('sockd')}")


def test_bad_runner_option_is_one_line_and_status_2(tmp_path: Path) -> None:
    result = run("--log-level", "loud", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["sockd: error: Invalid log level: loud (see sockd --help)"]


def test_bad_sockd_option_is_one_line_and_fails(tmp_path: Path) -> None:
    result = run("--no-such-option", cwd=tmp_path)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "--no-such-option" in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use_fails_without_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("--log-format", "text", "--ack", f"tcp:{port}:interface=127.0.0.1", cwd=tmp_path)
    assert result.returncode != 0
    assert "Address already in use" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# splitArguments: which words are the runner's.


def test_split_runner_options_anywhere() -> None:
    runner, own = splitArguments(["--ack", "tcp:1", "--log-format", "json", "--log-level=debug", "--ack-once"],
                                 Options())
    assert runner == ["--log-format", "json", "--log-level=debug"]
    assert own == ["--ack", "tcp:1", "--ack-once"]


def test_split_never_takes_an_option_value_for_a_runner_option() -> None:
    runner, own = splitArguments(["--quotes", "--log-file", "-c", "--reactor", "--echo=--log-level"], Options())
    assert runner == []
    assert own == ["--quotes", "--log-file", "-c", "--reactor", "--echo=--log-level"]


def test_split_stops_at_double_dash() -> None:
    assert splitArguments(["--", "--log-format", "json"], Options()) == ([], ["--", "--log-format", "json"])
