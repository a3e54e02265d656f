"""PolicyFactory / PolicyProtocol and ConnectionRegistry (sockd/defences/stream.py) on StringTransport and a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

from sockd.config.settings import Settings
from sockd.defences.admission import Admission
from sockd.defences.stream import ConnectionRegistry, PolicyFactory, PolicyProtocol
from sockd.interfaces import IReadPausingTransport
from sockd.observe.log.messages import MessageLog
from sockd.observe.metrics import Metrics
from sockd.protocols.ack import AckFactory, AckProtocol
from sockd.protocols.chargen import CHUNK, ChargenFactory
from sockd.protocols.discard import DiscardFactory
from sockd.protocols.echo import EchoFactory

ANSWER = b"I got your message"


class Setup:
    """One PolicyFactory with its admission, registry and clock."""

    _count = 0

    def __init__(
        self, wrapped: Any = None, idle: float = 0, handshake: float = 0, clock: Clock | None = None, **settings: Any
    ) -> None:
        Setup._count += 1
        self.service = f"policy-test-{Setup._count}"
        self.metrics = Metrics(process=False)  # this test's own counts
        self.clock = clock or Clock()
        values: dict[str, Any] = {"max_connections": 0, "max_per_source": 0, "connection_rate": 0.0, "exempt": []}
        values.update(settings)
        self.admission = Admission(Settings(**values), self.clock.seconds)
        self.registry = ConnectionRegistry(self.clock)
        if wrapped is None:
            wrapped = AckFactory(self.clock, MessageLog("ack", False))
        self.factory = PolicyFactory(
            wrapped, serviceName=self.service, transportName="tcp", admission=self.admission, registry=self.registry,
            clock=self.clock, idleTimeout=idle, handshakeTimeout=handshake, metrics=self.metrics,
        )

    def connect(
        self, host: str = "192.0.2.1", port: int = 40000, transport: StringTransport | None = None
    ) -> tuple[PolicyProtocol | None, StringTransport]:
        addr = IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
        if transport is None:
            transport = StringTransportWithDisconnection(peerAddress=addr)
        proto = self.factory.buildProtocol(addr)
        if proto is not None:
            transport.protocol = proto  # type: ignore[attr-defined]
            proto.makeConnection(transport)
        return proto, transport

    def sample(self, name: str, **labels: str) -> float:
        labels = {"service": self.service, "transport": "tcp", **labels}
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def test_admitted_connection_is_wrapped_counted_and_released() -> None:
    s = Setup()
    proto, transport = s.connect()
    assert isinstance(proto, PolicyProtocol)
    assert isinstance(proto.wrappedProtocol, AckProtocol)
    assert proto.peerName == "192.0.2.1:40000"
    assert s.registry.connections == {proto}
    assert s.admission.total == 1
    assert s.sample("sockd_connections_active") == 1
    assert s.sample("sockd_connections_accepted_total") == 1
    proto.dataReceived(b"hello\n")
    assert transport.value() == ANSWER
    assert s.sample("sockd_received_bytes_total") == 6
    assert s.sample("sockd_sent_bytes_total") == 18
    assert s.sample("sockd_answers_total") == 1
    transport.loseConnection()
    assert s.registry.connections == set()
    assert s.admission.total == 0 and s.admission.perSource == {}
    assert s.sample("sockd_connections_active") == 0


def test_refused_peer_gets_no_protocol_and_is_counted() -> None:
    s = Setup(deny=["192.0.2.0/24"], refusal_log_interval=10.0)
    with capturedLogs() as events:
        for _ in range(3):
            proto, _ = s.connect("192.0.2.9")
            assert proto is None
    assert s.admission.total == 0
    assert s.registry.connections == set()
    assert s.sample("sockd_connections_refused_total", reason="access") == 3
    assert s.sample("sockd_connections_accepted_total") == 0
    refusals = [formatEvent(e) for e in events if e.get("log_namespace") == "sockd.admission"]
    assert refusals == [f"{s.service}/tcp: refused 192.0.2.9 (access); further refusals of it are not logged for 10s"]


def test_connection_limits_through_the_factory() -> None:
    s = Setup(max_connections=2, max_per_source=1)
    first, t1 = s.connect("192.0.2.1")
    assert first is not None
    assert s.connect("192.0.2.1")[0] is None
    assert s.connect("192.0.2.2")[0] is not None
    assert s.connect("192.0.2.3")[0] is None
    assert s.sample("sockd_connections_refused_total", reason="per-source") == 1
    assert s.sample("sockd_connections_refused_total", reason="max-connections") == 1
    t1.loseConnection()
    assert s.connect("192.0.2.3")[0] is not None


def test_unix_peers_are_admitted_without_an_address() -> None:
    s = Setup(max_connections=1)
    proto = s.factory.buildProtocol(UNIXAddress(None))
    assert proto is not None and proto.host is None
    assert s.factory.buildProtocol(UNIXAddress(None)) is None


def test_wrapped_factory_refusing_releases_admission() -> None:
    class Refusing(Factory):
        def buildProtocol(self, addr: Any) -> None:
            return None

    s = Setup(wrapped=Refusing(), max_connections=1)
    assert s.connect()[0] is None
    assert s.admission.total == 0 and s.admission.perSource == {}


def test_idle_timeout_aborts_at_exactly_idle_timeout() -> None:
    s = Setup(idle=10.0)
    with capturedLogs() as events:
        proto, transport = s.connect()
        s.clock.advance(10.0 - 1e-6)
        assert not transport.disconnected
        s.clock.advance(10.0 - s.clock.seconds())
        assert s.clock.seconds() == 10.0
    assert transport.disconnected  # abortConnection, not a polite close
    assert s.registry.connections == set()
    assert s.sample("sockd_connections_timed_out_total", kind="idle") == 1
    assert f"{s.service}/tcp: closing 192.0.2.1:40000: idle for 10s" in [
        formatEvent(e) for e in events if e.get("log_namespace") == "sockd.policies"
    ]
    assert s.clock.getDelayedCalls() == []


def test_idle_timeout_reset_by_reads() -> None:
    s = Setup(wrapped=DiscardFactory(), idle=10.0)
    proto, transport = s.connect()
    assert proto is not None
    s.clock.advance(6)
    proto.dataReceived(b"x")  # discard never writes: only the read can reset the timer
    s.clock.advance(9.5)
    assert not transport.disconnected
    s.clock.advance(0.5)
    assert transport.disconnected


def test_idle_timeout_reset_by_an_ack_answer() -> None:
    s = Setup(idle=10.0)
    proto, transport = s.connect()
    assert proto is not None
    s.clock.advance(4)
    proto.dataReceived(b"partial")  # read at 4: due at 14
    s.clock.advance(0.1)  # the quiet timer answers at 4.1: due at 14.1
    assert transport.value() == ANSWER
    s.clock.advance(10 - 1e-6)
    assert not transport.disconnected
    s.clock.advance(2e-6)
    assert transport.disconnected


def test_idle_timeout_reset_by_writes() -> None:
    s = Setup(wrapped=ChargenFactory(), idle=10.0)
    proto, transport = s.connect()
    assert proto is not None
    s.clock.advance(6)
    transport.producer.resumeProducing()  # chargen writes a chunk: the connection is not idle
    assert len(transport.value()) == CHUNK
    s.clock.advance(9.5)
    assert not transport.disconnected
    s.clock.advance(0.5)
    assert transport.disconnected


def test_idle_timeout_zero_sets_no_timer() -> None:
    s = Setup(wrapped=DiscardFactory(), idle=0)
    _, transport = s.connect()
    assert s.clock.getDelayedCalls() == []
    s.clock.advance(10**6)
    assert transport.connected


def test_turning_the_idle_timeout_on_applies_to_connections_already_open() -> None:
    """A reload from idle_timeout 0 to N: the open connections are swept, not only those that arrive later."""
    s = Setup(wrapped=DiscardFactory(), idle=0)
    _, transport = s.connect()
    s.clock.advance(30)
    s.factory.idleTimeout = 10.0
    s.registry.rescheduleIdle()
    assert not transport.connected  # idle for 30 s already: closed at once
    _, second = s.connect()
    s.clock.advance(9.9)
    assert second.connected
    s.clock.advance(0.2)
    assert not second.connected


def test_idle_deadline_is_none_without_a_timeout_or_while_draining() -> None:
    s = Setup(idle=10.0)
    proto, _ = s.connect()
    assert proto is not None
    assert proto.idleDeadline() == 10.0
    proto.drain(0.05)
    assert proto.idleDeadline() is None
    assert Setup(idle=0).connect()[0].idleDeadline() is None  # type: ignore[union-attr]

def test_half_close_reaches_ack_through_the_wrapper() -> None:
    s = Setup()
    proto, transport = s.connect()
    assert proto is not None
    assert IHalfCloseableProtocol.providedBy(proto)
    proto.dataReceived(b"no newline")
    assert transport.value() == b""
    proto.readConnectionLost()
    assert transport.value() == ANSWER
    assert not transport.connected
    assert s.registry.connections == set()
    assert s.clock.getDelayedCalls() == []


def test_half_close_closes_services_that_cannot_half_close() -> None:
    s = Setup(wrapped=EchoFactory())
    proto, transport = s.connect()
    assert proto is not None
    proto.dataReceived(b"abc")
    proto.readConnectionLost()
    assert transport.value() == b"abc"
    assert not transport.connected
    proto.writeConnectionLost()  # harmless on a service that is not half-closeable


def test_write_connection_lost_is_forwarded() -> None:
    s = Setup()
    proto, transport = s.connect()
    assert proto is not None
    proto.writeConnectionLost()
    assert transport.connected


def test_flow_control_through_the_wrapper() -> None:
    s = Setup()
    proto, transport = s.connect()
    assert transport.streaming is True
    transport.producer.pauseProducing()
    assert transport.producerState == "paused"
    transport.producer.resumeProducing()
    assert transport.producerState == "producing"


@implementer(IReadPausingTransport)
class ReadPausingTransport(StringTransportWithDisconnection):
    """Stands for sockd's own transport: records the read-pausing requests and their end."""

    pausing = False

    def pauseReadingWhileBlocked(self) -> None:
        self.pausing = True

    def unregisterProducer(self) -> None:
        self.pausing = False
        self.producer = None


