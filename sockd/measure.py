"""The measuring half of sockd-client: ping, load, and clock checks.

Standard library only, with no import of Twisted or of the rest of sockd: the
client must start fast, and must not share a reactor (or a bug) with the server
it measures.  It works against sockd's ack service and against any RFC 862
(echo), 863 (discard), 864 (chargen), 867 (daytime) or 868 (time) server.

One module, in sections (target, stats, probe, ping, load, clock), so that it
ships with the C{sockd} package as it is listed for packaging.
"""

from __future__ import annotations

import calendar
import datetime
import math
import re
import resource
import select
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_tz
from typing import Protocol

# --------------------------------------------------------------------------- target
# Where to measure: an address, a transport, TLS or not, and how to open a socket to it.


#: The ack service's answer to each message of a stream (18 bytes, no newline).
ACK_STREAM = b"I got your message"
#: The ack service's answer to a datagram.
ACK_DATAGRAM = b"Got your message\n"
#: The ack service answers every this many bytes of a message separately (its default --max-message).
ACK_MESSAGE_LIMIT = 255


class MeasureError(Exception):
    """A failure to report as one line on stderr."""


class UsageError(MeasureError):
    """A request that cannot work whatever the server does (exit status 2)."""


class FatalError(MeasureError):
    """A failure that trying again cannot mend (an unverifiable certificate): ping stops at once."""


@dataclass
class Target:
    """One server to measure: where it is, over what, and with which TLS settings."""
    transport: str  # "tcp", "udp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""
    tls: ssl.SSLContext | None = None
    servername: str | None = None
    family: int = socket.AF_UNSPEC
    sockaddr: object = None
    #: The resolver's other addresses, tried in turn while connections are refused (streams only).
    others: list[tuple[int, object]] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        """HOST:PORT ([::1]:PORT for IPv6), or the Unix socket's path."""
        if self.transport == "unix":
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def stream(self) -> bool:
        return self.transport != "udp"

    @property
    def transportName(self) -> str:
        return f"{self.transport}+tls" if self.tls else self.transport

    def resolve(self) -> None:
        """Look the host up once: every socket of a run goes to the same address.

        That is the resolver's first, or for a stream the first that accepts a connection (localhost may be
        ::1 first, with the server only on 127.0.0.1), as the one-shot client does.
        """
        if self.transport == "unix":
            self.family, self.sockaddr = socket.AF_UNIX, self.path
            return
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=kind)
        except socket.gaierror:
            raise MeasureError(f"unknown host {self.host}") from None
        self.family, self.sockaddr = infos[0][0], infos[0][4]
        self.others = [(info[0], info[4]) for info in infos[1:]] if kind == socket.SOCK_STREAM else []

    def connectStream(self, timeout: float) -> socket.socket:
        """A connected (and, with TLS, handshaken) blocking stream socket with C{timeout}; MeasureError if not."""
        while True:
            try:
                sock = self._connectStream(timeout)
            except MeasureError as e:
                if not self.others or not str(e).startswith("connection refused"):
                    raise
                self.family, self.sockaddr = self.others.pop(0)
                continue
            self.others = []  # settled: from now on only this address
            return sock

    def _connectStream(self, timeout: float) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        if self.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(self.sockaddr)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.servername)
        except ConnectionRefusedError:
            sock.close()
            raise MeasureError(f"connection refused by {self.label}") from None
        except FileNotFoundError:
            sock.close()
            raise MeasureError(f"no such socket: {self.label}") from None
        except TimeoutError:
            sock.close()
            raise MeasureError(f"timed out connecting to {self.label}") from None
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise FatalError(f"TLS: cannot verify {self.label}: {e.verify_message} "
                               "(--cafile FILE, or --insecure for a test certificate)") from None
        except ssl.SSLError as e:
            sock.close()
            raise MeasureError(f"TLS handshake with {self.label} failed: {e.reason or e}") from None
        except OSError as e:
            sock.close()
            raise MeasureError(f"cannot connect to {self.label}: {e.strerror or e}") from None
        return sock

    def datagramSocket(self) -> socket.socket:
        """A non-blocking UDP socket connected to the target (so ICMP port-unreachable is seen, and only its
        replies are received)."""
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            sock.connect(self.sockaddr)
        except OSError as e:
            sock.close()
            raise MeasureError(f"cannot reach {self.label}: {e.strerror or e}") from None
        sock.setblocking(False)
        return sock


