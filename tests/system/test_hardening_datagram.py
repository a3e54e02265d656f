"""Datagram defences (reflection, loops, floods, access), attacked over real loopback UDP.

Each dropped datagram is checked from outside twice where it can be: the
sender gets no answer, and, with C{--refusal-log-interval 0}, the daemon logs
one drop line per datagram naming the reason.  Forged source addresses (a
loop between two echo services, source port 0) are sent through a raw socket,
which needs root; those tests skip without it.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time

import pytest

from tests.daemon import Daemon

UDP_LOCAL = "udp:0:interface=127.0.0.1"
ACK_ANSWER = b"Got your message\n"


def answer(address: tuple[str, int], payload: bytes = b"hello", bind: tuple[str, int] | None = None,
           timeout: float = 0.5) -> bytes | None:
    """The daemon's answer to one datagram, or None if none came within C{timeout}."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        if bind is not None:
            sock.bind(bind)
        sock.sendto(payload, address)
        try:
            return sock.recvfrom(65535)[0]
        except TimeoutError:
            return None


def drops(d: Daemon, reason: str) -> int:
    """Drop lines logged for C{reason} (one per datagram with --refusal-log-interval 0)."""
    return len(re.findall(rf"dropping datagrams from \S+ \({re.escape(reason)}\)", d.log()))


def waitForDrops(d: Daemon, reason: str, count: int, timeout: float = 3.0) -> int:
    deadline = time.monotonic() + timeout
    while drops(d, reason) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return drops(d, reason)


def bindable(host: str, port: int, kind: int = socket.SOCK_DGRAM) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, kind) as s:
            s.bind((host, port))
        return True
    except OSError:
        return False


def canForge() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
        return True
    except OSError:
        return False


needsRaw = pytest.mark.skipif(not canForge(), reason="forging a source address needs a raw socket (root)")


def forge(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> None:
    """Send a UDP datagram with any source address and port, as a reflection attacker would."""
    udp = struct.pack("!HHHH", source[1], destination[1], 8 + len(payload), 0) + payload  # checksum 0: none
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                         socket.inet_aton(source[0]), socket.inet_aton(destination[0]))
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(header + udp, (destination[0], 0))


# ---------------------------------------------------------------------------------------------------------------
# Reflection and loops: datagrams from service ports get no answer.