def test_read_pausing_is_passed_on_to_a_transport_that_has_it() -> None:
    s = Setup()
    transport = ReadPausingTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    proto, _ = s.connect(transport=transport)
    assert proto is not None
    assert transport.pausing and transport.producer is None  # nothing registered: the transport does it lazily
    proto.dataReceived(b"hi\n")
    proto.loseConnection()
    assert transport.pausing  # no producer to drop: the transport's own close ends it


def test_drain_ends_the_transports_read_pausing() -> None:
    s = Setup()
    transport = ReadPausingTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    proto, _ = s.connect(transport=transport)
    s.registry.drain(grace=5.0, quiet=0.05)
    assert not transport.pausing  # reading everything the peer sent: no RST for unread input at the close
    s.clock.advance(0.05)
    assert not transport.connected


class TLSLikeTransport(StringTransportWithDisconnection):
    """A transport whose handle reports whether a TLS handshake has finished."""

    def __init__(self, finished: bytes | None) -> None:
        super().__init__()
        self.finished = finished

    def getHandle(self) -> Any:
        outer = self

        class Handle:
            def get_finished(self) -> bytes | None:
                return outer.finished

        return Handle()


def test_tls_handshake_deadline() -> None:
    s = Setup(handshake=10.0, idle=120.0)
    _, stuck = s.connect("192.0.2.1", transport=TLSLikeTransport(None))
    _, done = s.connect("192.0.2.2", transport=TLSLikeTransport(b"finished"))
    s.clock.advance(9.99)
    assert not stuck.disconnected
    s.clock.advance(10.0 - s.clock.seconds())
    assert stuck.disconnected
    assert not done.disconnected and done.connected
    assert s.sample("sockd_connections_timed_out_total", kind="tls-handshake") == 1


