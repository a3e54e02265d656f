"""Every service on every transport it has, against one real daemon, byte for byte.

One sockd runs for the whole module with each of the seven services on TCP
(127.0.0.1), TCP6 (::1), a Unix socket, UDP (127.0.0.1) and UDP (::1); UDP
chargen is listed explicitly, as it must be.  The expected bytes come from the
RFCs and the tutorial, not from sockd's own modules, so a wrong constant in
sockd is caught here.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from tests.daemon import HAVE_IPV6, Daemon, recvAll, recvExactly

SERVICES = ("ack", "echo", "discard", "daytime", "time", "qotd", "chargen")




needsIPv6 = pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback (::1) on this machine")

STREAMS = ["tcp", pytest.param("tcp6", marks=needsIPv6), "unix"]
DATAGRAMS = ["udp4", pytest.param("udp6", marks=needsIPv6)]

# RFC 868: seconds from 1900-01-01 to 1970-01-01.
RFC868_OFFSET = 2208988800

# RFC 864's own example, first lines (the first begins with a space).
RFC864_LINE0 = b" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg\r\n"
RFC864_LINE1 = b"!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh\r\n"
RFC864_LINE2 = b"\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghi\r\n"


def chargenLine(index: int) -> bytes:
    """RFC 864 line C{index}: 72 of the 95 printable characters, rotated by one per line."""
    printable = bytes(range(32, 127)) * 2
    start = index % 95
    return printable[start : start + 72] + b"\r\n"


CHARGEN_CYCLE = b"".join(chargenLine(i) for i in range(95))

DAYTIME = re.compile(rb"^[A-Z][a-z]+day, [A-Z][a-z]+ \d\d, \d{4} \d\d:\d\d:\d\d-UTC\r\n$")


@pytest.fixture(scope="module")
def sockd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with all 35 listeners, stopped (and checked to stop cleanly) at the end."""
    cwd = tmp_path_factory.mktemp("loopback")
    args: list[str] = []
    for name in SERVICES:
        args += [f"--{name}", "tcp:0:interface=127.0.0.1"]
        if HAVE_IPV6:
            args += [f"--{name}", r"tcp6:0:interface=\:\:1"]
        args += [f"--{name}", f"unix:{cwd / (name + '.sock')}"]
        args += [f"--{name}", "udp:0:interface=127.0.0.1"]
        if HAVE_IPV6:
            args += [f"--{name}", r"udp:0:interface=\:\:1"]
    d = Daemon(args, cwd)
    yield d
    code = d.stop()
    # twistd ends by re-raising the SIGTERM it got (Twisted's choice), after a clean shutdown.
    assert code == 0, d.stderr() + d.log()
    assert "Server Shut Down." in d.log()
    for name in SERVICES:
        assert not (cwd / f"{name}.sock").exists(), f"{name}.sock left behind at shutdown"


def streamConnect(d: Daemon, service: str, transport: str, timeout: float = 5.0) -> socket.socket:
    """A connected stream socket to C{service} over tcp, tcp6 or unix."""
    if transport == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: object = d.path(service)
    else:
        host, port = d.address(service, transport)
        sock = socket.socket(socket.AF_INET6 if transport == "tcp6" else socket.AF_INET, socket.SOCK_STREAM)
        target = (host, port)
    sock.settimeout(timeout)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def udpAddress(d: Daemon, service: str, transport: str) -> tuple[str, int]:
    """The UDP listener of C{service} on 127.0.0.1 (udp4) or ::1 (udp6)."""
    want = "::1" if transport == "udp6" else "127.0.0.1"
    for index in range(len(d.listeners[(service, "udp")])):
        host, port = d.address(service, "udp", index)
        if host == want:
            return host, port
    raise AssertionError(f"no {service} udp listener on {want}: {d.listeners}")