def tlsContext(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    """A client context: verified against the system store (or C{cafile}), or not verified at all."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot read --cafile {cafile}: {getattr(e, 'strerror', None) or e}") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


# --------------------------------------------------------------------------- stats
# Latency statistics that cost one list increment per sample.
#
# A load run may answer hundreds of thousands of requests a second for minutes, so
# samples go into a log-linear histogram (HDR-like: 128 linear steps per power of
# two, at most 0.8% error, about 8,000 counters whatever the run's length) instead
# of a list.  Minimum, maximum, sum and sum of squares are kept exactly, so ping's
# min/avg/max/mdev are exact and only the percentiles are bucketed.


#: Values below this (in ns) get a bucket each.
LINEAR = 256
#: Linear steps per power of two above LINEAR (2**SUB_BITS).
SUB_BITS = 7
#: Enough buckets for values up to 2**60 ns (36 years).
BUCKETS = (60 << SUB_BITS) + LINEAR


def bucketOf(value: int) -> int:
    """The histogram slot of C{value} (ns); inlined by hot loops, kept here as the definition."""
    if value < LINEAR:
        return max(value, 0)
    shift = value.bit_length() - 8
    return (shift << SUB_BITS) + (value >> shift)


def bucketBounds(index: int) -> tuple[int, int]:
    """The lowest value of slot C{index} and its width."""
    if index < LINEAR:
        return index, 1
    shift = (index >> SUB_BITS) - 1
    return (index - (shift << SUB_BITS)) << shift, 1 << shift


class Histogram:
    """Round-trip times in nanoseconds."""

    __slots__ = ("counts", "count", "total", "squares", "low", "high")

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS
        self.count = 0
        self.total = 0
        self.squares = 0
        self.low: int | None = None
        self.high: int | None = None

    def record(self, value: int) -> None:
        """One sample (ping's path: exact sums as well as the bucket)."""
        self.counts[bucketOf(value)] += 1
        self.count += 1
        self.total += value
        self.squares += value * value
        if self.low is None or value < self.low:
            self.low = value
        if self.high is None or value > self.high:
            self.high = value

    def absorb(self, counts: list[int], total: int) -> None:
        """Take a hot loop's own bucket list (and exact sum); min and max come from the buckets."""
        self.counts = counts
        self.count = sum(counts)
        self.total = total
        self.squares = 0
        occupied = [i for i, n in enumerate(counts) if n]
        if occupied:
            self.low = bucketBounds(occupied[0])[0]
            start, width = bucketBounds(occupied[-1])
            self.high = start + width - 1

    def percentile(self, q: float) -> int | None:
        """The nearest-rank C{q} quantile (0 < q <= 1): the middle of its bucket, within [min, max]."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            if n:
                seen += n
                if seen >= rank:
                    start, width = bucketBounds(index)
                    value = start + (width - 1) // 2
                    if self.low is not None:
                        value = max(value, self.low)
                    if self.high is not None:
                        value = min(value, self.high)
                    return value
        return self.high

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def mdev(self) -> float | None:
        """ping's mdev: sqrt(mean of squares - square of mean), from the exact sums."""
        if not self.count or not self.squares:
            return None if not self.count else 0.0
        mean = self.total / self.count
        return math.sqrt(max(self.squares / self.count - mean * mean, 0.0))

    def summary(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float | None]:
        """Milliseconds, rounded to the microsecond's thousandth: min, avg, max, mdev, p50, p90, p99..."""
        def ms(ns: float | None) -> float | None:
            return None if ns is None else round(ns / 1e6, 6)

        out: dict[str, float | None] = {"min": ms(self.low), "avg": ms(self.mean()), "max": ms(self.high),
                                        "mdev": ms(self.mdev()) if self.squares or not self.count else None}
        for q in quantiles:
            out[quantileName(q)] = ms(self.percentile(q))
        return out


def quantileName(q: float) -> str:
    """0.5 -> p50, 0.999 -> p999."""
    text = f"{q * 100:g}".replace(".", "")
    return f"p{text}"


# --------------------------------------------------------------------------- probe
# Probe payloads: text that carries a sequence number and a send time.
#
# A probe is one line of printable ASCII ending in its only newline, so that the
# ack service (which answers each newline-terminated message) answers it exactly
# once, and so that a server's log shows it legibly.  C{sockd SEQ TIME pad...\\n}:
# the sequence number lets an echoed datagram be matched to its probe (loss,
# duplicates and reordering are counted, not guessed), the send time lets a late
# reply still be timed.


HEADER = b"sockd %010d %016x "
#: The header's length; a probe is at least this plus its newline.
HEADER_SIZE = len(HEADER % (0, 0))
MIN_PROBE = HEADER_SIZE + 1
_ALPHABET = bytes(range(ord("a"), ord("z") + 1))


def filler(size: int) -> bytes:
    """C{size} printable bytes without a newline (a to z, over and over)."""
    return (_ALPHABET * (size // len(_ALPHABET) + 1))[:size]
_PARSE = re.compile(rb"sockd (\d{10}) ([0-9a-f]{16}) ")


def makeProbe(seq: int, sentNs: int, size: int) -> bytes:
    """Probe C{seq}, C{size} bytes long (size >= MIN_PROBE)."""
    head = HEADER % (seq % 10**10, sentNs & 0xFFFFFFFFFFFFFFFF)
    return head + filler(size - HEADER_SIZE - 1) + b"\n"


def parseProbe(data: bytes) -> tuple[int, int] | None:
    """(sequence number, send time in ns) of an echoed probe, or None if it does not start like one."""
    found = _PARSE.match(data)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2), 16)


# --------------------------------------------------------------------------- ping
# Ping mode: probes at an interval, one line per reply, a summary in ping's shape.
#
# Over a stream (TCP, Unix, TLS) one connection carries every probe; a stream
# answers in order, so each probe waits for the previous reply, and a timeout or a
# wrong reply closes the connection (the stream is out of step) and the next
# probe opens a new one.  Over UDP probes go out at the interval whatever comes
# back, and replies are matched to probes: by the sequence number an echoed probe
# carries, or, since the ack service's datagram answer carries nothing of the
# probe, by sending each probe from its own socket (its own source port) and
# matching the reply by the socket it arrives on.


#: With per-probe sockets (ack over UDP) at most this many are open at once: an answered probe's socket is
#: kept until its deadline (to see a duplicate) only while fewer than half are open, and no probe is sent
#: while this many wait for their answers.
MAX_PROBE_SOCKETS = 1000


class Reporter(Protocol):
    """What ping tells as it goes: a line per reply, a line per problem."""
    def reply(self, seq: int, size: int, rttNs: int, note: str) -> None: ...

    def problem(self, seq: int | None, text: str) -> None: ...


@dataclass
class PingOptions:
    """How to ping: how many probes, how often, how big, how long to wait, and what answers."""
    count: int = 0  # 0: until interrupted
    interval: float = 1.0
    size: int = 64
    timeout: float = 5.0
    expect: str = "auto"  # "auto", "echo" or "ack"


@dataclass
class PingResult:
    """Everything a ping run counted; loss is 1 - received/sent, so a corrupt reply is a loss too."""
    target: str
    transport: str
    size: int
    expect: str
    sent: int = 0
    received: int = 0
    corrupt: int = 0
    duplicates: int = 0
    reordered: int = 0
    late: int = 0
    errors: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    connectNs: int | None = None
    rtt: Histogram = field(default_factory=Histogram)

    @property
    def lossPercent(self) -> float:
        return 100.0 * (self.sent - self.received) / self.sent if self.sent else 0.0


def checkPingOptions(target: Target, options: PingOptions) -> None:
    """Usage errors that do not need the server."""
    if options.size < MIN_PROBE:
        raise UsageError(f"--size must be at least {MIN_PROBE} bytes in ping mode (a probe carries its sequence"
                         " number and send time)")
    if options.size > 65507 and not target.stream:
        raise UsageError("--size over UDP is at most 65507 bytes")
    if options.expect == "ack":
        checkAck(target, options)


def checkAck(target: Target, options: PingOptions) -> None:
    """Refuse what the ack service cannot answer one-for-one (a probe it would split in two)."""
    if target.stream and options.size > ACK_MESSAGE_LIMIT:
        raise UsageError(f"the ack service answers every {ACK_MESSAGE_LIMIT} bytes of a message separately:"
                         f" use --size {ACK_MESSAGE_LIMIT} or less against it")


def ping(target: Target, options: PingOptions, reporter: Reporter) -> PingResult:
    """Run until C{count} probes are answered or lost, or until interrupted (Ctrl-C): the result so far."""
    checkPingOptions(target, options)
    target.resolve()
    result = PingResult(target.label, target.transportName, options.size, options.expect)
    started = time.perf_counter()
    runner = _StreamPing if target.stream else _DatagramPing
    engine = runner(target, options, reporter, result)
    try:
        engine.run(started)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        engine.close()
        result.elapsed = time.perf_counter() - started
    return result


def _nextDue(due: float, now: float, interval: float) -> float:
    """When the next probe goes: on the schedule, or, fallen behind (a slow reply), one interval from now.

    Keeping to the schedule keeps a long run from drifting by each sleep's overshoot; starting afresh
    when behind keeps the probes that were due meanwhile from going out in a burst.
    """
    following = due + interval
    return following if following > now else now + interval


def _sleepUntil(when: float) -> None:
    delay = when - time.perf_counter()
    if delay > 0:
        time.sleep(delay)


class _StreamPing:
    def __init__(self, target: Target, options: PingOptions, reporter: Reporter, result: PingResult) -> None:
        self.target, self.options, self.reporter, self.result = target, options, reporter, result
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def run(self, started: float) -> None:
        options, result = self.options, self.result
        seq = 0
        due = started
        while options.count == 0 or seq < options.count:
            seq += 1
            _sleepUntil(due)
            due = _nextDue(due, time.perf_counter(), options.interval)
            if self.sock is None:
                t0 = time.perf_counter_ns()
                try:
                    self.sock = self.target.connectStream(options.timeout)
                except FatalError:
                    raise
                except MeasureError as e:
                    result.sent += 1
                    result.errors += 1
                    self.reporter.problem(seq, str(e))
                    continue
                if result.connectNs is None:
                    result.connectNs = time.perf_counter_ns() - t0
            self.probe(seq)

    def probe(self, seq: int) -> None:
        """Send probe C{seq} and read its reply at once, both as far as the socket allows.

        Sending all of a big probe before reading would deadlock with an echo server that stops reading
        while its answers are not read (sockd's flow control does): both directions' buffers fill.
        """
        options, result, sock = self.options, self.result, self.sock
        assert sock is not None
        payload = makeProbe(seq, time.perf_counter_ns(), options.size)
        result.sent += 1
        sock.setblocking(False)
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            self.exchange(seq, sock, selector, payload)
        finally:
            selector.close()

    def exchange(self, seq: int, sock: socket.socket, selector: selectors.BaseSelector, payload: bytes) -> None:
        options, result = self.options, self.result
        wouldBlock = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
        t0 = time.perf_counter_ns()
        deadline = t0 + int(options.timeout * 1e9)
        view, sent = memoryview(payload), 0
        expected = {"echo": payload, "ack": ACK_STREAM}.get(result.expect)
        buffer = bytearray()
        while True:
            if sent < len(payload):
                try:
                    sent += sock.send(view[sent:])
                except wouldBlock:
                    pass
                except OSError as e:
                    self.fail(seq, f"cannot send to {self.target.label}: {_why(e)}")
                    return
                if sent == len(payload):
                    selector.modify(sock, selectors.EVENT_READ)
            try:
                chunk = sock.recv(65536)
                while chunk and isinstance(sock, ssl.SSLSocket) and sock.pending():
                    chunk += sock.recv(65536)
            except wouldBlock:
                chunk = None
            except OSError as e:
                self.fail(seq, f"connection to {self.target.label} failed: {_why(e)}")
                return
            t1 = time.perf_counter_ns()
            if chunk is None:
                remaining = deadline - t1
                if remaining <= 0:
                    self.fail(seq, f"no reply from {self.target.label} within {options.timeout:g} s", lost=True)
                    return
                selector.select(remaining / 1e9)
                continue
            if not chunk:
                self.fail(seq, f"{self.target.label} closed the connection")
                return
            buffer += chunk
            if expected is None:  # --expect auto: the first byte tells an echo from the ack answer
                if buffer[:1] == payload[:1]:
                    result.expect, expected = "echo", payload
                elif buffer[:1] == ACK_STREAM[:1]:
                    result.expect, expected = "ack", ACK_STREAM
                    checkAck(self.target, options)
                else:
                    self.corrupt(seq, bytes(buffer), t1 - t0, "neither the probe's echo nor the ack answer")
                    return
            done = len(buffer) >= len(expected)
            if done or expected[len(buffer) - len(chunk) : len(buffer)] != chunk:
                if buffer != expected:
                    self.corrupt(seq, bytes(buffer), t1 - t0, f"not the {result.expect} expected")
                    return
                result.received += 1
                result.rtt.record(t1 - t0)
                self.reporter.reply(seq, len(buffer), t1 - t0, "")
                return

    def fail(self, seq: int, text: str, lost: bool = False) -> None:
        """The probe is lost and the connection with it: the next probe opens a new one."""
        if not lost:
            self.result.errors += 1
        self.reporter.problem(seq, text)
        self.close()

    def corrupt(self, seq: int, reply: bytes, rttNs: int, what: str) -> None:
        self.result.corrupt += 1
        self.reporter.reply(seq, len(reply), rttNs, f"CORRUPT ({what}: {_preview(reply)})")
        self.close()


@dataclass
class _Probe:
    seq: int
    sentNs: int
    deadline: int
    payload: bytes
    sock: socket.socket | None  # its own socket, or None for the shared one
    answered: bool = False


class _DatagramPing:
    def __init__(self, target: Target, options: PingOptions, reporter: Reporter, result: PingResult) -> None:
        self.target, self.options, self.reporter, self.result = target, options, reporter, result
        self.selector = selectors.DefaultSelector()
        self.shared: socket.socket | None = None
        self.outstanding: dict[int, _Probe] = {}
        self.answered: set[int] = set()
        self.highest = 0  # the highest sequence number answered so far
        self.sentUpTo = 0
        self.ownSockets = 0

    def close(self) -> None:
        for probe in self.outstanding.values():
            if probe.sock is not None:
                self._drop(probe.sock)
        if self.shared is not None:
            self._drop(self.shared)
        self.selector.close()

    def _drop(self, sock: socket.socket) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()

    def run(self, started: float) -> None:
        options, result = self.options, self.result
        timeoutNs = int(options.timeout * 1e9)
        seq = 0
        due = started
        while True:
            now = time.perf_counter()
            more = options.count == 0 or seq < options.count
            undecided = result.expect == "auto"
            waiting = (undecided and any(not p.answered for p in self.outstanding.values())) or \
                self.ownSockets >= MAX_PROBE_SOCKETS
            if more and not waiting and now >= due:
                seq += 1
                self.send(seq, timeoutNs)
                due = _nextDue(due, now, options.interval)
                delay = 0.0  # read what has come in before the next probe, even with --interval 0
            else:
                if not more and not any(not p.answered for p in self.outstanding.values()):
                    return
                nowNs = time.perf_counter_ns()
                wake = min((p.deadline for p in self.outstanding.values()), default=nowNs + timeoutNs)
                delay = (wake - nowNs) / 1e9
                if more and not waiting:
                    delay = min(delay, due - now)
            for key, _ in self.selector.select(max(delay, 0)):
                self.receive(key.fileobj, key.data)  # type: ignore[arg-type]
            self.expire(time.perf_counter_ns())

    def send(self, seq: int, timeoutNs: int) -> None:
        result = self.result
        if result.expect == "echo":
            if self.shared is None:
                self.shared = self.target.datagramSocket()
                self.selector.register(self.shared, selectors.EVENT_READ, None)
            sock, own = self.shared, None
        else:
            sock = own = self.target.datagramSocket()
            self.selector.register(sock, selectors.EVENT_READ, seq)
            self.ownSockets += 1
        sentNs = time.perf_counter_ns()
        payload = makeProbe(seq, sentNs, self.options.size)
        self.outstanding[seq] = _Probe(seq, sentNs, sentNs + timeoutNs, payload, own)
        result.sent += 1
        self.sentUpTo = seq
        try:
            sock.send(payload)
        except OSError as e:
            result.errors += 1
            self.reporter.problem(seq, f"cannot send to {self.target.label}: {_why(e)}")

    def receive(self, sock: socket.socket, ownSeq: int | None) -> None:
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except ConnectionRefusedError:
                self.result.errors += 1
                self.reporter.problem(ownSeq, f"{self.target.label}: port unreachable (nothing listening)")
                continue
            except OSError as e:
                self.result.errors += 1
                self.reporter.problem(ownSeq, f"{self.target.label}: {_why(e)}")
                return
            self.match(data, ownSeq, time.perf_counter_ns())
            if sock.fileno() < 0:  # matching freed the probe's own socket
                return

    def match(self, data: bytes, ownSeq: int | None, nowNs: int) -> None:
        result = self.result
        if ownSeq is None:  # the shared socket: the echoed probe names itself
            parsed = parseProbe(data)
            seq = parsed[0] if parsed else None
        else:
            seq = ownSeq
        probe = self.outstanding.get(seq) if seq is not None else None
        if probe is None:
            if seq is not None and seq in self.answered:
                result.duplicates += 1
                self.reporter.reply(seq, len(data), nowNs - parsed[1] if ownSeq is None and parsed else 0, "DUP!")
            elif seq is not None and 0 < seq <= self.sentUpTo and ownSeq is None and parsed:
                result.late += 1
                self.reporter.reply(seq, len(data), (nowNs - parsed[1]) & 0xFFFFFFFFFFFFFFFF,
                                    "LATE (already counted as lost)")
            else:
                result.corrupt += 1
                self.reporter.reply(seq or 0, len(data), 0, f"CORRUPT (matches no probe sent: {_preview(data)})")
            return
        rtt = nowNs - probe.sentNs
        if probe.answered:
            result.duplicates += 1
            self.reporter.reply(seq, len(data), rtt, "DUP!")
            return
        if result.expect == "auto":
            if data == probe.payload:
                result.expect = "echo"
            elif data == ACK_DATAGRAM:
                result.expect = "ack"
                checkAck(self.target, self.options)
        wanted = probe.payload if result.expect == "echo" else ACK_DATAGRAM
        if data != wanted:
            result.corrupt += 1
            probe.answered = True
            what = "neither the probe's echo nor the ack answer" if result.expect == "auto" else \
                f"not the {result.expect} expected"
            self.reporter.reply(seq, len(data), rtt, f"CORRUPT ({what}: {_preview(data)})")
            return
        probe.answered = True
        if probe.sock is not None and self.ownSockets > MAX_PROBE_SOCKETS // 2:
            self._drop(probe.sock)  # many in flight: free the socket now, at the cost of not seeing a duplicate
            probe.sock = None
            self.ownSockets -= 1
        self.answered.add(seq)
        result.received += 1
        result.rtt.record(rtt)
        note = ""
        if seq < self.highest:
            result.reordered += 1
            note = "(out of order)"
        self.highest = max(self.highest, seq)
        self.reporter.reply(seq, len(data), rtt, note)

    def expire(self, nowNs: int) -> None:
        for seq in [s for s, p in self.outstanding.items() if p.deadline <= nowNs]:
            probe = self.outstanding.pop(seq)
            if probe.sock is not None:
                self._drop(probe.sock)
                self.ownSockets -= 1
            if not probe.answered:
                self.reporter.problem(seq, f"no reply from {self.target.label} within {self.options.timeout:g} s")


def _why(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e)
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _preview(data: bytes, limit: int = 40) -> str:
    text = repr(data[:limit])
    return text + ("..." if len(data) > limit else "")


# --------------------------------------------------------------------------- load
# Load mode: closed-loop load over C connections (or UDP sockets) for a fixed time.
#
# Each connection has exactly one request in flight: send, wait for the whole
# answer, record the round trip, send the next (the C load generator in bench/
# does the same, so the two can be compared).  C{discard} pushes bytes one way as
# fast as the server takes them, C{chargen} pulls them.
#
# The loop is written for a low cost per request, because the load generator
# shares the machine with the server it measures: one C{epoll} wait per batch of
# ready sockets, one clock read per batch, one C{recv} and one C{send} per
# request, no allocation but the received bytes, latencies counted into a fixed
# histogram inline.  Its own CPU time over the measured window is reported next
# to the results.


IN, OUT = select.POLLIN, select.POLLOUT
RECV_SIZE = 65536
#: How often (s) the loop looks at the clock for timeouts, reconnections and progress.
TICK = 0.02
#: A connection that failed is replaced after this long, so a dead server does not make the loop spin.
BACKOFF_NS = 2_000_000

_PRINTABLE = bytes(range(32, 127))
#: RFC 864: 95 lines of 72 characters and CR LF, then the pattern repeats.
CHARGEN_CYCLE = b"".join((_PRINTABLE * 2)[i : i + 72] + b"\r\n" for i in range(95))
_CHARGEN_RUN = CHARGEN_CYCLE * (2 * RECV_SIZE // len(CHARGEN_CYCLE) + 3)


def loadRequest(size: int) -> bytes:
    """A C{size}-byte message: printable, one newline at its end (one ack answer per request)."""
    return (b"sockd-client load " + filler(size))[: size - 1] + b"\n"


@dataclass
class LoadOptions:
    """How to load: connections, seconds (after a warm-up), request size, timeout, and the pattern."""
    concurrency: int = 1
    duration: float = 10.0
    warmup: float = 0.5
    size: int = 64
    timeout: float = 5.0
    expect: str = "auto"  # request/response: "auto", "echo", "ack"; or "discard", "chargen"


@dataclass
class LoadResult:
    """What the measured window of a load run counted, and what it cost this process."""
    target: str
    transport: str
    pattern: str
    size: int
    concurrency: int
    window: float = 0.0
    requests: int = 0
    operations: int = 0
    bytesSent: int = 0
    bytesReceived: int = 0
    timeouts: int = 0
    closed: int = 0
    connectErrors: int = 0
    corrupt: int = 0
    cpu: float = 0.0
    cpuUser: float = 0.0
    cpuSystem: float = 0.0
    interrupted: bool = False
    latency: Histogram = field(default_factory=Histogram)

    @property
    def errors(self) -> int:
        return self.timeouts + self.closed + self.connectErrors + self.corrupt

    @property
    def rate(self) -> float:
        return self.operations / self.window if self.window > 0 else 0.0

    @property
    def bytesPerSecond(self) -> float:
        return (self.bytesSent + self.bytesReceived) / self.window if self.window > 0 else 0.0


class _Conn:
    __slots__ = ("sock", "fd", "recv", "send", "request", "other", "got", "t0", "pending",
                 "retryAt", "offset", "check")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.fd = -1
        self.got = 0
        self.t0 = 0
        self.pending: memoryview | None = None
        self.retryAt = 0
        self.offset = -1
        self.check = True


@dataclass
class Snapshot:
    """The measured window so far, for a live progress line."""

    elapsed: float
    operations: int
    bytes: int
    p99Ns: int | None
    errors: int


Progress = Callable[[Snapshot], None]


def checkLoadOptions(target: Target, options: LoadOptions) -> None:
    """Usage errors of a load run that do not need the server."""
    if options.expect in ("discard", "chargen") and not target.stream:
        raise UsageError(f"--{options.expect} load runs over a stream (TCP, Unix, TLS): UDP {options.expect}"
                         " has no flow control to measure")
    if options.expect == "ack" and target.stream and options.size > ACK_MESSAGE_LIMIT:
        raise UsageError(f"the ack service answers every {ACK_MESSAGE_LIMIT} bytes of a message separately:"
                         f" use --size {ACK_MESSAGE_LIMIT} or less against it")
    if not target.stream and options.size > 65507:
        raise UsageError("--size over UDP is at most 65507 bytes")


class Load:
    """One run; L{run} returns its L{LoadResult}."""

    def __init__(self, target: Target, options: LoadOptions, progress: Progress | None = None) -> None:
        checkLoadOptions(target, options)
        self.target, self.options, self.progress = target, options, progress
        self.tls = target.tls is not None
        self.pattern = options.expect
        self.result = LoadResult(target.label, target.transportName, options.expect, options.size,
                                 options.concurrency)
        self.conns: dict[int, _Conn] = {}
        self.dead: list[_Conn] = []
        self.poller = select.epoll() if hasattr(select, "epoll") else select.poll()
        self.wait = TICK if hasattr(select, "epoll") else TICK * 1000  # epoll takes seconds, poll milliseconds
        self.request = loadRequest(options.size)
        self.expected = b""
        self.counts = [0] * BUCKETS
        self.total = self.ops = self.bytes = 0
        self.windowStart: int | None = None
        self.lastSync = 0

    # ------------------------------------------------------------------ set-up

    def detect(self) -> None:
        """--expect auto: one blocking round trip says echo or ack (the first byte of the answer)."""
        if self.pattern != "auto":
            return
        # A short request: a big one could fill both directions' buffers before the first byte is read.
        request = loadRequest(min(self.options.size, 64))
        if self.target.stream:
            sock = self.target.connectStream(self.options.timeout)
            try:
                sock.sendall(request)
                first = sock.recv(1)
            except (OSError, ssl.SSLError) as e:
                raise MeasureError(f"no answer from {self.target.label} to a first request: {e}") from None
            finally:
                sock.close()
        else:
            sock = self.target.datagramSocket()
            sock.setblocking(True)
            sock.settimeout(self.options.timeout)
            try:
                sock.send(request)
                first = sock.recv(65536)[:1]
            except TimeoutError:
                raise MeasureError(f"no answer from {self.target.label} within {self.options.timeout:g} s") from None
            except OSError as e:
                raise MeasureError(f"no answer from {self.target.label}: {e.strerror or e}") from None
            finally:
                sock.close()
        if first == request[:1]:
            self.pattern = "echo"
        elif first in (ACK_STREAM[:1], ACK_DATAGRAM[:1]):
            self.pattern = "ack"
        else:
            raise MeasureError(f"{self.target.label} answered {first!r}: neither an echo nor the ack answer"
                               " (--expect echo|ack to insist)")
        self.result.pattern = self.pattern
        checkLoadOptions(self.target, LoadOptions(size=self.options.size, expect=self.pattern))

    def open(self, conn: _Conn, nowNs: int) -> bool:
        """Connect C{conn} and start its first request; False (and counted) if it cannot connect."""
        try:
            if self.target.stream:
                sock = self.target.connectStream(self.options.timeout)
                sock.setblocking(False)
            else:
                sock = self.target.datagramSocket()
        except FatalError:
            raise
        except MeasureError:
            self.result.connectErrors += 1
            conn.retryAt = nowNs + BACKOFF_NS
            self.dead.append(conn)
            return False
        conn.sock, conn.fd = sock, sock.fileno()
        conn.recv, conn.send = sock.recv, sock.send
        conn.request, conn.other = self.request, self.alternate
        conn.got, conn.pending, conn.offset, conn.check = 0, None, -1, True
        self.conns[conn.fd] = conn
        if self.pattern == "discard":
            self.poller.register(conn.fd, IN | OUT)
        else:
            self.poller.register(conn.fd, IN)
        conn.t0 = time.perf_counter_ns()
        if self.pattern in ("echo", "ack"):
            self.write(conn, 0)
        return True

    def lose(self, conn: _Conn, nowNs: int) -> None:
        """Close C{conn}; it is reopened after a short back-off."""
        if conn.sock is not None:
            self.conns.pop(conn.fd, None)
            try:
                self.poller.unregister(conn.fd)
            except (KeyError, OSError, ValueError):
                pass
            conn.sock.close()
            conn.sock = None
        conn.retryAt = nowNs + BACKOFF_NS
        self.dead.append(conn)

    def write(self, conn: _Conn, offset: int) -> None:
        """Send the request (from C{offset}); what the socket does not take waits for POLLOUT."""
        data = conn.request if offset == 0 else memoryview(conn.request)[offset:]
        try:
            sent = conn.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except OSError:
            self.result.closed += 1
            self.lose(conn, time.perf_counter_ns())
            return
        if sent < len(data):
            conn.pending = memoryview(data)[sent:]  # Python's TLS accepts the rest of a buffer on retry
            self.poller.modify(conn.fd, IN | OUT)

    def flush(self, conn: _Conn) -> None:
        pending = conn.pending
        assert pending is not None
        conn.pending = None
        self.poller.modify(conn.fd, IN)
        offset = len(conn.request) - len(pending)
        self.write(conn, offset)

    # ------------------------------------------------------------------ the run

    def run(self) -> LoadResult:
        options, result = self.options, self.result
        self.target.resolve()
        self.detect()
        self.expected = {"echo": self.request, "ack": ACK_STREAM if self.target.stream else ACK_DATAGRAM}.get(
            self.pattern, b"")
        if self.pattern == "discard":
            self.request = filler(options.size)
        self.alternate = self.request
        if self.pattern == "echo" and len(self.request) > 1:
            self.alternate = self.request[:1].swapcase() + self.request[1:]
        started = time.perf_counter_ns()
        for _ in range(options.concurrency):
            self.open(_Conn(), started)
        if not self.conns:
            raise MeasureError(f"cannot connect to {self.target.label}: not one of {options.concurrency}"
                               " connections opened")
        loop = {"echo": self._requests, "ack": self._requests, "discard": self._discard,
                "chargen": self._chargen}[self.pattern]
        try:
            loop(started)
        except KeyboardInterrupt:
            result.interrupted = True
            self._finish(self.lastSync or time.perf_counter_ns())
        finally:
            for conn in list(self.conns.values()):
                conn.sock.close()  # type: ignore[union-attr]
            self.poller.close()
        return result

    def _startWindow(self, nowNs: int) -> None:
        self.windowStart = nowNs
        self.cpuStart = _cpu()
        self.counts = [0] * BUCKETS
        self.total = self.ops = self.bytes = 0

    def _finish(self, nowNs: int) -> None:
        r = self.result
        if self.windowStart is None:
            self._startWindow(nowNs)
        assert self.windowStart is not None
        r.window = (nowNs - self.windowStart) / 1e9
        user, system = _cpu()
        r.cpuUser, r.cpuSystem = user - self.cpuStart[0], system - self.cpuStart[1]
        r.cpu = r.cpuUser + r.cpuSystem
        r.operations = self.ops
        if self.pattern in ("echo", "ack"):
            r.requests = self.ops
            r.bytesSent = self.ops * len(self.request)
            r.bytesReceived = self.ops * len(self.expected)
            r.latency.absorb(self.counts, self.total)
        elif self.pattern == "discard":
            r.bytesSent = self.bytes
        else:
            r.bytesReceived = self.bytes

    def _tick(self, nowNs: int, phase: list[int]) -> bool:
        """Timeouts, reconnections, phase changes, progress; True when the run is over."""
        windowAt, endAt, nextProgress = phase
        if windowAt and nowNs >= windowAt:
            self._startWindow(nowNs)
            phase[0] = 0
        if nowNs >= endAt:
            self._finish(nowNs)
            return True
        if self.pattern in ("echo", "ack"):
            limit = nowNs - int(self.options.timeout * 1e9)
            for conn in [c for c in self.conns.values() if c.t0 < limit]:
                self.result.timeouts += 1
                self.lose(conn, nowNs)
        if self.dead:
            waiting, self.dead = self.dead, []
            for conn in waiting:
                if conn.retryAt <= nowNs:
                    self.open(conn, nowNs)
                else:
                    self.dead.append(conn)
        if self.progress is not None and nowNs >= nextProgress and self.windowStart is not None:
            phase[2] = nowNs + 1_000_000_000
            p99 = None
            if self.pattern in ("echo", "ack"):
                sofar = Histogram()
                sofar.absorb(self.counts, self.total)
                p99 = sofar.percentile(0.99)
            elapsed = (nowNs - self.windowStart) / 1e9
            self.progress(Snapshot(elapsed, self.ops, self.bytes, p99, self.result.errors))
        return False

    def _phases(self, started: int) -> list[int]:
        warm = int(self.options.warmup * 1e9)
        windowAt = started + warm
        if not warm:
            self._startWindow(started)
            windowAt = 0
        return [windowAt, started + warm + int(self.options.duration * 1e9), started + warm + 1_000_000_000]

    def _requests(self, started: int) -> None:
        """The hot loop of echo and ack: everything it touches is a local."""
        phase = self._phases(started)
        conns = self.conns
        poll = self.poller.poll
        perf = time.perf_counter_ns
        datagram = not self.target.stream
        tls = self.tls
        tickNs = int(TICK * 1e9)
        nextTick = perf() + tickNs
        wait = self.wait
        counts, total, ops = self.counts, self.total, self.ops
        wouldBlock = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
        echo = self.pattern == "echo"
        expected = self.expected  # ack: the same answer for every connection; echo: the request in flight
        requestSize, size = len(self.request), len(expected)
        # recv(n) allocates n bytes before it shrinks them to what came: ask for an answer and a little more
        # (more than expected is noticed as corrupt), not for 64 KiB each time.
        want = min(size + 64, RECV_SIZE)
        while True:
            events = poll(wait)
            now = perf()
            for fd, ev in events:
                c = conns.get(fd)
                if c is None:
                    continue
                if ev & OUT and c.pending is not None:
                    self.flush(c)
                    if c.sock is None:
                        continue
                try:
                    data = c.recv(want)
                    if tls:
                        while c.sock.pending():
                            data += c.recv(want)
                except wouldBlock:
                    continue
                except OSError:
                    self.result.closed += 1
                    self.lose(c, now)
                    continue
                n = len(data)
                got = c.got
                if echo:
                    expected = c.request
                if datagram or (got == 0 and n == size):
                    if data != expected:
                        self.result.corrupt += 1
                        self.lose(c, now)
                        continue
                elif not n:
                    self.result.closed += 1
                    self.lose(c, now)
                    continue
                elif expected[got : got + n] != data:
                    self.result.corrupt += 1
                    self.lose(c, now)
                    continue
                elif got + n < size:
                    c.got = got + n
                    continue
                d = now - c.t0
                if d < 256:
                    counts[d if d > 0 else 0] += 1
                else:
                    e = d.bit_length() - 8
                    counts[(e << 7) + (d >> e)] += 1
                total += d
                ops += 1
                if got:
                    c.got = 0
                c.t0 = now
                if echo:  # alternate two requests, so an echo out of step with its request is seen
                    c.request, c.other = c.other, c.request
                try:
                    sent = c.send(c.request)
                except wouldBlock:
                    sent = 0
                except OSError:
                    self.result.closed += 1
                    self.lose(c, now)
                    continue
                if sent != requestSize:
                    c.pending = memoryview(c.request)[sent:]
                    self.poller.modify(c.fd, IN | OUT)
            if now >= nextTick:
                nextTick = now + tickNs
                self.total, self.ops, self.lastSync = total, ops, now
                if self._tick(now, phase):
                    return
                counts, total, ops = self.counts, self.total, self.ops  # a new window starts afresh

    def _discard(self, started: int) -> None:
        phase = self._phases(started)
        block = self.request
        perf = time.perf_counter_ns
        tickNs = int(TICK * 1e9)
        nextTick = perf() + tickNs
        wait = self.wait
        while True:
            now = perf()
            for fd, ev in self.poller.poll(wait):
                c = self.conns.get(fd)
                if c is None:
                    continue
                if ev & IN or not ev & OUT:  # a discard server says nothing: this is the end of the stream
                    try:
                        if c.recv(RECV_SIZE):
                            continue
                    except (BlockingIOError, ssl.SSLWantReadError):
                        continue
                    except OSError:
                        pass
                    self.result.closed += 1
                    self.lose(c, now)
                    continue
                try:
                    sent = c.send(block)
                except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    self.result.closed += 1
                    self.lose(c, now)
                    continue
                self.bytes += sent
                self.ops += 1
            if now >= nextTick:
                nextTick = now + tickNs
                self.lastSync = now
                if self._tick(now, phase):
                    return

    def _chargen(self, started: int) -> None:
        phase = self._phases(started)
        perf = time.perf_counter_ns
        tickNs = int(TICK * 1e9)
        nextTick = perf() + tickNs
        wait = self.wait
        cycle = len(CHARGEN_CYCLE)
        run = _CHARGEN_RUN
        tls = self.tls
        readSize = min(self.options.size, RECV_SIZE)
        while True:
            now = perf()
            for fd, _ in self.poller.poll(wait):
                c = self.conns.get(fd)
                if c is None:
                    continue
                try:
                    data = c.recv(readSize)
                    if tls:
                        while c.sock.pending() and len(data) < RECV_SIZE:  # type: ignore[attr-defined]
                            data += c.recv(readSize)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except OSError:
                    data = b""
                n = len(data)
                if not n:
                    self.result.closed += 1
                    self.lose(c, now)
                    continue
                self.bytes += n
                self.ops += 1
                if c.check:
                    off = c.offset
                    if off < 0:  # where in the pattern does this server start?
                        off = run.find(data[:148])
                        if not 0 <= off < cycle:
                            self.result.corrupt += 1
                            c.check = False
                            continue
                    if run[off : off + n] != data:
                        self.result.corrupt += 1
                        c.check = False
                        continue
                    c.offset = (off + n) % cycle
            if now >= nextTick:
                nextTick = now + tickNs
                self.lastSync = now
                if self._tick(now, phase):
                    return


def _cpu() -> tuple[float, float]:
    """This process's user and system CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


# --------------------------------------------------------------------------- clock
# Time service checks: what an RFC 868 (time) or RFC 867 (daytime) server says, and how far off it is.
#
# Both protocols count whole seconds, so the server's reading is taken as the
# middle of its second and compared with the local clock at the middle of the
# round trip: the offset is good to about half a second plus half the round trip,
# which is what these protocols can tell (C{rdate -p} prints only the time).


#: Seconds from 1900-01-01 (RFC 868's epoch) to 1970-01-01.
EPOCH_1900 = 2208988800


@dataclass
class ClockReading:
    """One reading of a time or daytime server, and the local clock at the middle of the round trip."""
    target: str
    transport: str
    protocol: str  # "time" or "daytime"
    answer: bytes
    serverUnix: float | None  # the middle of the server's second, Unix time; None if it could not be read
    localUnix: float  # the local clock at the middle of the round trip
    rttNs: int

    @property
    def offset(self) -> float | None:
        """Server minus local, seconds (positive: the server is ahead)."""
        return None if self.serverUnix is None else self.serverUnix - self.localUnix


def rfc868ToUnix(value: int, near: float) -> float:
    """The Unix time of a 32-bit RFC 868 count, in the 2**32-second era nearest C{near} (so it works after 2036)."""
    base = value - EPOCH_1900
    era = round((near - base) / 2**32)
    return float(base + era * 2**32)


_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                        "dec"), 1)}
_SOCKD = re.compile(r"(?:\w+, )?(\w+) (\d{1,2}), (\d{4}) (\d{1,2}):(\d{2}):(\d{2})-?(UTC|GMT)?", re.I)
_DMY = re.compile(r"(\d{1,2}) (\w{3}) (\d{4}) (\d{1,2}):(\d{2}):(\d{2}) ?(UTC|GMT)?", re.I)


def parseDaytime(text: str) -> float | None:
    """Unix time of a daytime answer, for the shapes servers use; None if it is none of them.

    sockd: C{Tuesday, November 24, 2026 22:04:29-UTC}; xinetd: C{24 NOV 2026 22:04:29 UTC};
    inetd and most others: ctime(3), C{Tue Nov 24 22:04:29 2026} (local time); RFC 2822 dates.
    """
    text = text.strip()
    found = _SOCKD.fullmatch(text)
    if found and found.group(1)[:3].lower() in _MONTHS:
        month, day, year, hh, mm, ss, zone = found.groups()
        return _fields(int(year), _MONTHS[month[:3].lower()], int(day), int(hh), int(mm), int(ss), zone)
    found = _DMY.fullmatch(text)
    if found and found.group(2).lower() in _MONTHS:
        day, month, year, hh, mm, ss, zone = found.groups()
        return _fields(int(year), _MONTHS[month.lower()], int(day), int(hh), int(mm), int(ss), zone)
    try:
        parsed = time.strptime(text, "%a %b %d %H:%M:%S %Y")
        return time.mktime(parsed)
    except ValueError:
        pass
    dated = parsedate_tz(text)
    if dated is not None and dated[9] is not None:
        return calendar.timegm(dated[:9]) - dated[9]
    return None


def _fields(year: int, month: int, day: int, hh: int, mm: int, ss: int, zone: str | None) -> float | None:
    try:
        datetime.datetime(year, month, day, hh, mm, ss)  # calendar.timegm takes 31 February without a word
        fields = (year, month, day, hh, mm, ss, 0, 0, -1)
        return float(calendar.timegm(fields)) if zone else time.mktime(fields)
    except (OverflowError, ValueError):
        return None


def readClock(target: Target, protocol: str, timeout: float) -> ClockReading:
    """Ask once: over a stream read to the end of the answer, over UDP send an empty datagram."""
    target.resolve()
    t0 = time.perf_counter_ns()
    wall0 = time.time()
    if target.stream:
        with target.connectStream(timeout) as sock:
            t0 = time.perf_counter_ns()
            wall0 = time.time()
            answer = b""
            try:
                while len(answer) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                    if protocol == "time" and len(answer) >= 4:
                        break
                    if protocol == "daytime" and answer.endswith(b"\n"):
                        break
            except TimeoutError:
                if not answer:
                    raise MeasureError(f"no answer from {target.label} within {timeout:g} s") from None
            except OSError as e:
                raise MeasureError(f"{target.label}: {e.strerror or e}") from None
    else:
        sock = target.datagramSocket()
        sock.setblocking(True)
        sock.settimeout(timeout)
        try:
            t0 = time.perf_counter_ns()
            wall0 = time.time()
            sock.send(b"")
            answer = sock.recv(4096)
        except TimeoutError:
            raise MeasureError(f"no answer from {target.label} within {timeout:g} s") from None
        except ConnectionRefusedError:
            raise MeasureError(f"nothing is listening at {target.label}") from None
        except OSError as e:
            raise MeasureError(f"{target.label}: {e.strerror or e}") from None
        finally:
            sock.close()
    rtt = time.perf_counter_ns() - t0
    local = wall0 + rtt / 2e9
    if protocol == "time":
        if len(answer) != 4:
            raise MeasureError(f"{target.label} answered {len(answer)} bytes, not RFC 868's 4: {answer[:40]!r}")
        server: float | None = rfc868ToUnix(int.from_bytes(answer, "big"), local) + 0.5
    else:
        parsed = parseDaytime(answer.decode("ascii", "replace"))
        server = None if parsed is None else parsed + 0.5
    return ClockReading(target.label, target.transportName, protocol, answer, server, local, rtt)