def test_handshake_call_cancelled_when_connection_ends_first() -> None:
    s = Setup(handshake=10.0)
    _, transport = s.connect(transport=TLSLikeTransport(None))
    transport.loseConnection()
    assert s.clock.getDelayedCalls() == []


# -- draining ------------------------------------------------------------------------------------------------------


def test_drain_with_no_connections_is_done_at_once() -> None:
    registry = ConnectionRegistry(Clock())
    d = registry.drain(grace=5)
    assert d.called


def test_drain_closes_quiet_connections_and_flushes_partial_messages() -> None:
    s = Setup(idle=120.0)
    _, idle = s.connect("192.0.2.1")
    partialProto, partial = s.connect("192.0.2.2")
    assert partialProto is not None
    partialProto.dataReceived(b"half a messa")
    s.clock.advance(0.06)  # the ack quiet timer (0.1 s) has not fired yet
    partialProto.dataReceived(b"ge")
    d = s.registry.drain(grace=5.0, quiet=0.05)
    results: list[Any] = []
    d.addCallback(results.append)
    start = s.clock.seconds()
    s.clock.advance(0.049)
    assert idle.connected and partial.connected and not d.called
    s.clock.advance(start + 0.05 - s.clock.seconds())
    assert not idle.connected and not partial.connected
    assert idle.value() == b""
    assert partial.value() == ANSWER  # flushed before closing, not dropped
    assert results == [None]
    assert s.clock.getDelayedCalls() == []  # the grace deadline was cancelled


