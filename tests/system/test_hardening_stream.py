"""Stream defences, each proved by attacking a real daemon over loopback.

Every test starts its own sockd (so limits and counters start clean), attacks
one defence, asserts the outcome from the outside (bytes, closes, RSS from
/proc, log lines), and then checks that a fresh client is still served and,
where connections were left behind, that the daemon's descriptors return to
their baseline.
"""

from __future__ import annotations

import errno
import random
import re
import socket
import struct
import threading
import time

import pytest

from tests.daemon import HAVE_IPV6, Daemon, connect, recvAll, recvExactly, waitFor

LOCAL = "tcp:0:interface=127.0.0.1"
ACK_ANSWER = b"I got your message"
MB = 1 << 20


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def fdsReturn(d: Daemon, baseline: int, timeout: float = 5.0) -> bool:
    """Whether the daemon's open descriptors come back to C{baseline} within C{timeout}."""
    return bool(waitFor(lambda: d.fds() <= baseline, f"file descriptors back to {baseline}", timeout))


def connectFrom(address: tuple[str, int], source: str = "127.0.0.1", timeout: float = 5.0,
                rcvbuf: int | None = None) -> socket.socket:
    """A TCP connection from a chosen loopback source address (127.0.0.0/8 is all ours)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if rcvbuf is not None:
        # Before connect, so the advertised window is small too: the peer blocks sooner.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    if family == socket.AF_INET:
        sock.bind((source, 0))
    sock.connect(address)
    return sock


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def closedByPeer(sock: socket.socket, timeout: float = 2.0) -> bool:
    """True if the peer closes (EOF or reset) within C{timeout} without sending a byte."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(1)
    except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    assert data == b"", f"a refused peer was sent {data!r}"
    return True


def echoes(sock: socket.socket, payload: bytes = b"ping", timeout: float = 2.0) -> bool:
    """Whether this (echo) connection is being served: the payload comes back."""
    sock.settimeout(timeout)
    try:
        sock.sendall(payload)
        return recvExactly(sock, len(payload)) == payload
    except OSError:
        return False


def freshEcho(address: tuple[str, int], source: str = "127.0.0.1") -> bool:
    with connectFrom(address, source) as sock:
        return echoes(sock, b"fresh client\n")


def freshAck(address: tuple[str, int], source: str = "127.0.0.1") -> bool:
    with connectFrom(address, source) as sock:
        sock.sendall(b"fresh client\n")
        return recvExactly(sock, len(ACK_ANSWER)) == ACK_ANSWER


def sendUntilBlocked(sock: socket.socket, chunk: bytes, limit: int, stall: float = 1.0,
                     deadline: float = 40.0) -> tuple[int, bool]:
    """Send C{chunk}s until C{limit} bytes went or a send makes no progress for C{stall} s.

    Returns the bytes the kernel accepted and whether the sender ended blocked.
    """
    sock.settimeout(stall)
    sent = 0
    end = time.monotonic() + deadline
    while sent < limit and time.monotonic() < end:
        try:
            sent += sock.send(chunk)
        except TimeoutError:
            return sent, True
    return sent, False


def rfc864(count: int) -> bytes:
    """The first C{count} bytes of the RFC 864 pattern, built from the RFC's description."""
    printable = bytes(range(32, 127)) * 2
    lines = []
    total = 0
    index = 0
    while total < count:
        line = printable[index % 95 : index % 95 + 72] + b"\r\n"
        lines.append(line)
        total += len(line)
        index += 1
    return b"".join(lines)[:count]


# ---------------------------------------------------------------------------------------------------------------
# Flow control: a peer that sends and never reads must not make the daemon buffer.


