"""The tutorial's own C clients, compiled here, must work against sockd unchanged.

tests/c/ holds the tutorial's stream client (client.c, from the text), its
datagram client (client.c with SOCK_DGRAM, no connect, sendto/recvfrom) and its
Unix-domain client (sockaddr_un); see the comment at the top of each for the
few changes modern gcc needs.  The long-line case is the reason sockd has a
quiet time: given a 400-character line, fgets(buffer, 255, stdin) reads 254
characters with no newline, the client sends them and waits for an answer.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon

SOURCES = Path(__file__).resolve().parents[1] / "c"
PROMPT = b"Please enter the message: "

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Compile each tutorial client once for the module."""
    out = tmp_path_factory.mktemp("cclients")
    built = {}
    for name in ("client", "udp_client", "unix_client"):
        binary = out / name
        result = subprocess.run(["gcc", "-o", str(binary), str(SOURCES / f"{name}.c")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name}.c does not compile:\n{result.stderr}"
        built[name] = binary
    return built


@pytest.fixture(scope="module")
def sockd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    cwd = tmp_path_factory.mktemp("tutorial")
    d = Daemon(["--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1",
                "--ack", f"unix:{cwd / 'ack.sock'}"], cwd)
    yield d
    d.stop()


def run(program: Path, args: list[str], stdin: bytes, timeout: float = 10.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(program), *args], input=stdin, capture_output=True, timeout=timeout)


def logged(d: Daemon, pattern: str, timeout: float = 5.0) -> list[str]:
    """Lines of the daemon's log that match C{pattern}, waiting briefly for them to be written."""
    deadline = time.monotonic() + timeout
    while True:
        found = re.findall(pattern, d.log(), re.MULTILINE)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_stream_client_gets_i_got_your_message(programs: dict[str, Path], sockd: Daemon) -> None:
    host, port = sockd.address("ack", "tcp")
    result = run(programs["client"], [host, str(port)], b"hello from client.c\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + b"I got your message\n"
    assert result.stderr == b""
    assert logged(sockd, r"Here is the message: hello from client\.c$")


def test_stream_client_with_a_400_character_line_is_answered_after_the_quiet_time(
    programs: dict[str, Path], sockd: Daemon
) -> None:
    """fgets reads 254 of the 400 characters, no newline; the client then blocks in read()."""
    host, port = sockd.address("ack", "tcp")
    line = "".join(chr(ord("a") + i % 26) for i in range(400))
    result = run(programs["client"], [host, str(port)], line.encode() + b"\n", timeout=5.0)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + b"I got your message\n"
    # The daemon logged exactly the 254 characters fgets read, as one message.
    assert logged(sockd, rf"Here is the message: ({line[:254]})$") == [line[:254]]
    assert not re.search(rf"Here is the message: {line[:255]}", sockd.log())


def test_datagram_client_gets_got_your_message(programs: dict[str, Path], sockd: Daemon) -> None:
    host, port = sockd.address("ack", "udp")
    result = run(programs["udp_client"], [host, str(port)], b"hello from the datagram client\n")
    assert result.returncode == 0, result.stderr
    # The answer is "Got your message\n"; the client's printf adds its own newline.
    assert result.stdout == PROMPT + b"Got your message\n\n"
    assert logged(sockd, r"Received a datagram: hello from the datagram client$")


def test_unix_domain_client_gets_i_got_your_message(programs: dict[str, Path], sockd: Daemon) -> None:
    result = run(programs["unix_client"], [sockd.path("ack")], b"hello over a unix socket\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + b"I got your message\n"
    assert result.stderr == b""
    assert logged(sockd, r"Here is the message: hello over a unix socket$")


def test_unix_domain_client_with_a_long_line(programs: dict[str, Path], sockd: Daemon) -> None:
    line = "u" * 400
    result = run(programs["unix_client"], [sockd.path("ack")], line.encode() + b"\n", timeout=5.0)
    assert result.returncode == 0, result.stderr
    assert result.stdout == PROMPT + b"I got your message\n"
    assert logged(sockd, rf"Here is the message: {'u' * 254}$")


def test_many_tutorial_clients_at_once(programs: dict[str, Path], sockd: Daemon) -> None:
    """The tutorial's forking server handles clients concurrently; so must sockd."""
    host, port = sockd.address("ack", "tcp")
    udpHost, udpPort = sockd.address("ack", "udp")
    commands = [[str(programs["client"]), host, str(port)], [str(programs["udp_client"]), udpHost, str(udpPort)]]
    processes = [subprocess.Popen(commands[i % 2], stdin=subprocess.PIPE, stdout=subprocess.PIPE) for i in range(20)]
    outputs = [p.communicate(b"concurrent\n", timeout=10)[0] for p in processes]
    assert outputs.count(PROMPT + b"I got your message\n") == 10
    assert outputs.count(PROMPT + b"Got your message\n\n") == 10


def test_stream_client_against_ack_once(programs: dict[str, Path], daemon: Callable[..., Daemon]) -> None:
    """With --ack-once sockd behaves as the tutorial's server: one answer, then it closes."""
    d = daemon("--ack-once", "--ack", "tcp:0:interface=127.0.0.1")
    host, port = d.address("ack", "tcp")
    for text in (b"first\n", b"x" * 400 + b"\n"):
        result = run(programs["client"], [host, str(port)], text, timeout=5.0)
        assert result.returncode == 0, result.stderr
        assert result.stdout == PROMPT + b"I got your message\n"


def test_stream_client_reports_connection_refused(programs: dict[str, Path]) -> None:
    """Sanity check of the compiled client itself: with nothing listening it says so (the tutorial's error())."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connect is refused
        result = run(programs["client"], ["127.0.0.1", str(port)], b"nobody\n")
    assert b"ERROR connecting: Connection refused" in result.stderr