def test_drain_lets_busy_connections_finish_until_quiet() -> None:
    s = Setup()
    proto, transport = s.connect()
    assert proto is not None
    d = s.registry.drain(grace=5.0, quiet=0.05)
    for _ in range(10):
        s.clock.advance(0.04)
        proto.dataReceived(b"still talking\n")
    assert transport.connected
    assert transport.value() == ANSWER * 10
    s.clock.advance(0.05)
    assert not transport.connected
    assert d.called


def test_drain_aborts_the_rest_at_grace() -> None:
    s = Setup()
    chattyProto, chatty = s.connect("192.0.2.1")
    stuckProto, stuck = s.connect("192.0.2.2", transport=StringTransport(
        peerAddress=IPv4Address("TCP", "192.0.2.2", 40000)))
    assert chattyProto is not None and stuckProto is not None
    d = s.registry.drain(grace=1.0, quiet=0.05)
    with capturedLogs() as events:
        for _ in range(24):
            s.clock.advance(0.04)
            chattyProto.dataReceived(b"x\n")  # never quiet
        # The stuck peer was told to close after 0.05 s but its transport never finishes closing.
        assert stuck.disconnecting and not stuck.disconnected
        assert chatty.connected
        s.clock.advance(1.0 - s.clock.seconds())
    assert not chatty.connected and chatty.disconnected
    assert stuck.disconnected
    assert not d.called  # stuck's connectionLost has not come yet
    stuckProto.connectionLost(None)
    assert d.called
    aborts = [formatEvent(e) for e in events if e.get("log_namespace") == "sockd.policies"]
    assert sorted(aborts) == [
        "shutdown grace period over: aborting 192.0.2.1:40000",
        "shutdown grace period over: aborting 192.0.2.2:40000",
    ]


def test_registry_add_remove() -> None:
    class Quiet:
        def idleDeadline(self) -> None:
            return None

    registry = ConnectionRegistry(Clock())
    a, b = Quiet(), Quiet()
    registry.add(a)  # type: ignore[arg-type]
    registry.add(b)  # type: ignore[arg-type]
    registry.remove(a)  # type: ignore[arg-type]
    registry.remove(a)  # type: ignore[arg-type]
    assert registry.connections == {b}


@pytest.mark.parametrize("factoryName", ["ack", "echo", "discard", "chargen"])
def test_connection_lost_releases_everything(factoryName: str) -> None:
    clock = Clock()
    wrapped = {
        "ack": lambda: AckFactory(clock, MessageLog("ack", False)),
        "echo": EchoFactory, "discard": DiscardFactory, "chargen": ChargenFactory,
    }[factoryName]()
    s = Setup(wrapped=wrapped, idle=30.0, handshake=10.0, clock=clock)
    proto, transport = s.connect()
    assert proto is not None
    proto.dataReceived(b"abc")
    transport.loseConnection()
    assert s.admission.total == 0
    assert s.registry.connections == set()
    assert clock.getDelayedCalls() == []


