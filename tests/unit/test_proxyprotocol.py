"""The PROXY protocol wrapper, in memory: StringTransport and Clock, no sockets.

The wrapper exists because Twisted's own drops split headers (twisted#8287)
and starts the service before the header is read (twisted#12501); these tests
pin exactly those points, plus refusal, malformed headers and flow control.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd.config.settings import Settings
from sockd.defences.admission import Admission
from sockd.defences.proxyprotocol import (
    V2_SIGNATURE,
    ProxyHeaderError,
    ProxyProtocol,
    ProxyProtocolFactory,
    parseHeader,
)
from sockd.defences.stream import ConnectionRegistry, PolicyFactory
from sockd.interfaces import IReadPausingTransport
from sockd.protocols.echo import EchoFactory
from sockd.protocols.flow import ReadPauser
from sockd.services import BY_NAME, Context

BALANCER = IPv4Address("TCP", "10.9.9.9", 41000)
LISTENER = IPv4Address("TCP", "10.9.9.1", 51717)
CLIENT4 = IPv4Address("TCP", "192.0.2.7", 5555)
SERVER4 = IPv4Address("TCP", "198.51.100.1", 80)
CLIENT6 = IPv6Address("TCP", "2001:db8::7", 6666)
SERVER6 = IPv6Address("TCP", "2001:db8::1", 443)


def v1(source: Any, destination: Any) -> bytes:
    kind = "TCP4" if isinstance(source, IPv4Address) else "TCP6"
    return f"PROXY {kind} {source.host} {destination.host} {source.port} {destination.port}\r\n".encode()


def v2(source: Any = None, destination: Any = None, command: int = 1, family: int | None = None,
       tlvs: bytes = b"") -> bytes:
    body = b""
    if source is not None:
        body = (ipaddress.ip_address(source.host).packed + ipaddress.ip_address(destination.host).packed
                + struct.pack("!HH", source.port, destination.port))
        if family is None:
            family = 0x11 if isinstance(source, IPv4Address) else 0x21
    body += tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family or 0]) + struct.pack("!H", len(body)) + body


HEADERS = {
    "v1-ipv4": (v1(CLIENT4, SERVER4), CLIENT4, SERVER4),
    "v1-ipv6": (v1(CLIENT6, SERVER6), CLIENT6, SERVER6),
    "v2-ipv4": (v2(CLIENT4, SERVER4), CLIENT4, SERVER4),
    "v2-ipv6": (v2(CLIENT6, SERVER6), CLIENT6, SERVER6),
    "v2-ipv4-tlvs": (v2(CLIENT4, SERVER4, tlvs=b"\x05\x00\x03abc\x04\x00\x00"), CLIENT4, SERVER4),
}


class Recorder(Protocol):
    """Records what the service sees, checking the peer inside connectionMade itself."""

    def __init__(self, factory: RecordingFactory) -> None:
        self.owner = factory
        self.received = b""
        self.events: list[str] = []

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        self.host = self.transport.getHost()
        self.events.append("made")
        if self.owner.greeting:
            self.transport.write(self.owner.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.events.append("readConnectionLost")

    def writeConnectionLost(self) -> None:
        self.events.append("writeConnectionLost")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.events.append("lost")


@implementer(IHalfCloseableProtocol)
class HalfCloseRecorder(Recorder):
    """A service that handles half-close itself (as ack does)."""


class RecordingFactory(Factory):
    def __init__(self, greeting: bytes = b"", refuse: bool = False, protocolClass: type = HalfCloseRecorder) -> None:
        self.greeting = greeting
        self.refuse = refuse
        self.protocolClass = protocolClass
        self.addresses: list[Any] = []
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder | None:
        self.addresses.append(addr)
        if self.refuse:
            return None
        p = self.protocolClass(self)
        self.built.append(p)
        return p


class Connection:
    """One wrapped connection on a StringTransport whose peer is the balancer."""

    def __init__(self, wrapped: Any, **kwargs: Any) -> None:
        self.clock = kwargs.pop("clock", None) or Clock()
        kwargs.setdefault("trusted", ["10.9.9.9/32"])
        peer = kwargs.pop("peer", BALANCER)
        self.factory = kwargs.pop("factory", None) or ProxyProtocolFactory(wrapped, clock=self.clock, **kwargs)
        self.transport = StringTransport(hostAddress=LISTENER, peerAddress=peer)
        self.protocol = self.factory.buildProtocol(peer)
        if self.protocol is None:  # refused before a byte: the reactor closes the socket
            self.transport.loseConnection()
            return
        self.protocol.makeConnection(self.transport)

    def feed(self, *chunks: bytes) -> None:
        for chunk in chunks:
            self.protocol.dataReceived(chunk)

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnected)


def single(data: bytes) -> list[bytes]:
    return [data]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("name", sorted(HEADERS))
@pytest.mark.parametrize("split", [single, bytewise], ids=["whole", "bytewise"])
@pytest.mark.parametrize("payload", [b"", b"hello\nworld"], ids=["no-payload", "payload"])
def test_header_gives_real_peer(name: str, split: Any, payload: bytes) -> None:
    header, source, destination = HEADERS[name]
    wrapped = RecordingFactory()
    c = Connection(wrapped)
    # The payload rides in the same read as the header's last byte.
    chunks = split(header)
    chunks[-1] += payload
    c.feed(*chunks)
    assert wrapped.addresses == [source]
    [service] = wrapped.built
    assert (service.peer, service.host) == (source, destination)
    assert type(service.peer) is type(source) and service.peer.type == "TCP"
    assert service.received == payload
    c.feed(b"more")
    assert service.received == payload + b"more"
    assert not c.transport.disconnecting
    assert c.clock.getDelayedCalls() == []


@pytest.mark.parametrize("name", sorted(HEADERS))
def test_every_split_point(name: str) -> None:
    header, source, _ = HEADERS[name]
    for cut in range(len(header) + 1):
        wrapped = RecordingFactory()
        c = Connection(wrapped)
        c.feed(header[:cut], header[cut:] + b"x")
        assert wrapped.addresses == [source], cut
        assert wrapped.built[0].received == b"x"


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(HEADERS)), cuts=st.lists(st.integers(0, 80), max_size=12),
       payload=st.binary(max_size=20))
def test_any_chunking(name: str, cuts: list[int], payload: bytes) -> None:
    header, source, _ = HEADERS[name]
    data = header + payload
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    wrapped = RecordingFactory()
    c = Connection(wrapped)
    c.feed(*chunks)
    assert wrapped.built[0].peer == source
    assert wrapped.built[0].received == payload


def test_speak_first_waits_for_whole_header() -> None:
    header = v2(CLIENT4, SERVER4)
    wrapped = RecordingFactory(greeting=b"Mon Jan  1 00:00:00 2024\r\n")
    c = Connection(wrapped)
    c.feed(*bytewise(header[:-1]))
    assert c.transport.value() == b""
    assert wrapped.addresses == []
    c.feed(header[-1:])
    assert c.transport.value() == b"Mon Jan  1 00:00:00 2024\r\n"
    assert wrapped.built[0].peer == CLIENT4


def test_refused_peer_closed_without_a_byte() -> None:
    wrapped = RecordingFactory(greeting=b"never", refuse=True)
    c = Connection(wrapped)
    c.feed(v1(CLIENT4, SERVER4) + b"payload")
    assert wrapped.addresses == [CLIENT4]
    assert c.transport.disconnecting and not c.aborted
    c.feed(b"late")
    assert c.transport.value() == b""
    c.protocol.connectionLost(Failure(ConnectionError()))


MALFORMED = {
    "not-proxy": b"GET / HTTP/1.0\r\n\r\n",
    "v1-too-long": b"PROXY TCP4 " + b"1" * 200,
    "v1-lf-only": b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 80\n",
    "v1-bad-family": b"PROXY TCP5 192.0.2.7 198.51.100.1 5555 80\r\n",
    "v1-bad-address": b"PROXY TCP4 300.0.2.7 198.51.100.1 5555 80\r\n",
    "v1-v6-in-tcp4": b"PROXY TCP4 2001:db8::7 2001:db8::1 5555 80\r\n",
    "v1-bad-port": b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 80\r\n",
    "v1-missing-port": b"PROXY TCP4 192.0.2.7 198.51.100.1 5555\r\n",
    "v1-not-ascii": b"PROXY TCP4 192.0.2.\xff 198.51.100.1 5555 80\r\n",
    "v2-bad-signature": V2_SIGNATURE[:-1] + b"X" + b"\x21\x11\x00\x0c" + bytes(12),
    "v2-version-1": V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),
    "v2-command-2": V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),
    "v2-family-4": V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),
    "v2-dgram": V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12),
    "v2-short-addresses": V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),
    "v2-oversized": V2_SIGNATURE + b"\x21\x11\xff\xff",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_header_aborts_and_logs_once(name: str) -> None:
    wrapped = RecordingFactory(greeting=b"never")
    c = Connection(wrapped)
    with capturedLogs() as events:
        c.feed(*bytewise(MALFORMED[name]))
    assert c.aborted
    assert wrapped.addresses == []
    assert c.transport.value() == b""
    assert c.factory.failures == {"malformed": 1}
    [event] = [e for e in events if e.get("log_namespace") == "sockd.proxyprotocol"]
    assert event["peer"] == "10.9.9.9:41000" and event["kind"] == "malformed"
    assert c.clock.getDelayedCalls() == []


def test_malformed_detected_before_all_bytes_arrive() -> None:
    c = Connection(RecordingFactory())
    c.feed(b"G")
    assert c.aborted  # a non-PROXY client is turned away at its first byte
    c = Connection(RecordingFactory())
    c.feed(V2_SIGNATURE + b"\x21\x11\x10\x00")  # 4112 bytes announced, 4096 allowed: no need to wait
    assert c.aborted


def test_max_header_bounds_v2_tlvs() -> None:
    header = v2(CLIENT4, SERVER4, tlvs=b"\x05\x00\x40" + bytes(64))
    c = Connection(RecordingFactory(), maxHeader=len(header))
    c.feed(header)
    assert not c.aborted
    c = Connection(RecordingFactory(), maxHeader=len(header) - 1)
    c.feed(header)
    assert c.aborted and c.factory.failures == {"malformed": 1}
    with pytest.raises(ValueError):
        ProxyProtocolFactory(RecordingFactory(), clock=Clock(), maxHeader=20)


def test_timeout_aborts_once() -> None:
    wrapped = RecordingFactory()
    c = Connection(wrapped, timeout=5.0)
    c.feed(b"PROXY TCP4 192.0.2.7")
    with capturedLogs() as events:
        c.clock.advance(4.9)
        assert not c.transport.disconnecting
        c.clock.advance(0.2)
    assert c.aborted
    assert c.factory.failures == {"timeout": 1}
    assert [e["kind"] for e in events if e.get("log_namespace") == "sockd.proxyprotocol"] == ["timeout"]
    c.feed(b" 198.51.100.1 5555 80\r\n")
    assert wrapped.addresses == []


def test_failures_logged_at_most_once_per_interval() -> None:
    clock = Clock()
    factory = ProxyProtocolFactory(RecordingFactory(), clock=clock, logInterval=60.0, trusted=["10.9.9.9"])
    with capturedLogs() as events:
        for _ in range(5):
            p = factory.buildProtocol(BALANCER)
            p.makeConnection(StringTransport(peerAddress=BALANCER))
            p.dataReceived(b"junk")
    assert factory.failures == {"malformed": 5}
    assert len([e for e in events if e.get("log_namespace") == "sockd.proxyprotocol"]) == 1


def test_connection_lost_while_waiting_cancels_timer() -> None:
    c = Connection(RecordingFactory())
    c.feed(b"PROXY ")
    c.protocol.connectionLost(Failure(ConnectionError()))
    assert c.clock.getDelayedCalls() == []


@pytest.mark.parametrize("header", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
    v2(command=0),
    v2(CLIENT4, SERVER4, command=0),  # LOCAL: addresses present but meaningless
    v2(command=1, family=0x00),  # AF_UNSPEC
    v2(command=1, family=0x31, tlvs=bytes(216)),  # AF_UNIX
], ids=["v1-unknown", "v1-unknown-with-junk", "v2-local", "v2-local-with-addresses", "v2-unspec", "v2-unix"])
def test_local_and_unknown_use_socket_peer(header: bytes) -> None:
    wrapped = RecordingFactory()
    c = Connection(wrapped)
    c.feed(header + b"data")
    assert wrapped.addresses == [BALANCER]
    assert (wrapped.built[0].peer, wrapped.built[0].host) == (BALANCER, LISTENER)
    assert wrapped.built[0].received == b"data"


def test_half_close_reaches_wrapped_protocol() -> None:
    assert IHalfCloseableProtocol.providedBy(Connection(RecordingFactory()).protocol)
    wrapped = RecordingFactory()
    c = Connection(wrapped)
    c.feed(v2(CLIENT4, SERVER4))
    c.protocol.readConnectionLost()
    c.protocol.writeConnectionLost()
    assert wrapped.built[0].events == ["made", "readConnectionLost", "writeConnectionLost"]
    assert not c.transport.disconnecting
    c.protocol.connectionLost(Failure(ConnectionError()))
    assert wrapped.built[0].events[-1] == "lost"


def test_half_close_without_half_closeable_service_closes() -> None:
    wrapped = RecordingFactory(protocolClass=Recorder)
    c = Connection(wrapped)
    c.feed(v2(CLIENT4, SERVER4))
    c.protocol.readConnectionLost()
    assert c.transport.disconnecting and not c.aborted
    assert wrapped.built[0].events == ["made"]


def test_half_close_before_header_closes() -> None:
    wrapped = RecordingFactory()
    c = Connection(wrapped)
    c.feed(b"PROXY TCP4")
    c.protocol.readConnectionLost()
    assert c.transport.disconnecting and not c.aborted and wrapped.addresses == []
    assert c.clock.getDelayedCalls() == []


@implementer(IPushProducer)
class Producer:
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def stopProducing(self) -> None: ...


def test_transport_methods_reach_real_transport() -> None:
    wrapped = RecordingFactory()
    c = Connection(wrapped)
    c.feed(v1(CLIENT6, SERVER6))
    t = wrapped.built[0].transport
    producer = Producer()
    t.registerProducer(producer, True)
    assert c.transport.producer is producer
    t.pauseProducing()
    assert c.transport.producerState == "paused"
    t.resumeProducing()
    assert c.transport.producerState == "producing"
    t.unregisterProducer()
    assert c.transport.producer is None
    t.write(b"a")
    t.writeSequence([b"b", b"c"])
    assert c.transport.value() == b"abc"
    t.abortConnection()
    assert c.aborted


def test_real_ack_and_daytime_behind_policies() -> None:
    """The stack tap.py builds: access control and the service both see the client."""
    settings = Settings()
    settings.deny = ["192.0.2.0/24"]
    clock = Clock()
    context = Context(settings, clock, now=lambda: 0.0)
    admission = Admission(settings, clock.seconds)

    def stack(service: str) -> Connection:
        policy = PolicyFactory(BY_NAME[service].stream(context), serviceName=service, transportName="haproxy",
                               admission=admission, registry=ConnectionRegistry(clock), clock=clock)
        return Connection(policy)

    with capturedLogs() as events:
        refused = stack("daytime")
        refused.feed(*bytewise(v2(CLIENT4, SERVER4)))
        served = stack("daytime")
        served.feed(v2(CLIENT6, SERVER6))
        ack = stack("ack")
        ack.feed(v1(CLIENT6, SERVER6)[:9], v1(CLIENT6, SERVER6)[9:] + b"hi\n")
    assert refused.transport.value() == b"" and refused.transport.disconnecting
    assert served.transport.value() == b"Thursday, January 01, 1970 00:00:00-UTC\r\n" and served.transport.disconnecting
    assert ack.transport.value() == b"I got your message"
    refusals = [e for e in events if e.get("log_namespace") == "sockd.admission"]
    assert [e["peer"] for e in refusals] == ["192.0.2.7"]
    [message] = [e for e in events if e.get("log_namespace") == "sockd.messages"]
    assert message["peer"] == "[2001:db8::7]:6666"


def test_parse_header_api() -> None:
    assert parseHeader(b"") is None
    assert parseHeader(b"PROXY TCP4 1.2") is None
    assert parseHeader(V2_SIGNATURE[:5]) is None
    header = parseHeader(v1(CLIENT4, SERVER4) + b"rest")
    assert header is not None and header.length == len(v1(CLIENT4, SERVER4))
    mapped = parseHeader(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n")
    assert mapped is not None and mapped.source == IPv6Address("TCP", "::ffff:192.0.2.7", 1)
    with pytest.raises(ProxyHeaderError):
        parseHeader(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n")


def test_the_proxy_reader_relays_its_transport_without_getattr():
    """Every read passes through it: no __getattr__ in its bases (each attribute access would pay for it)."""
    assert all("__getattr__" not in vars(base) for base in ProxyProtocol.__mro__)


# ---------------------------------------------------------------------------------------------------------------
# Trusted balancers, and the limits before and after the header.

LOOPBACK_BALANCER = IPv4Address("TCP", "127.0.0.1", 42000)


class Stack:
    """The stack app.py builds for a haproxy: listener: PROXY reader, policies (counting claimed peers), ack."""

    def __init__(self, trusted: list[str] | None = None, **settingValues: Any) -> None:
        self.settings = Settings()
        for name, value in settingValues.items():
            setattr(self.settings, name, value)
        self.clock = Clock()
        context = Context(self.settings, self.clock, now=lambda: 0.0)
        self.admission = Admission(self.settings, self.clock.seconds)
        self.policy = PolicyFactory(BY_NAME["ack"].stream(context), serviceName="ack", transportName="tcp",
                                    admission=self.admission, registry=ConnectionRegistry(self.clock),
                                    clock=self.clock, claimedPeers=True)
        extra = {} if trusted is None else {"trusted": trusted}
        self.factory = ProxyProtocolFactory(self.policy, clock=self.clock,
                                            logInterval=self.settings.refusal_log_interval, **extra)

    def connect(self, peer: Any = LOOPBACK_BALANCER) -> Connection:
        return Connection(None, factory=self.factory, clock=self.clock, peer=peer)

    @property
    def refused(self) -> dict[str, int]:
        return {k: v for k, v in self.policy.stats.refused.items() if v}


SPOOF = b"PROXY TCP4 10.1.2.3 127.0.0.1 1 46201\r\nhi\n"


@pytest.mark.parametrize("peer", [BALANCER, IPv6Address("TCP", "2001:db8::9", 1),
                                  IPv6Address("TCP", "::ffff:10.9.9.9", 1)], ids=["ipv4", "ipv6", "mapped"])
def test_untrusted_peer_closed_before_a_byte_counted_and_logged_once(peer: Any) -> None:
    """By default only loopback may send a header: the spoof of an access list from anywhere else is closed."""
    stack = Stack(allow=["10.0.0.0/8"])
    with capturedLogs() as events:
        connections = [stack.connect(peer) for _ in range(3)]
        for c in connections:
            assert c.protocol is None and c.transport.disconnecting and c.transport.value() == b""
    assert stack.refused == {"untrusted-proxy": 3}
    assert stack.factory.failures == {"untrusted-proxy": 3}
    assert stack.admission.total == 0
    refusals = [e for e in events if e.get("log_namespace") == "sockd.admission"]
    assert [(e["reason"], e["peer"]) for e in refusals] == [("untrusted-proxy", peer.host)]
    stack.clock.advance(stack.settings.refusal_log_interval)
    with capturedLogs() as events:
        stack.connect(peer)
    assert len([e for e in events if e.get("log_namespace") == "sockd.admission"]) == 1


@pytest.mark.parametrize("peer", [LOOPBACK_BALANCER, IPv6Address("TCP", "::1", 1),
                                  IPv6Address("TCP", "::ffff:127.0.0.5", 1)], ids=["ipv4", "ipv6", "mapped"])
def test_loopback_balancer_trusted_by_default(peer: Any) -> None:
    stack = Stack(allow=["10.0.0.0/8"])
    c = stack.connect(peer)
    c.feed(SPOOF)
    assert c.transport.value() == b"I got your message"


def test_trusted_proxy_list_replaces_loopback() -> None:
    stack = Stack(trusted=["192.0.2.0/24"])
    assert stack.connect(LOOPBACK_BALANCER).protocol is None
    assert stack.connect(IPv4Address("TCP", "192.0.2.200", 1)).protocol is not None
    stack.factory.trust(["127.0.0.1"])  # a reload
    assert stack.connect(LOOPBACK_BALANCER).protocol is not None
    stack.factory.trust(["none"])
    assert stack.connect(LOOPBACK_BALANCER).protocol is None


def test_unix_balancer_has_no_address_to_judge() -> None:
    from twisted.internet.address import UNIXAddress

    stack = Stack()
    c = stack.connect(UNIXAddress(None))
    assert c.protocol is not None


def test_waiting_connections_count_against_max_connections() -> None:
    """Peers that never send a header hold places: past --max-connections they are closed at once."""
    stack = Stack(max_connections=3)
    waiting = [stack.connect() for _ in range(3)]
    assert all(c.protocol is not None for c in waiting) and stack.admission.total == 3
    extra = stack.connect()
    assert extra.protocol is None and extra.transport.disconnecting
    assert stack.refused == {"max-connections": 1}
    waiting[0].feed(v1(CLIENT4, SERVER4) + b"hi\n")  # the client takes the balancer's place
    assert waiting[0].transport.value() == b"I got your message" and stack.admission.total == 3
    assert stack.admission.perSource == {"192.0.2.7": 1} and stack.admission.waiting == {}  # loopback: exempt
    stack.clock.advance(5.0)  # the header deadline: the two silent ones are aborted, their places freed
    assert waiting[1].aborted and waiting[2].aborted
    for c in waiting[1:]:
        c.protocol.connectionLost(Failure(ConnectionError()))
    assert stack.admission.total == 1 and stack.admission.perSource == {"192.0.2.7": 1}
    waiting[0].protocol.connectionLost(Failure(ConnectionError()))
    assert stack.admission.total == 0 and stack.admission.perSource == {}


def test_waiting_connections_count_against_the_real_peers_per_source_limit() -> None:
    stack = Stack(trusted=["10.9.9.9"], exempt=["none"], max_per_source=2, connection_rate=1, connection_burst=1)
    first, second = stack.connect(BALANCER), stack.connect(BALANCER)
    assert stack.connect(BALANCER).protocol is None and stack.refused == {"per-source": 1}
    # The header's client is judged by the rules (the rate too), not the balancer's waiting places.
    assert stack.admission.waiting == {"10.9.9.9": 2}
    first.feed(v1(CLIENT4, SERVER4) + b"hi\n")
    assert first.transport.value() == b"I got your message"
    assert stack.admission.waiting == {"10.9.9.9": 1} and stack.admission.perSource == {"192.0.2.7": 1}
    second.feed(v1(CLIENT4, SERVER4) + b"hi\n")
    assert second.transport.value() == b"" and second.transport.disconnecting
    assert stack.refused == {"per-source": 1, "rate": 1}
    assert stack.admission.total == 1


def test_aborted_and_half_closed_waiting_connections_release_their_place() -> None:
    stack = Stack()
    bad = stack.connect()
    bad.feed(b"junk")
    assert bad.aborted
    bad.protocol.connectionLost(Failure(ConnectionError()))
    eof = stack.connect()
    eof.protocol.readConnectionLost()
    eof.protocol.connectionLost(Failure(ConnectionError()))
    refused = Stack(deny=["192.0.2.0/24"])
    c = refused.connect()
    c.feed(v1(CLIENT4, SERVER4))
    assert c.transport.disconnecting and c.transport.value() == b""
    c.protocol.connectionLost(Failure(ConnectionError()))
    assert stack.admission.total == 0 and stack.admission.perSource == {} == stack.admission.waiting
    assert refused.admission.total == 0 and refused.admission.perSource == {} == refused.admission.waiting


@pytest.mark.parametrize("claimed", [
    v1(IPv4Address("TCP", "127.0.0.1", 1), SERVER4),
    v1(IPv6Address("TCP", "::1", 1), SERVER6),
    b"PROXY TCP6 ::ffff:127.0.0.1 ::1 1 2\r\n",
    v2(IPv4Address("TCP", "127.0.0.9", 1), SERVER4),
    v2(IPv6Address("TCP", "::ffff:127.0.0.1", 1), SERVER6),
], ids=["v1-ipv4", "v1-ipv6", "v1-mapped", "v2-ipv4", "v2-mapped"])
def test_a_claimed_loopback_address_is_not_exempt(claimed: bytes) -> None:
    """--exempt is for real loopback peers: a header saying 127.0.0.1 is limited like any client."""
    stack = Stack(max_per_source=1)
    first, second = stack.connect(), stack.connect()
    first.feed(claimed + b"hi\n")
    assert first.transport.value() == b"I got your message"
    second.feed(claimed + b"hi\n")
    assert second.transport.value() == b"" and second.transport.disconnecting
    assert stack.refused == {"per-source": 1}


def test_a_real_loopback_peer_without_header_stays_exempt() -> None:
    settings = Settings()
    settings.max_per_source = 1
    clock = Clock()
    admission = Admission(settings, clock.seconds)
    for _ in range(3):
        assert admission.admit("127.0.0.1") is None
        assert admission.admit("::ffff:127.0.0.1") is None
    assert admission.admit("127.0.0.1", claimed=True) == "per-source"


@implementer(IReadPausingTransport)
class ReadPausingTransport(StringTransport):
    """Stands for sockd's own transport: records that read pausing was asked of it."""

    pausing = False

    def pauseReadingWhileBlocked(self) -> None:
        self.pausing = True