def test_echo_stops_reading_from_a_peer_that_never_reads(daemon) -> None:
    d = daemon("--echo", LOCAL)
    baseRss, baseFds = d.rss(), d.fds()
    hog = connectFrom(d.address("echo"), rcvbuf=64 * 1024)
    sent, blocked = sendUntilBlocked(hog, b"x" * 65536, 100 * MB)
    grown = d.rss() - baseRss
    assert blocked, f"sent all {sent} bytes without blocking: the daemon kept reading"
    assert sent < 50 * MB, f"{sent} bytes accepted before the sender blocked"
    assert grown < 20 * MB, f"RSS grew {grown / MB:.1f} MB for a peer that never reads"
    # Still blocked a second later: the daemon really stopped reading, it was not just slow.
    hog.settimeout(1.0)
    with pytest.raises(TimeoutError):
        hog.send(b"x" * 65536)
    assert freshEcho(d.address("echo"))
    reset(hog)
    assert fdsReturn(d, baseFds)


def test_ack_stops_reading_from_a_peer_that_never_reads_its_answers(daemon) -> None:
    # 6-byte messages, 18-byte answers: the answers pile up three times as fast as the input.
    d = daemon("--ack", LOCAL, "--no-log-messages")
    baseRss, baseFds = d.rss(), d.fds()
    hog = connectFrom(d.address("ack"), rcvbuf=64 * 1024)
    sent, blocked = sendUntilBlocked(hog, b"hello\n" * 10000, 100 * MB)
    grown = d.rss() - baseRss
    assert blocked, f"sent all {sent} bytes without blocking: the daemon kept reading"
    assert sent < 50 * MB
    assert grown < 20 * MB, f"RSS grew {grown / MB:.1f} MB for {sent} bytes of unread-answer messages"
    assert freshAck(d.address("ack"))
    # The blocked connection was not broken: reading now gets answers, byte-exact.
    hog.settimeout(5.0)
    assert recvExactly(hog, 18 * 100) == ACK_ANSWER * 100
    reset(hog)
    assert fdsReturn(d, baseFds)


def test_chargen_to_peers_that_never_read_costs_no_memory(daemon) -> None:
    d = daemon("--chargen", LOCAL)
    baseRss, baseFds = d.rss(), d.fds()
    hogs = [connectFrom(d.address("chargen"), rcvbuf=4096) for _ in range(20)]
    time.sleep(2.0)
    grown = d.rss() - baseRss
    assert grown < 20 * MB, f"RSS grew {grown / MB:.1f} MB for 20 chargen peers that never read"
    with connectFrom(d.address("chargen")) as fresh:
        assert recvExactly(fresh, 10000) == rfc864(10000)
    for hog in hogs:
        reset(hog)
    assert fdsReturn(d, baseFds)


# ---------------------------------------------------------------------------------------------------------------
# Bounded buffers: a line without end is cut into 255-byte messages, not buffered whole.