@pytest.mark.parametrize("sourcePort", [7, 19])
def test_datagrams_from_small_service_ports_are_not_answered(daemon, sourcePort: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("binding a client to a port below 1024 needs root")
    if not bindable("127.0.0.1", sourcePort):
        pytest.skip(f"UDP port {sourcePort} is in use here")
    d = daemon("--echo", UDP_LOCAL, "--ack", UDP_LOCAL, "--daytime", UDP_LOCAL, "--refusal-log-interval", "0")
    for service in ("echo", "ack", "daytime"):
        assert answer(d.address(service, "udp"), bind=("127.0.0.1", sourcePort)) is None, \
            f"{service} answered a datagram from port {sourcePort}: a loop/reflection tool"
    assert waitForDrops(d, "source-port", 3) == 3
    # A fresh client on an ordinary port is answered by each.
    assert answer(d.address("echo", "udp"), b"fresh") == b"fresh"
    assert answer(d.address("ack", "udp")) == ACK_ANSWER
    assert (answer(d.address("daytime", "udp")) or b"").endswith(b"-UTC\r\n")


def test_datagrams_from_sockds_own_ports_are_not_answered(daemon) -> None:
    # The listeners bind 127.0.0.1 only, so the client can take the very same port numbers on 127.0.0.2:
    # that is what a second sockd (or this one, reflected) answering from those ports looks like.
    d = daemon("--echo", UDP_LOCAL, "--ack", UDP_LOCAL, "--refusal-log-interval", "0")
    echo, ack = d.address("echo", "udp"), d.address("ack", "udp")
    assert answer(ack, bind=("127.0.0.2", echo[1])) is None, "ack answered a datagram from sockd's echo port"
    assert answer(echo, bind=("127.0.0.2", ack[1])) is None, "echo answered a datagram from sockd's ack port"
    assert answer(echo, bind=("127.0.0.2", echo[1])) is None, "echo answered a datagram from its own port"
    assert waitForDrops(d, "source-port", 3) == 3
    assert answer(echo, b"fresh", bind=("127.0.0.2", 0)) == b"fresh"
    assert answer(ack) == ACK_ANSWER


@needsRaw
def test_forged_loop_between_two_listeners_of_one_daemon_is_not_started(daemon) -> None:
    d = daemon("--echo", UDP_LOCAL, "--ack", UDP_LOCAL, "--refusal-log-interval", "0")
    echo, ack = d.address("echo", "udp"), d.address("ack", "udp")
    forge(("127.0.0.1", ack[1]), echo, b"echo, answer ack")
    forge(("127.0.0.1", echo[1]), ack, b"ack, answer echo")
    assert waitForDrops(d, "source-port", 2) == 2
    time.sleep(0.3)
    assert drops(d, "source-port") == 2, "more drops than forged datagrams: a loop ran"
    assert "answer echo" not in d.log(), "ack logged (so answered) a datagram from sockd's own echo port"
    assert answer(echo, b"fresh") == b"fresh"


@needsRaw
def test_forged_echo_to_echo_loop_between_two_daemons_stops_at_once(daemon, tmp_path) -> None:
    """The CERT CA-1996-01 loop: a forged datagram from echo B to echo A (on port 7).

    A cannot know B is an echo service (B's port is ephemeral), so A answers once,
    from port 7, to B.  B sees a datagram from port 7 and drops it: the loop ends
    after one answer instead of running forever.
    """
    if not bindable("127.0.0.1", 7):
        pytest.skip("UDP port 7 is in use here")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = daemon("--echo", "udp:7:interface=127.0.0.1", "--refusal-log-interval", "0", cwd=tmp_path / "a")
    b = daemon("--echo", UDP_LOCAL, "--refusal-log-interval", "0", cwd=tmp_path / "b")
    forge(b.address("echo", "udp"), a.address("echo", "udp"), b"start a loop")
    assert waitForDrops(b, "source-port", 1) == 1, "B did not drop A's answer from port 7"
    time.sleep(0.5)
    assert drops(b, "source-port") == 1, "B saw A more than once: the loop ran"
    assert drops(a, "source-port") == 0
    assert answer(a.address("echo", "udp"), b"fresh A") == b"fresh A"
    assert answer(b.address("echo", "udp"), b"fresh B") == b"fresh B"


@needsRaw
def test_forged_source_port_zero_is_dropped(daemon) -> None:
    d = daemon("--echo", UDP_LOCAL, "--refusal-log-interval", "0")
    forge(("127.0.0.1", 0), d.address("echo", "udp"), b"from port zero")
    assert waitForDrops(d, "source-port", 1) == 1
    assert answer(d.address("echo", "udp"), b"fresh") == b"fresh"


# ---------------------------------------------------------------------------------------------------------------
# Floods: a per-source token bucket and a global budget of answers.


def _burst(address: tuple[str, int], count: int, source: str = "127.0.0.1", quiet: float = 0.5) -> int:
    """Send C{count} datagrams as fast as possible from one socket; count the answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for i in range(count):
            sock.sendto(b"flood %d" % i, address)
        sock.settimeout(quiet)
        answered = 0
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                sock.recvfrom(65535)
            except TimeoutError:
                break
            answered += 1
        return answered


def test_per_source_token_bucket_limits_answers(daemon) -> None:
    d = daemon("--echo", UDP_LOCAL, "--udp-rate", "5", "--udp-burst", "5", "--exempt", "none")
    address = d.address("echo", "udp")
    start = time.monotonic()
    answered = _burst(address, 50)
    elapsed = time.monotonic() - start
    # The burst of 5, plus at most 5/s for the time the flood and the wait took.
    assert 5 <= answered <= 5 + int(5 * elapsed) + 1, f"{answered} of 50 answered in {elapsed:.2f}s"
    assert answered < 10
    assert answer(address, b"fresh", bind=("127.0.0.2", 0)) == b"fresh", "another source was limited too"
    time.sleep(1.0)
    assert answer(address, b"again") == b"again", "the bucket did not refill"
    assert "(rate)" in d.log()


def test_global_budget_limits_answers_to_everyone(daemon) -> None:
    # Per-source buckets far above the flood, so only the global budget (10/s) stands in the way.
    d = daemon("--echo", UDP_LOCAL, "--ack", UDP_LOCAL, "--udp-budget", "10", "--exempt", "none",
               "--udp-rate", "1000", "--udp-burst", "1000")
    start = time.monotonic()
    answered = sum(_burst(d.address("echo" if i % 2 else "ack", "udp"), 20, source=f"127.0.0.{i + 1}", quiet=0.2)
                   for i in range(5))
    elapsed = time.monotonic() - start
    assert 10 <= answered <= 10 + int(10 * elapsed) + 1, f"{answered} of 100 answered in {elapsed:.2f}s"
    assert answered < 40
    time.sleep(1.0)
    assert answer(d.address("echo", "udp"), b"fresh") == b"fresh", "the budget did not refill"
    assert "(budget)" in d.log()


def test_exempt_sources_are_outside_the_budget(daemon) -> None:
    # Loopback (exempt by default) cannot be forged from the network, so it reflects nothing: no budget.
    d = daemon("--echo", UDP_LOCAL, "--udp-budget", "10")
    assert _burst(d.address("echo", "udp"), 50) == 50


# ---------------------------------------------------------------------------------------------------------------
# Access control for datagrams.


def test_denied_source_gets_no_datagram_answer(daemon) -> None:
    d = daemon("--echo", UDP_LOCAL, "--daytime", UDP_LOCAL, "--deny", "127.0.0.1/32", "--refusal-log-interval", "0")
    assert answer(d.address("echo", "udp")) is None
    assert answer(d.address("daytime", "udp")) is None, "daytime spoke to a denied source"
    assert waitForDrops(d, "access", 2) == 2
    assert answer(d.address("echo", "udp"), b"fresh", bind=("127.0.0.2", 0)) == b"fresh"


def test_allow_list_applies_to_datagrams(daemon) -> None:
    d = daemon("--echo", UDP_LOCAL, "--allow", "10.0.0.0/8", "--allow", "127.0.0.2/32")
    assert answer(d.address("echo", "udp")) is None
    assert answer(d.address("echo", "udp"), bind=("127.0.0.3", 0)) is None
    assert answer(d.address("echo", "udp"), b"fresh", bind=("127.0.0.2", 0)) == b"fresh"


@pytest.mark.skipif(not bindable("::1", 0), reason="no IPv6 loopback here")
def test_ipv6_denied_source_gets_no_datagram_answer(daemon) -> None:
    d = daemon("--echo", "udp:0:interface=\\:\\:1", "--echo", UDP_LOCAL, "--deny", "::1/128")
    six = next(a for a in d.listeners[("echo", "udp")] if a.startswith("["))
    host, _, port = six.rpartition(":")
    assert answer((host.strip("[]"), int(port))) is None, "::1 answered although denied"
    four = next(a for a in d.listeners[("echo", "udp")] if not a.startswith("["))
    assert answer(("127.0.0.1", int(four.rpartition(":")[2])), b"fresh") == b"fresh"