def _echoBehindProxy(transport: StringTransport, policies: bool) -> StringTransport:
    clock = Clock()
    wrapped: Any = EchoFactory()
    if policies:  # the stack app.py builds: PROXY reader, then the policy layer, then the service
        settings = Settings()
        wrapped = PolicyFactory(wrapped, serviceName="echo", transportName="haproxy",
                                admission=Admission(settings, clock.seconds), registry=ConnectionRegistry(clock),
                                clock=clock)
    protocol = ProxyProtocolFactory(wrapped, clock=clock, trusted=[BALANCER.host]).buildProtocol(BALANCER)
    protocol.makeConnection(transport)
    protocol.dataReceived(v1(CLIENT4, SERVER4) + b"hi")
    assert transport.value() == b"hi"
    return transport


@pytest.mark.parametrize("policies", [False, True], ids=["alone", "with-policies"])
def test_read_pausing_is_passed_on_through_the_proxy_reader(policies: bool) -> None:
    transport = _echoBehindProxy(ReadPausingTransport(hostAddress=LISTENER, peerAddress=BALANCER), policies)
    assert transport.pausing and transport.producer is None


@pytest.mark.parametrize("policies", [False, True], ids=["alone", "with-policies"])
def test_read_pausing_on_a_transport_without_it_registers_a_producer(policies: bool) -> None:
    transport = _echoBehindProxy(StringTransport(hostAddress=LISTENER, peerAddress=BALANCER), policies)
    assert isinstance(transport.producer, ReadPauser) and transport.streaming
    transport.producer.pauseProducing()
    assert transport.producerState == "paused"
