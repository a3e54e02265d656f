"""Property-based tests (hypothesis) of every protocol and policy, on StringTransport and a Clock.

The ack framing rules are checked against an independent byte-at-a-time reference implementation.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport, StringTransport, StringTransportWithDisconnection

from sockd.config.settings import Settings
from sockd.defences.access import AccessList
from sockd.defences.admission import Admission
from sockd.defences.datagram import DatagramPolicy, GuardedDatagramProtocol
from sockd.defences.ratelimit import TokenBucket
from sockd.defences.stream import ConnectionRegistry, PolicyFactory
from sockd.observe.log.messages import MessageLog
from sockd.protocols.ack import AckDatagramProtocol, AckFactory
from sockd.protocols.chargen import PRINTABLE, ChargenDatagramProtocol, ChargenFactory
from sockd.protocols.discard import DiscardDatagramProtocol, DiscardFactory
from sockd.protocols.echo import EchoDatagramProtocol, EchoFactory
from sockd.protocols.qotd import QuotePicker, builtinQuotes
from sockd.protocols.speakfirst import AnswerDatagramProtocol, SpeakFirstFactory
from sockd.protocols.timeservices import clockAnswer, daytimeLine, timeBytes
from sockd.services import SMALL_SERVICE_PORTS

PROPERTY = settings(max_examples=200, deadline=None, database=None)
ANSWER = b"I got your message"
PEER = IPv4Address("TCP", "192.0.2.1", 40000)
QUOTES = builtinQuotes()

# Bytes likely to hit the framing rules: newlines, runs near the maximum length, arbitrary bytes.
chunks = st.one_of(
    st.binary(max_size=400),
    st.lists(st.sampled_from([b"\n", b"\r\n", b"ab", b"c" * 50, b"\x00\xff", b"d" * 254]), max_size=12).map(b"".join),
)


class RecordingLog(MessageLog):
    """A message log that keeps the raw messages, so framing can be compared byte for byte."""

    def __init__(self) -> None:
        super().__init__("ack", False)
        self.messages: list[bytes] = []

    def forConnection(self, connection: object) -> Callable[[bytes], None]:
        return self.messages.append


# -- the ack reference model ---------------------------------------------------------------------------------------


@dataclass
class AckModel:
    """The ack framing rules, stated byte by byte and independently of sockd/protocols/ack.py."""

    maxLength: int
    quietTime: float
    now: float = 0.0
    pending: bytes = b""
    deadline: float | None = None
    messages: list[bytes] = field(default_factory=list)

    def data(self, chunk: bytes) -> None:
        for byte in chunk:
            self.pending += bytes([byte])
            if byte == 0x0A or len(self.pending) == self.maxLength:
                self.messages.append(self.pending)
                self.pending = b""
        self.deadline = self.now + self.quietTime if self.pending else None

    def tick(self, seconds: float) -> None:
        self.now += seconds
        if self.deadline is not None and self.now >= self.deadline:
            self.messages.append(self.pending)
            self.pending = b""
            self.deadline = None

    def halfClose(self) -> None:
        if self.pending:
            self.messages.append(self.pending)
            self.pending = b""
        self.deadline = None


# Quarter seconds against a 1 s quiet time: the clock arithmetic is exact, so the model and the Clock agree.
# No empty reads: a stream transport never delivers b"".
ackEvents = st.lists(
    st.one_of(chunks.filter(len).map(lambda c: ("data", c)), st.integers(1, 6).map(lambda n: ("tick", n * 0.25))),
    max_size=25,
)


@PROPERTY
@given(st.integers(1, 300), ackEvents, st.booleans())
def test_ack_framing_matches_reference(maxLength: int, events: list[tuple[str, Any]], halfClose: bool) -> None:
    clock = Clock()
    log = RecordingLog()
    proto = AckFactory(clock, log, maxLength, 1.0).buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    model = AckModel(maxLength, 1.0)
    for kind, value in events:
        if kind == "data":
            proto.dataReceived(value)
            model.data(value)
        else:
            clock.advance(value)
            model.tick(value)
        assert log.messages == model.messages
        assert proto._pending == model.pending
        assert len(proto._pending) < maxLength  # no pending buffer ever reaches the maximum
        assert transport.value() == ANSWER * len(model.messages)
        assert len(clock.getDelayedCalls()) == (1 if model.pending else 0)
    if halfClose:
        proto.readConnectionLost()
        model.halfClose()
        assert transport.disconnecting
    assert log.messages == model.messages
    assert transport.value() == ANSWER * len(model.messages)
    assert b"".join(log.messages) + proto._pending == b"".join(v for k, v in events if k == "data")
    proto.connectionLost(None)
    assert clock.getDelayedCalls() == []


@PROPERTY
@given(st.integers(1, 300), ackEvents)
def test_ack_once_answers_only_the_first_message(maxLength: int, events: list[tuple[str, Any]]) -> None:
    clock = Clock()
    log = RecordingLog()
    proto = AckFactory(clock, log, maxLength, 1.0, closeAfterFirst=True).buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    model = AckModel(maxLength, 1.0)
    for kind, value in events:
        if transport.disconnecting:
            break  # a real stream transport stops reading once it is closing
        if kind == "data":
            proto.dataReceived(value)
            model.data(value)
        else:
            clock.advance(value)
            model.tick(value)
    assert log.messages == model.messages[:1]
    assert transport.disconnecting == bool(model.messages)
    assert transport.value() == ANSWER * len(log.messages)
    if transport.disconnecting:
        assert clock.getDelayedCalls() == []


# -- every stream protocol survives anything -----------------------------------------------------------------------


def streamFactory(name: str, clock: Clock) -> Any:
    return {
        "ack": lambda: AckFactory(clock, MessageLog("ack", True), 255, 0.1),
        "ack-small": lambda: AckFactory(clock, MessageLog("ack", False), 1, 0.0),
        "ack-once": lambda: AckFactory(clock, MessageLog("ack", False), 16, 0.1, True),
        "echo": EchoFactory,
        "discard": DiscardFactory,
        "chargen": ChargenFactory,
        "daytime": lambda: SpeakFirstFactory(clockAnswer(daytimeLine, clock.seconds), clock),
        "time": lambda: SpeakFirstFactory(clockAnswer(timeBytes, clock.seconds), clock),
        "qotd": lambda: SpeakFirstFactory(QuotePicker(QUOTES, random.Random(1)), clock),
    }[name]()


STREAM_NAMES = ["ack", "ack-small", "ack-once", "echo", "discard", "chargen", "daytime", "time", "qotd"]

streamEvents = st.lists(
    st.one_of(
        chunks.map(lambda c: ("data", c)),
        st.floats(0, 200).map(lambda t: ("tick", t)),
        st.just(("pull", None)),
        st.just(("halfclose", None)),
    ),
    max_size=20,
)


@PROPERTY
@given(st.sampled_from(STREAM_NAMES), st.booleans(), streamEvents)
def test_every_stream_protocol_takes_any_input(name: str, wrapped: bool, events: list[tuple[str, Any]]) -> None:
    clock = Clock()
    factory = streamFactory(name, clock)
    registry = ConnectionRegistry(clock)
    admission = Admission(Settings(exempt=[]), clock.seconds)
    if wrapped:
        factory = PolicyFactory(factory, serviceName=f"prop-{name}", transportName="tcp", admission=admission,
                                registry=registry, clock=clock, idleTimeout=60.0)
    proto = factory.buildProtocol(PEER)
    transport = StringTransportWithDisconnection(peerAddress=PEER)
    transport.protocol = proto
    proto.makeConnection(transport)
    received = b""
    for kind, value in events:
        if not transport.connected:
            break
        if kind == "data":
            proto.dataReceived(value)
            received += value
        elif kind == "tick":
            clock.advance(value)
        elif kind == "pull" and transport.producer is not None and not transport.streaming:
            transport.producer.resumeProducing()
        elif kind == "halfclose":
            # What a transport does when the peer half-closes: tell a half-closeable protocol, close the others.
            if IHalfCloseableProtocol.providedBy(proto):
                proto.readConnectionLost()
            else:
                transport.loseConnection()
    if transport.connected:
        transport.loseConnection()
    assert clock.getDelayedCalls() == []
    assert registry.connections == set() and admission.total == 0
    if name == "echo":
        assert transport.value() == received
    if name == "discard":
        assert transport.value() == b""
    if name.startswith("ack"):
        value = transport.value()
        assert value == ANSWER * (len(value) // len(ANSWER))


@PROPERTY
@given(st.lists(chunks, max_size=20), st.booleans())
def test_echo_returns_exactly_what_it_got_in_order(data: list[bytes], wrapped: bool) -> None:
    clock = Clock()
    factory: Any = EchoFactory()
    if wrapped:
        factory = PolicyFactory(factory, serviceName="prop-echo", transportName="tcp",
                                admission=Admission(Settings(exempt=[]), clock.seconds),
                                registry=ConnectionRegistry(clock), clock=clock, idleTimeout=60.0)
    proto = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    sent = b""
    for chunk in data:
        proto.dataReceived(chunk)
        sent += chunk
        assert transport.value() == sent  # at once, nothing held back or reordered
    assert transport.value() == b"".join(data)


# -- every datagram protocol survives anything ---------------------------------------------------------------------

DAYTIME = re.compile(rb"[A-Z][a-z]+day, [A-Z][a-z]+ \d\d, \d{4} \d\d:\d\d:\d\d-UTC\r\n")
PATTERN_BYTES = set(PRINTABLE) | {13, 10}

datagrams = st.lists(
    st.tuples(st.one_of(st.binary(max_size=1500), st.just(b"x" * 65507)), st.integers(1, 65535)), max_size=15
)


def datagramProtocol(name: str, clock: Clock) -> Any:
    return {
        "ack": lambda: AckDatagramProtocol(MessageLog("ack", True)),
        "echo": EchoDatagramProtocol,
        "discard": DiscardDatagramProtocol,
        "chargen": lambda: ChargenDatagramProtocol(random.Random(19)),
        "daytime": lambda: AnswerDatagramProtocol(clockAnswer(daytimeLine, clock.seconds)),
        "time": lambda: AnswerDatagramProtocol(clockAnswer(timeBytes, clock.seconds)),
        "qotd": lambda: AnswerDatagramProtocol(QuotePicker(QUOTES, random.Random(17))),
    }[name]()


def checkAnswer(name: str, datagram: bytes, answer: bytes) -> None:
    if name == "ack":
        assert answer == b"Got your message\n"
    elif name == "echo":
        assert answer == datagram
    elif name == "chargen":
        assert len(answer) <= 512 and set(answer) <= PATTERN_BYTES
    elif name == "daytime":
        assert DAYTIME.fullmatch(answer)
    elif name == "time":
        assert len(answer) == 4
    elif name == "qotd":
        assert answer in QUOTES and len(answer) < 512


DATAGRAM_NAMES = ["ack", "echo", "discard", "chargen", "daytime", "time", "qotd"]


@PROPERTY
@given(st.sampled_from(DATAGRAM_NAMES), datagrams, st.floats(0, 4e9))
def test_every_datagram_protocol_takes_any_datagram(name: str, received: list[tuple[bytes, int]], now: float) -> None:
    clock = Clock()
    clock.advance(now)
    proto = datagramProtocol(name, clock)
    transport = FakeDatagramTransport()
    proto.makeConnection(transport)
    for datagram, port in received:
        proto.datagramReceived(datagram, ("192.0.2.1", port))
    expected = 0 if name == "discard" else len(received)
    assert len(transport.written) == expected
    for (datagram, port), (answer, addr) in zip(received, transport.written, strict=False):
        assert addr == ("192.0.2.1", port)
        checkAnswer(name, datagram, answer)


@PROPERTY
@given(
    st.sampled_from(DATAGRAM_NAMES),
    st.lists(st.tuples(st.binary(max_size=600), st.one_of(st.sampled_from([0, 7, 9, 13, 17, 19, 37, 51717]),
                                                         st.integers(0, 65535))), max_size=15),
)
def test_guard_answers_exactly_the_allowed_datagrams(name: str, received: list[tuple[bytes, int]]) -> None:
    clock = Clock()
    policy = DatagramPolicy(Settings(udp_rate=0, udp_budget=0, exempt=[]), clock.seconds, SMALL_SERVICE_PORTS)
    policy.addOwnPort(51717)
    guarded = GuardedDatagramProtocol(datagramProtocol(name, clock), policy, f"prop-guard-{name}")
    transport = FakeDatagramTransport()
    guarded.makeConnection(transport)
    for datagram, port in received:
        guarded.datagramReceived(datagram, ("192.0.2.1", port))
    allowed = [(d, p) for d, p in received if p != 0 and p not in SMALL_SERVICE_PORTS and p != 51717]
    assert len(transport.written) == (0 if name == "discard" else len(allowed))
    for (datagram, port), (answer, addr) in zip(allowed, transport.written, strict=False):
        assert addr == ("192.0.2.1", port)
        checkAnswer(name, datagram, answer)


# -- policies ------------------------------------------------------------------------------------------------------


@PROPERTY
@given(st.floats(0.1, 100), st.integers(1, 50), st.lists(st.floats(0, 3), max_size=60))
def test_token_bucket_never_allows_more_than_burst_plus_refill(rate: float, burst: int, steps: list[float]) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now = 0.0
    allowed = 0
    for step in steps:
        now += step
        allowed += sum(bucket.take(now) for _ in range(3))
        assert 0 <= bucket.tokens <= burst
    assert allowed <= burst + rate * now + 1e-6


@PROPERTY
@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 2**32 - 1))
def test_ipv4_access_matches_cidr_membership(networkBits: int, prefix: int, hostBits: int) -> None:
    network = ipaddress.IPv4Network((networkBits, prefix), strict=False)
    host = ipaddress.IPv4Address(hostBits)
    inside = host in network
    allow, deny = AccessList(allow=[str(network)]), AccessList(deny=[str(network)])
    for form in (str(host), f"::ffff:{host}"):
        assert allow.allows(form) == inside
        assert deny.allows(form) == (not inside)


def sameSource(host: str) -> str:
    address = ipaddress.ip_address(host)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


@PROPERTY
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["192.0.2.1", "::ffff:192.0.2.1", "192.0.2.2",
                                                             "2001:db8::1", "127.0.0.1", None])), max_size=60))
def test_admission_counts_stay_consistent(operations: list[tuple[bool, str | None]]) -> None:
    settings_ = Settings(max_connections=5, max_per_source=2, connection_rate=0, exempt=["127.0.0.0/8"])
    admission = Admission(settings_, lambda: 0.0)
    open_: list[str | None] = []
    for admit, host in operations:
        if admit:
            if admission.admit(host) is None:
                open_.append(host)
        elif host in open_:
            open_.remove(host)
            admission.release(host)
        assert admission.total == len(open_) <= 5
        counted = [sameSource(h) for h in open_ if h is not None]
        expected = {k: counted.count(k) for k in set(counted)}
        assert admission.perSource == expected
        for key, count in expected.items():
            assert key == "127.0.0.1" or count <= 2


policyEvents = st.lists(
    st.one_of(
        chunks.map(lambda c: ("data", c)),
        st.sampled_from([0.01, 0.05, 0.5, 5.0, 30.0]).map(lambda t: ("tick", t)),
        st.just(("halfclose", None)),
        st.just(("drain", None)),
    ),
    max_size=20,
)


@PROPERTY
@given(policyEvents)
def test_policy_protocol_always_releases_and_leaves_no_timer(events: list[tuple[str, Any]]) -> None:
    clock = Clock()
    admission = Admission(Settings(exempt=[], max_per_source=1), clock.seconds)
    registry = ConnectionRegistry(clock)
    factory = PolicyFactory(AckFactory(clock, MessageLog("ack", False)), serviceName="prop-policy", transportName="tcp",
                            admission=admission, registry=registry, clock=clock, idleTimeout=20.0)
    proto = factory.buildProtocol(PEER)
    assert factory.buildProtocol(PEER) is None  # per-source limit 1 holds while it is open
    transport = StringTransportWithDisconnection(peerAddress=PEER)
    transport.protocol = proto
    proto.makeConnection(transport)
    drained: list[Any] = []
    for kind, value in events:
        if not transport.connected:
            break
        if kind == "data":
            proto.dataReceived(value)
        elif kind == "tick":
            clock.advance(value)
        elif kind == "halfclose":
            proto.readConnectionLost()
        elif kind == "drain" and not drained:
            drained.append(registry.drain(grace=1.0, quiet=0.05))
    for _ in range(100):  # in steps: Clock.advance runs late calls at the new time, which would re-arm timers
        clock.advance(1)  # the idle timeout (or the drain) ends it
    assert not transport.connected
    value = transport.value()
    assert value == ANSWER * (len(value) // len(ANSWER))
    assert registry.connections == set() and admission.total == 0 and admission.perSource == {}
    assert clock.getDelayedCalls() == []
    assert all(d.called for d in drained)
    assert factory.buildProtocol(PEER) is not None


# -- the message log's batches: whatever they hold, each line is the escaped message, in order -----------------

_MESSAGE_BYTES = st.sampled_from([b"a", b" ", b"\n", b"\r", b"\x00", b"\\", b"\xff", b"~", b"\t"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(_MESSAGE_BYTES, max_size=6).map(b"".join),
                          st.integers(min_value=0, max_value=2)), max_size=40))
def test_message_log_batches_write_each_message_escaped_in_order(entries: list[tuple[bool, bytes, int]]):
    from twisted.logger import formatTime

    from sockd.observe.log.sink import LineSink
    from sockd.observe.log.text import messageText

    class Output:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> None:
            self.data += data

    wall = [1_700_000_000.5]
    clock = Clock()
    output = Output()
    sink = LineSink(output, clock, now=lambda: wall[0])
    expected = []
    for stream, message, seconds in entries:
        wall[0] += seconds  # sometimes the next second: a new timestamp, a new batch
        tail = b" S: " if stream else b" D: "
        sink.message(tail, message)
        stamp = formatTime(float(int(wall[0])))
        expected.append(f"{stamp}{tail.decode()}{messageText(message)}\n")
    sink.flush()
    assert output.data.decode("utf-8", "backslashreplace") == "".join(expected)
