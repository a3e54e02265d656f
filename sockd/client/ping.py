"""Ping mode: probes at an interval, one line per reply, a summary in ping's shape.

Over a stream (TCP, Unix, TLS) one connection carries every probe; a stream
answers in order, so each probe waits for the previous reply, and a timeout or a
wrong reply closes the connection (the stream is out of step) and the next
probe opens a new one.  Over UDP probes go out at the interval whatever comes
back, and replies are matched to probes: by the sequence number an echoed probe
carries, or, since the ack service's datagram answer carries nothing of the
probe, by sending each probe from its own socket (its own source port) and
matching the reply by the socket it arrives on.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Protocol

from sockd.client.errors import ClientError, FatalError, UsageError
from sockd.client.histogram import Histogram
from sockd.client.payloads import (
    ACK_DATAGRAM,
    ACK_MESSAGE_LIMIT,
    ACK_STREAM,
    MAX_DATAGRAM,
    MIN_PROBE,
    makeProbe,
    parseProbe,
    preview,
)
from sockd.client.target import Target, reason

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
    if options.size > MAX_DATAGRAM and not target.stream:
        raise UsageError(f"--size over UDP is at most {MAX_DATAGRAM} bytes")
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
                except ClientError as e:
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
                    self.fail(seq, f"cannot send to {self.target.label}: {reason(e)}")
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
                self.fail(seq, f"connection to {self.target.label} failed: {reason(e)}")
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
        self.reporter.reply(seq, len(reply), rttNs, f"CORRUPT ({what}: {preview(reply)})")
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
            self.reporter.problem(seq, f"cannot send to {self.target.label}: {reason(e)}")

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
                self.reporter.problem(ownSeq, f"{self.target.label}: {reason(e)}")
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
                self.reporter.reply(seq or 0, len(data), 0, f"CORRUPT (matches no probe sent: {preview(data)})")
            return
        seq = probe.seq  # the key it was found under
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
            self.reporter.reply(seq, len(data), rtt, f"CORRUPT ({what}: {preview(data)})")
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