def test_ten_megabyte_line_is_answered_in_255_byte_messages(daemon) -> None:
    d = daemon("--ack", LOCAL, "--no-log-messages")
    baseRss = d.rss()
    total = 10 * MB
    expected = -(-total // 255)  # 41121 answers: 41120 full messages and a 160-byte rest after the quiet time
    sock = connect(d.address("ack"), timeout=30.0)
    received = bytearray()

    def reader() -> None:
        try:
            while len(received) < expected * len(ACK_ANSWER):
                chunk = sock.recv(65536)
                if not chunk:
                    return
                received.extend(chunk)
        except OSError:
            return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    peak = 0
    block = b"a" * MB
    for _ in range(total // MB):
        sock.sendall(block)
        peak = max(peak, d.rss() - baseRss)
    thread.join(30.0)
    peak = max(peak, d.rss() - baseRss)
    assert not thread.is_alive(), f"only {len(received) // 18} of {expected} answers after 30 s"
    assert bytes(received) == ACK_ANSWER * expected
    assert peak < 20 * MB, f"RSS grew {peak / MB:.1f} MB while a 10 MB line was sent"
    sock.close()
    assert freshAck(d.address("ack"))


# ---------------------------------------------------------------------------------------------------------------
# Idle timeout (slow-loris): connections that say nothing are closed.


def test_idle_connection_is_closed_after_the_idle_timeout(daemon) -> None:
    d = daemon("--echo", LOCAL, "--idle-timeout", "1")
    baseFds = d.fds()
    sock = connect(d.address("echo"))
    start = time.monotonic()
    assert closedByPeer(sock, timeout=4.0)
    elapsed = time.monotonic() - start
    assert 0.8 <= elapsed <= 2.0, f"idle connection closed after {elapsed:.2f}s with --idle-timeout 1"
    sock.close()
    assert freshEcho(d.address("echo"))
    assert fdsReturn(d, baseFds)
    assert "idle for 1s" in d.log()


def test_many_idle_connections_are_all_closed_and_a_busy_one_is_kept(daemon) -> None:
    d = daemon("--echo", LOCAL, "--ack", LOCAL, "--discard", LOCAL, "--idle-timeout", "1")
    baseFds = d.fds()
    services = ("echo", "ack", "discard")
    idle = [connect(d.address(services[i % 3])) for i in range(60)]
    waitFor(lambda: d.fds() >= baseFds + 60, "60 more open descriptors", 3.0)
    busy = connect(d.address("echo"))
    start = time.monotonic()
    # Keep one connection busy for 2.5 s (sending every 0.3 s): it must survive the idle sweep.
    while time.monotonic() - start < 2.5:
        assert echoes(busy, b"still here"), "a connection that keeps talking was closed as idle"
        time.sleep(0.3)
    for sock in idle:
        assert closedByPeer(sock, timeout=1.0), "an idle connection was still open 3.5 s after --idle-timeout 1"
        sock.close()
    assert echoes(busy, b"last")
    busy.close()
    assert freshEcho(d.address("echo"))
    assert fdsReturn(d, baseFds)


# ---------------------------------------------------------------------------------------------------------------
# Connection limits: refused connections are closed at once, before any byte is read.


def test_max_connections_refuses_the_next_connection_at_once(daemon) -> None:
    d = daemon("--echo", LOCAL, "--max-connections", "5")
    address = d.address("echo")
    baseFds = d.fds()
    held = [connect(address) for _ in range(5)]
    assert all(echoes(s) for s in held)
    extra = connect(address)
    start = time.monotonic()
    assert closedByPeer(extra, timeout=2.0), "connection 6 of --max-connections 5 was kept open"
    assert time.monotonic() - start < 1.0
    extra.close()
    # Connections from another source are refused too: the limit is the daemon's total.
    extra = connectFrom(address, "127.0.0.2")
    assert closedByPeer(extra)
    extra.close()
    # Closing one makes room for exactly one more, and the refusals did not leak a slot.
    held.pop().close()
    waitFor(lambda: freshEcho(address), "a fresh echo connection to be served", 3.0)
    for s in held:
        s.close()
    assert fdsReturn(d, baseFds)
    again = [connect(address) for _ in range(5)]
    assert all(echoes(s) for s in again), "slots leaked: fewer than 5 connections admitted after all closed"
    for s in again:
        s.close()
    assert fdsReturn(d, baseFds)


def test_max_per_source_refuses_one_address_but_not_another(daemon) -> None:
    d = daemon("--echo", LOCAL, "--max-per-source", "3", "--exempt", "none")
    address = d.address("echo")
    baseFds = d.fds()
    held = [connect(address) for _ in range(3)]
    assert all(echoes(s) for s in held)
    extra = connect(address)
    assert closedByPeer(extra), "connection 4 from one source was kept with --max-per-source 3"
    extra.close()
    assert freshEcho(address, source="127.0.0.2"), "another source was refused by a per-source limit"
    held.pop().close()
    waitFor(lambda: freshEcho(address), "a fresh echo connection to be served", 3.0)
    for s in held:
        s.close()
    assert fdsReturn(d, baseFds)
    assert "(per-source)" in d.log()


def test_connection_rate_admits_the_burst_then_the_rate(daemon) -> None:
    d = daemon("--echo", LOCAL, "--connection-rate", "2", "--connection-burst", "5", "--exempt", "none")
    address = d.address("echo")
    baseFds = d.fds()
    verdicts = []
    start = time.monotonic()
    for _ in range(20):
        with connect(address) as s:
            verdicts.append(echoes(s, timeout=1.0))
    elapsed = time.monotonic() - start
    admitted = sum(verdicts)
    allowed = 5 + int(2 * elapsed)
    assert verdicts[:5] == [True] * 5, verdicts
    assert 5 <= admitted <= allowed, f"{admitted} of 20 admitted in {elapsed:.2f}s (burst 5, 2/s)"
    assert freshEcho(address, source="127.0.0.2"), "another source was refused by a per-source rate"
    time.sleep(1.1)  # two tokens back
    assert freshEcho(address)
    assert fdsReturn(d, baseFds)
    assert "(rate)" in d.log()


def test_refusals_are_logged_once_per_source_and_interval(daemon) -> None:
    d = daemon("--echo", LOCAL, "--max-per-source", "1", "--exempt", "none", "--refusal-log-interval", "2")
    address = d.address("echo")
    holder = connect(address)
    assert echoes(holder)
    for attempt in range(50):
        with connect(address) as s:
            assert closedByPeer(s), f"connection {attempt + 2} admitted with --max-per-source 1"
    pattern = re.compile(r"refused 127\.0\.0\.1 \(per-source\)")
    assert len(pattern.findall(d.log())) == 1, "50 refusals did not give exactly one log line"
    time.sleep(2.1)  # the interval is over: the next refusal is logged again, once
    for _ in range(10):
        with connect(address) as s:
            assert closedByPeer(s)
    waitFor(lambda: len(pattern.findall(d.log())) == 2, "two refusal lines in the log", 2.0)
    holder.close()
    waitFor(lambda: freshEcho(address), "a fresh echo connection to be served", 3.0)


# ---------------------------------------------------------------------------------------------------------------
# Access control: a refused peer gets not one byte, not even from a service that speaks first.


def test_denied_peer_is_closed_before_any_byte(daemon) -> None:
    d = daemon("--echo", LOCAL, "--daytime", LOCAL, "--ack", LOCAL, "--deny", "127.0.0.1/32")
    baseFds = d.fds()
    for service in ("echo", "ack"):
        with connect(d.address(service)) as s:
            s.sendall(b"let me in\n")
            assert closedByPeer(s), f"{service} kept a denied peer"
    for _ in range(5):
        with connect(d.address("daytime")) as s:
            assert recvAll(s) == b"", "daytime spoke to a denied peer"
    assert freshEcho(d.address("echo"), source="127.0.0.2")
    with connectFrom(d.address("daytime"), "127.0.0.2") as s:
        assert recvAll(s).endswith(b"-UTC\r\n")
    assert fdsReturn(d, baseFds)
    assert "(access)" in d.log()
    assert "let me in" not in d.log()


def test_allow_list_refuses_everyone_else(daemon) -> None:
    d = daemon("--echo", LOCAL, "--qotd", LOCAL, "--allow", "10.0.0.0/8", "--allow", "127.0.0.2/32")
    with connect(d.address("echo")) as s:
        assert closedByPeer(s), "127.0.0.1 served although only 10.0.0.0/8 and 127.0.0.2 are allowed"
    with connectFrom(d.address("qotd"), "127.0.0.3") as s:
        assert recvAll(s) == b""
    assert freshEcho(d.address("echo"), source="127.0.0.2")
    with connectFrom(d.address("qotd"), "127.0.0.2") as s:
        assert 0 < len(recvAll(s)) < 512




@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback here")
def test_ipv6_deny(daemon) -> None:
    d = daemon("--echo", "tcp6:0:interface=\\:\\:1", "--daytime", "tcp6:0:interface=\\:\\:1", "--echo", LOCAL,
               "--deny", "::1/128")
    six = d.listeners[("echo", "tcp6")]
    assert six, d.listeners
    with connect(d.address("echo", "tcp6")) as s:
        s.sendall(b"v6")
        assert closedByPeer(s), "::1 served although denied"
    with connect(d.address("daytime", "tcp6")) as s:
        assert recvAll(s) == b""
    assert freshEcho(d.address("echo", "tcp"))


# ---------------------------------------------------------------------------------------------------------------
# Resets and garbage: abuse in every shape, then the daemon still serves and has leaked nothing.


SPEAKERS = ("chargen", "daytime", "qotd", "time")


def ackMessages(payload: bytes, maxMessage: int = 255) -> int:
    """How many answers ack owes for C{payload} followed by a half-close (the tutorial's framing rules)."""
    count = 0
    pending = 0
    for byte in payload:
        pending += 1
        if byte == 0x0A or pending == maxMessage:
            count += 1
            pending = 0
    return count + (1 if pending else 0)


def test_resets_garbage_and_half_closes_leave_the_daemon_whole(daemon) -> None:
    services = ("ack", "echo", "discard", "chargen", "daytime", "qotd", "time")
    args: list[str] = []
    for service in services:
        args += [f"--{service}", LOCAL]
    d = daemon(*args, "--ack", "unix:ack.sock", "--no-log-messages")
    baseFds = d.fds()
    rng = random.Random(862)

    def attack(service: str, kind: str) -> None:
        sock = connect(d.address(service), timeout=3.0)
        try:
            if kind == "garbage-reset":
                sock.sendall(rng.randbytes(rng.randint(1, 64 * 1024)))
                time.sleep(rng.random() * 0.01)
            elif kind == "partial-reset":
                sock.sendall(b"a partial message without its end" * rng.randint(1, 20))
            elif kind == "read-some-reset" and service in SPEAKERS:
                assert sock.recv(rng.randint(1, 4096)), f"{service} said nothing"
            elif kind == "half-close":
                payload = rng.randbytes(rng.randint(0, 4096))
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                if service == "chargen":
                    assert sock.recv(100)
                else:
                    got = recvAll(sock)
                    if service == "echo":
                        assert got == payload, "echo after half-close lost bytes"
                    elif service == "ack":
                        assert got == ACK_ANSWER * ackMessages(payload), "ack after half-close miscounted"
                    elif service == "discard":
                        assert got == b""
                sock.close()
                return
        except OSError as e:
            # A speak-first service closes after speaking, so sending to it may meet a reset; nothing else may.
            if service not in SPEAKERS or e.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                raise
        reset(sock)

    kinds = ("reset-now", "garbage-reset", "partial-reset", "read-some-reset", "half-close")
    for _ in range(300):
        attack(rng.choice(services), rng.choice(kinds))
    # The Unix listener gets the same treatment, fewer times.
    for _ in range(30):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
            u.connect(d.path("ack"))
            u.sendall(rng.randbytes(rng.randint(1, 2000)))
            u.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert d.process.poll() is None, "sockd died under abuse"
    assert freshAck(d.address("ack"))
    assert freshEcho(d.address("echo"))
    with connect(d.address("chargen")) as s:
        assert recvExactly(s, 7400) == rfc864(7400)
    with connect(d.address("time")) as s:
        assert len(recvAll(s)) == 4
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
        u.settimeout(5.0)
        u.connect(d.path("ack"))
        u.sendall(b"unix after abuse\n")
        assert recvExactly(u, 18) == ACK_ANSWER
    assert fdsReturn(d, baseFds, timeout=5.0), f"fds {d.fds()} > baseline {baseFds} after the abuse"
    log = d.log()
    assert "Traceback" not in log and "Unhandled" not in log, log[-3000:]