def udpSocket(transport: str, timeout: float = 3.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if transport == "udp6" else socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    return sock


def exchange(d: Daemon, service: str, transport: str, payload: bytes, timeout: float = 3.0) -> bytes:
    with udpSocket(transport, timeout) as sock:
        sock.sendto(payload, udpAddress(d, service, transport))
        data, _ = sock.recvfrom(65535)
        return data


def assertSilent(sock: socket.socket, seconds: float) -> None:
    """Nothing arrives, and the connection is not closed, for C{seconds}."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return
    raise AssertionError(f"expected silence, got {data!r}" if data else "expected silence, got end of stream")


def waitForLog(d: Daemon, predicate: Callable[[str], bool], timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = d.log()
        if predicate(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def rfc868Now() -> int:
    return (int(time.time()) + RFC868_OFFSET) % 2**32


def rfc868Distance(a: int, b: int) -> int:
    """Distance between two RFC 868 values, modulo 2**32 (so the 2036 roll-over is no jump)."""
    d = (a - b) % 2**32
    return min(d, 2**32 - d)


def checkDaytime(line: bytes) -> None:
    assert DAYTIME.match(line), line
    stamp = datetime.strptime(line[:-2].decode("ascii"), "%A, %B %d, %Y %H:%M:%S-UTC").replace(tzinfo=UTC)
    assert abs(stamp.timestamp() - time.time()) < 5, line
    assert line.count(b"\r\n") == 1


# --- ack -------------------------------------------------------------------


@pytest.mark.parametrize("transport", STREAMS)
def test_ack_stream_answers_18_bytes_per_message_on_a_persistent_connection(sockd: Daemon, transport: str) -> None:
    with streamConnect(sockd, "ack", transport) as s:
        s.sendall(b"hello\n")
        assert recvExactly(s, 18) == b"I got your message"
        s.sendall(b"second\n")
        assert recvExactly(s, 18) == b"I got your message"
        # Three messages in one write: three answers, nothing more.
        s.sendall(b"one\ntwo\nthree\n")
        assert recvExactly(s, 54) == b"I got your message" * 3
        assertSilent(s, 0.3)


@pytest.mark.parametrize("transport", STREAMS)
def test_ack_answers_a_254_byte_line_without_newline_after_the_quiet_time(sockd: Daemon, transport: str) -> None:
    """What the tutorial's client sends for a long line: fgets(buffer, 255) gives 254 bytes, no newline."""
    with streamConnect(sockd, "ack", transport) as s:
        started = time.monotonic()
        s.sendall(b"x" * 254)
        answer = recvExactly(s, 18)
        elapsed = time.monotonic() - started
        assert answer == b"I got your message"
        assert 0.08 <= elapsed < 3.0, elapsed
        # The connection stays usable for the next message.
        s.sendall(b"after\n")
        assert recvExactly(s, 18) == b"I got your message"


@pytest.mark.parametrize("transport", STREAMS)
def test_ack_splits_input_longer_than_255_bytes(sockd: Daemon, transport: str) -> None:
    """300 bytes without newline: 255 answered as one message, the last 45 after the quiet time."""
    with streamConnect(sockd, "ack", transport) as s:
        s.sendall(b"y" * 300)
        assert recvExactly(s, 36) == b"I got your message" * 2
        assertSilent(s, 0.3)


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_ack_datagram_answers_got_your_message(sockd: Daemon, transport: str) -> None:
    assert exchange(sockd, "ack", transport, b"hello datagram\n") == b"Got your message\n"


@pytest.mark.parametrize("transport", STREAMS)
def test_ack_stream_logs_the_message_with_control_characters_escaped(sockd: Daemon, transport: str) -> None:
    token = f"tok-{transport}-{time.monotonic_ns()}"
    with streamConnect(sockd, "ack", transport) as s:
        s.sendall(f"{token} plain\n".encode() + f"{token} \x1b[31mred\n".encode())
        assert recvExactly(s, 36) == b"I got your message" * 2
    expected = f"Here is the message: {token} \\x1b[31mred"
    log = waitForLog(sockd, lambda text: expected in text)
    assert f"Here is the message: {token} plain" in log
    assert expected in log
    assert "\x1b" not in log, "a raw escape character reached the log"


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_ack_datagram_logs_the_message_with_control_characters_escaped(sockd: Daemon, transport: str) -> None:
    token = f"dg-{transport}-{time.monotonic_ns()}"
    assert exchange(sockd, "ack", transport, f"{token} bell\x07 cr\r here\n".encode()) == b"Got your message\n"
    expected = f"Received a datagram: {token} bell\\x07 cr\\r here"
    log = waitForLog(sockd, lambda text: expected in text)
    assert expected in log
    assert "\x07" not in log


# --- echo ------------------------------------------------------------------


@pytest.mark.parametrize("transport", STREAMS)
def test_echo_stream_returns_every_byte(sockd: Daemon, transport: str) -> None:
    payload = bytes(range(256)) * 256  # 64 KiB, every byte value
    with streamConnect(sockd, "echo", transport) as s:
        s.sendall(b"hello\r\n")
        assert recvExactly(s, 7) == b"hello\r\n"
        s.sendall(payload)
        assert recvExactly(s, len(payload)) == payload
        assertSilent(s, 0.2)


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_echo_datagram_returns_the_datagram(sockd: Daemon, transport: str) -> None:
    assert exchange(sockd, "echo", transport, b"ping \x00\xff") == b"ping \x00\xff"


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_echo_returns_a_60000_byte_datagram_whole(sockd: Daemon, transport: str) -> None:
    """Twisted's default maxPacketSize would cut this at 8192 bytes."""
    payload = bytes(i % 251 for i in range(60000))
    with udpSocket(transport) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.sendto(payload, udpAddress(sockd, "echo", transport))
        data, _ = sock.recvfrom(65535)
    assert len(data) == 60000
    assert data == payload


# --- discard ---------------------------------------------------------------


@pytest.mark.parametrize("transport", STREAMS)
def test_discard_stream_never_answers_and_stays_open(sockd: Daemon, transport: str) -> None:
    with streamConnect(sockd, "discard", transport) as s:
        s.sendall(b"throw this away\n" * 100)
        assertSilent(s, 0.3)
        s.sendall(b"and this\n")
        assertSilent(s, 0.2)
        # Still open: our half-close is answered by the server closing (EOF), not by a reset or data.
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        assert s.recv(1) == b""


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_discard_datagram_never_answers(sockd: Daemon, transport: str) -> None:
    with udpSocket(transport, timeout=0.4) as sock:
        sock.sendto(b"discard me", udpAddress(sockd, "discard", transport))
        with pytest.raises(TimeoutError):
            sock.recvfrom(65535)


# --- daytime, time, qotd: speak first, then close ----------------------------


@pytest.mark.parametrize("transport", STREAMS)
def test_daytime_stream_sends_one_crlf_line_and_closes(sockd: Daemon, transport: str) -> None:
    with streamConnect(sockd, "daytime", transport) as s:
        checkDaytime(recvAll(s))  # recvAll returns only at end of stream: the server closed


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_daytime_datagram_is_one_crlf_line(sockd: Daemon, transport: str) -> None:
    checkDaytime(exchange(sockd, "daytime", transport, b"x"))


@pytest.mark.parametrize("transport", STREAMS)
def test_time_stream_sends_4_bytes_of_seconds_since_1900_and_closes(sockd: Daemon, transport: str) -> None:
    with streamConnect(sockd, "time", transport) as s:
        data = recvAll(s)
    assert len(data) == 4, data
    assert rfc868Distance(int.from_bytes(data, "big"), rfc868Now()) <= 3


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_time_datagram_is_4_bytes_of_seconds_since_1900(sockd: Daemon, transport: str) -> None:
    data = exchange(sockd, "time", transport, b"")
    assert len(data) == 4, data
    assert rfc868Distance(int.from_bytes(data, "big"), rfc868Now()) <= 3


@pytest.mark.parametrize("transport", STREAMS)
def test_qotd_stream_sends_a_short_quote_and_closes(sockd: Daemon, transport: str) -> None:
    with streamConnect(sockd, "qotd", transport) as s:
        data = recvAll(s)
    assert 0 < len(data) < 512
    assert data.endswith(b"\r\n")
    data.decode("utf-8")


def test_qotd_unix_client_that_sends_first_gets_the_quote_and_a_clean_end_of_stream(sockd: Daemon) -> None:
    """RFC 865: data received is thrown away; a client that sends a line still gets a clean close."""
    # Whether the line reaches sockd before it closes is a race, so try a few times: every one must end cleanly.
    for _ in range(10):
        with streamConnect(sockd, "qotd", "unix") as s:
            try:
                s.sendall(b"ignored\n")
            except BrokenPipeError:
                continue  # sockd had already closed: this attempt lost the race, its line was never sent
            time.sleep(0.1)
            data = recvAll(s)
        assert 0 < len(data) < 512 and data.endswith(b"\r\n")


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_qotd_datagram_is_a_short_quote(sockd: Daemon, transport: str) -> None:
    data = exchange(sockd, "qotd", transport, b"quote please")
    assert 0 < len(data) < 512
    assert data.endswith(b"\r\n")


# --- chargen ---------------------------------------------------------------


def test_independent_chargen_pattern_matches_rfc_864_example() -> None:
    assert chargenLine(0) == RFC864_LINE0
    assert chargenLine(1) == RFC864_LINE1
    assert chargenLine(2) == RFC864_LINE2
    assert chargenLine(95) == RFC864_LINE0


@pytest.mark.parametrize("transport", STREAMS)
def test_chargen_stream_sends_the_rfc_864_pattern_and_keeps_going(sockd: Daemon, transport: str) -> None:
    with streamConnect(sockd, "chargen", transport) as s:
        head = recvExactly(s, 3 * 74)
        assert head == RFC864_LINE0 + RFC864_LINE1 + RFC864_LINE2
        # Keep reading well past one 95-line period (7030 bytes): the pattern goes on, rotating.
        more = recvExactly(s, 512 * 1024)
        assert len(more) == 512 * 1024, "chargen stopped sending"
    stream = head + more
    cycles = len(stream) // len(CHARGEN_CYCLE) + 1
    assert stream == (CHARGEN_CYCLE * cycles)[: len(stream)]


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_chargen_datagram_is_up_to_512_bytes_of_the_pattern(sockd: Daemon, transport: str) -> None:
    """RFC 864 UDP: 0 to 512 characters, which sockd starts at a line of the rotation."""
    starts = [CHARGEN_CYCLE[i * 74 :] + CHARGEN_CYCLE for i in range(95)]
    answers = [exchange(sockd, "chargen", transport, b"go") for _ in range(5)]
    for data in answers:
        assert len(data) <= 512
        assert any(s.startswith(data) for s in starts), data[:80]


def test_udp_listener_count_includes_chargen_only_because_it_was_asked(sockd: Daemon) -> None:
    """Every service has exactly the listeners asked for (UDP chargen was listed explicitly)."""
    perService = 5 if HAVE_IPV6 else 3
    for name in SERVICES:
        count = sum(len(v) for (service, _), v in sockd.listeners.items() if service == name)
        assert count == perService, (name, sockd.listeners)


def test_log_has_no_traceback(sockd: Daemon) -> None:
    """After all the traffic above (this runs last in the module), no error was logged."""
    log = sockd.log()
    assert "Traceback" not in log
    assert "Unhandled" not in log
