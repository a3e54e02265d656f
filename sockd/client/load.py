"""Load mode: closed-loop load over C connections (or UDP sockets) for a fixed time.

Each connection has exactly one request in flight: send, wait for the whole
answer, record the round trip, send the next (the C load generator in bench/
does the same, so the two can be compared).  C{discard} pushes bytes one way as
fast as the server takes them, C{chargen} pulls them.

The loop is written for a low cost per request, because the load generator
shares the machine with the server it measures: one C{epoll} wait per batch of
ready sockets, one clock read per batch, one C{recv} and one C{send} per
request, no allocation but the received bytes, latencies counted into a fixed
histogram as they come.  Its own CPU time over the measured window is reported
next to the results.
"""

from __future__ import annotations

import resource
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sockd.client.errors import ClientError, FatalError, UsageError
from sockd.client.histogram import BUCKETS, Histogram, bucketOf
from sockd.client.payloads import (
    ACK_DATAGRAM,
    ACK_MESSAGE_LIMIT,
    ACK_STREAM,
    CHARGEN_CYCLE,
    MAX_DATAGRAM,
    filler,
    loadRequest,
)
from sockd.client.target import Target

IN, OUT = select.POLLIN, select.POLLOUT
RECV_SIZE = 65536
#: How often (s) the loop looks at the clock for timeouts, reconnections and progress.
TICK = 0.02
#: A connection that failed is replaced after this long, so a dead server does not make the loop spin.
BACKOFF_NS = 2_000_000
_CHARGEN_RUN = CHARGEN_CYCLE * (2 * RECV_SIZE // len(CHARGEN_CYCLE) + 3)


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

    # Set when it connects (bound methods of its socket, and the two requests it alternates).
    recv: Callable[[int], bytes]
    send: Callable[[bytes | memoryview], int]
    request: bytes
    other: bytes

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
    if not target.stream and options.size > MAX_DATAGRAM:
        raise UsageError(f"--size over UDP is at most {MAX_DATAGRAM} bytes")


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
                raise ClientError(f"no answer from {self.target.label} to a first request: {e}") from None
            finally:
                sock.close()
        else:
            first = self.target.datagramExchange(request, self.options.timeout)[:1]
        if first == request[:1]:
            self.pattern = "echo"
        elif first in (ACK_STREAM[:1], ACK_DATAGRAM[:1]):
            self.pattern = "ack"
        else:
            raise ClientError(f"{self.target.label} answered {first!r}: neither an echo nor the ack answer"
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
        except ClientError:
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
            raise ClientError(f"cannot connect to {self.target.label}: not one of {options.concurrency}"
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
            close = getattr(self.poller, "close", None)  # select.poll has none: nothing to close
            if close is not None:
                close()
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
        bucket = bucketOf
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
                        while c.sock.pending():  # type: ignore[union-attr]  # an ssl.SSLSocket with TLS
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
                counts[bucket(d)] += 1
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
                        while c.sock.pending() and len(data) < RECV_SIZE:  # type: ignore[union-attr]  # SSLSocket
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
