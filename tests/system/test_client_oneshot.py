"""The installed C{sockd-client} command, run as a subprocess against a real daemon.

It must do what the tutorial's clients do (prompt when a person is typing,
send one line, print the answer) and fail the way a command-line tool should:
one line on stderr, a non-zero status, within its timeout.
"""

from __future__ import annotations

import os
import pty
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import BIN, HAVE_IPV6, Daemon

CLIENT = str(BIN / "sockd-client")
PROMPT = b"Please enter the message: "






@pytest.fixture(scope="module")
def sockd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    cwd = tmp_path_factory.mktemp("client")
    d = Daemon(["--ack", "tcp:0:interface=127.0.0.1", "--ack", "udp:0:interface=127.0.0.1",
                "--ack", f"unix:{cwd / 'ack.sock'}", "--echo", "tcp:0:interface=127.0.0.1",
                "--echo", "udp:0:interface=127.0.0.1", "--daytime", "tcp:0:interface=127.0.0.1",
                "--qotd", "tcp:0:interface=127.0.0.1",
                *(["--ack", r"tcp6:0:interface=\:\:1", "--ack", r"udp:0:interface=\:\:1"] if HAVE_IPV6 else [])], cwd)
    yield d
    d.stop()


def client(*args: str, stdin: bytes | None = b"", timeout: float = 15.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([CLIENT, *args], input=stdin, capture_output=True, timeout=timeout)


def hostPort(d: Daemon, service: str, transport: str = "tcp") -> list[str]:
    host, port = d.address(service, transport)
    return [host, str(port)]


def assertOneErrorLine(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    assert result.returncode != 0
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr.decode()
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_tcp_with_message_option(sockd: Daemon) -> None:
    result = client(*hostPort(sockd, "ack"), "-m", "hello via -m")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"I got your message\n", b"")
    assert "Here is the message: hello via -m" in sockd.log()


def test_udp(sockd: Daemon) -> None:
    result = client("--udp", *hostPort(sockd, "ack", "udp"), "-m", "hello via udp")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"Got your message\n", b"")


def test_unix(sockd: Daemon) -> None:
    result = client("--unix", sockd.path("ack"), "-m", "hello via unix")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"I got your message\n", b"")


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1) on this machine")
def test_ipv6_tcp_and_udp(sockd: Daemon) -> None:
    port = str(sockd.address("ack", "tcp6")[1])
    assert client("::1", port, "-m", "over tcp6").stdout == b"I got your message\n"
    udpPort = next(str(p) for h, p in (sockd.address("ack", "udp", i) for i in range(2)) if h == "::1")
    assert client("--udp", "::1", udpPort, "-m", "over udp6").stdout == b"Got your message\n"


def test_piped_stdin_line_is_sent_without_a_prompt(sockd: Daemon) -> None:
    result = client(*hostPort(sockd, "echo"), stdin=b"from a pipe\nsecond line is not read\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"from a pipe\n"  # only the first line, and no prompt in front of it


def test_message_is_utf8_and_gets_a_newline(sockd: Daemon) -> None:
    result = client(*hostPort(sockd, "echo"), "-m", "caf\u00e9 \u2603")
    assert result.stdout == "caf\u00e9 \u2603\n".encode()
    udp = client("--udp", *hostPort(sockd, "echo", "udp"), "-m", "no newline given")
    assert udp.stdout == b"no newline given\n"


def test_prompt_is_printed_when_stdin_is_a_terminal(sockd: Daemon) -> None:
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen([CLIENT, *hostPort(sockd, "ack")], stdin=slave, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        os.close(slave)
        slave = -1
        os.write(master, b"typed at a terminal\n")
        out, err = process.communicate(timeout=15)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert process.returncode == 0, err
    assert out == PROMPT + b"I got your message\n"
    assert "Here is the message: typed at a terminal" in sockd.log()


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connect is refused
        port = s.getsockname()[1]
        result = client("127.0.0.1", str(port), "-m", "anyone?")
    line = assertOneErrorLine(result, "refused", str(port))
    assert line.startswith("sockd-client:")


def test_unix_socket_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "nobody.sock"
    assertOneErrorLine(client("--unix", str(path), "-m", "x"), str(path))


def test_unknown_host() -> None:
    started = time.monotonic()
    result = client("no-such-host.invalid", "51717", "-m", "x", timeout=30)
    assertOneErrorLine(result, "no-such-host.invalid")
    assert time.monotonic() - started < 20
    assertOneErrorLine(client("--udp", "no-such-host.invalid", "51717", "-m", "x", timeout=30),
                       "no-such-host.invalid")


def test_udp_without_an_answer_times_out_within_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives, never answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = client("--udp", "127.0.0.1", str(port), "-m", "hello?", "-t", "1")
        elapsed = time.monotonic() - started
        silent.settimeout(1)
        assert silent.recvfrom(100)[0] == b"hello?\n"  # it was sent, just never answered
    line = assertOneErrorLine(result, str(port))
    assert "no answer" in line or "timed out" in line, line
    assert 0.9 <= elapsed < 4, elapsed


def test_tcp_without_an_answer_times_out_within_the_timeout() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        started = time.monotonic()
        result = client("127.0.0.1", str(port), "-m", "hello?", "-t", "1")
        elapsed = time.monotonic() - started
    assertOneErrorLine(result, str(port))
    assert 0.9 <= elapsed < 4, elapsed


def test_usage_errors_are_one_line_each() -> None:
    for args in (["127.0.0.1"], ["127.0.0.1", "notaport"], ["--unix", "x.sock", "127.0.0.1", "1"]):
        result = client(*args)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr.decode()
        assert "error:" in result.stderr.decode().splitlines()[-1]


def test_tcp_speak_first_services_answer_every_time(sockd: Daemon) -> None:
    """daytime and qotd speak and close at once; the client must still print what they said (20 tries)."""
    for attempt in range(20):
        service = ("daytime", "qotd")[attempt % 2]
        result = client(*hostPort(sockd, service), "-m", "x")
        assert result.returncode == 0, (service, result.stderr)
        assert result.stdout.endswith(b"\r\n") and len(result.stdout) > 2


def test_client_tries_every_address_of_the_host(daemon):
    """localhost resolves to ::1 and 127.0.0.1: a server on only one of them is still reached."""
    import socket as _socket
    import subprocess as _subprocess
    import sys as _sys
    from pathlib import Path as _Path

    families = {info[0] for info in _socket.getaddrinfo("localhost", 1, type=_socket.SOCK_STREAM)}
    if len(families) < 2:
        pytest.skip("localhost has only one address here")
    client = str(_Path(_sys.executable).parent / "sockd-client")
    for description, transport in (("tcp:0:interface=127.0.0.1", "tcp"), ("tcp6:0:interface=::1", "tcp6")):
        d = daemon("--ack", description)
        port = d.address("ack", transport)[1]
        result = _subprocess.run([client, "localhost", str(port), "-m", "hi"], capture_output=True, timeout=30)
        assert result.stdout == b"I got your message\n", result.stderr