# -- a real TLS layer in memory ------------------------------------------------------------------------------------


def tlsServer(s: Setup) -> Any:
    import os

    import twisted.test
    from twisted.internet import ssl
    from twisted.protocols.tls import TLSMemoryBIOFactory

    with open(os.path.join(os.path.dirname(twisted.test.__file__), "server.pem"), "rb") as f:
        certificate = ssl.PrivateCertificate.loadPEM(f.read())
    return TLSMemoryBIOFactory(certificate.options(), False, s.factory, s.clock)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("handshake", [True, False])
def test_tls_handshake_deadline_with_real_tls(handshake: bool) -> None:
    from twisted.internet import ssl
    from twisted.internet.protocol import Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.test import iosim

    s = Setup(handshake=10.0)
    server = tlsServer(s).buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    received: list[bytes] = []

    class Client(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    if handshake:
        client = TLSMemoryBIOFactory(
            ssl.CertificateOptions(verify=False), True, Factory.forProtocol(Client), s.clock
        ).buildProtocol(None)
    else:
        client = Protocol()  # connects and never says a word: no handshake
    serverTransport = iosim.FakeTransport(server, False, peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    pump = iosim.connect(server, serverTransport, client, iosim.FakeTransport(client, True), clock=s.clock)
    if handshake:
        client.write(b"hi\n")
    for _ in range(5):
        pump.pump()
    s.clock.advance(10.0)
    pump.pump()
    if handshake:
        assert b"".join(received) == ANSWER
        assert not serverTransport.disconnecting
        assert s.sample("sockd_connections_timed_out_total", kind="tls-handshake") == 0
    else:
        assert serverTransport.disconnecting
        assert s.sample("sockd_connections_timed_out_total", kind="tls-handshake") == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_drain_closes_a_quiet_tls_connection_after_quiet() -> None:
    from twisted.internet import ssl
    from twisted.internet.protocol import Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.test import iosim

    s = Setup()
    server = tlsServer(s).buildProtocol(IPv4Address("TCP", "192.0.2.1", 40000))
    client = TLSMemoryBIOFactory(
        ssl.CertificateOptions(verify=False), True, Factory.forProtocol(Protocol), s.clock
    ).buildProtocol(None)
    serverTransport = iosim.FakeTransport(server, False, peerAddress=IPv4Address("TCP", "192.0.2.1", 40000))
    pump = iosim.connect(server, serverTransport, client, iosim.FakeTransport(client, True), clock=s.clock)
    for _ in range(5):
        pump.pump()
    d = s.registry.drain(grace=5.0, quiet=0.05)
    for _ in range(10):
        s.clock.advance(0.01)
        pump.pump()
    assert serverTransport.disconnecting  # closed once quiet, not aborted at the 5 s grace
    assert d.called


# -- the wrapper relays the transport's interface without __getattr__ -----------------------------------------


def test_policy_protocol_relays_the_transport_without_getattr() -> None:
    """No __getattr__ in its bases: that would slow every attribute access of the wrapper, in every read and write."""
    assert all("__getattr__" not in vars(base) for base in PolicyProtocol.__mro__)

    class Transport(StringTransportWithDisconnection):
        noDelay = False

        def getHandle(self) -> str:
            return "the socket"

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.noDelay = enabled

    setup = Setup()
    proto, transport = setup.connect(transport=Transport(peerAddress=IPv4Address("TCP", "192.0.2.9", 4000)))
    assert proto is not None
    wrapped = proto.wrappedProtocol
    assert wrapped.transport is proto
    assert proto.getHandle() == "the socket" and proto.getPeer() == IPv4Address("TCP", "192.0.2.9", 4000)
    assert transport.noDelay is True  # the policy turns Nagle off on every TCP connection
    proto.setTcpNoDelay(False)
    assert transport.noDelay is False
    # What the transport lacks, the wrapper lacks: protocols probe with getattr(transport, name, None).
    assert getattr(proto, "loseWriteConnection", None) is None and not hasattr(transport, "loseWriteConnection")
    assert proto.logPrefix() == "AckProtocol (PolicyProtocol)"
