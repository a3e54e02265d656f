"""The fast paths of the hot code: each must behave exactly as the slow path it replaces.

Close at EOF (sockd/sendnow.py), the lazily registered read pauser (sockd/flow.py, sendnow.py,
policies.py), the cached interface declaration and log prefix (policies.py), the admission
verdict cache (admission.py), the lazy peer (ack.py), the lean message event (messagelog.py) and
the classic text observer (logging.py).
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, tcp, threads
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport, StringTransportWithDisconnection
from twisted.logger import (
    Logger,
    LogLevel,
    capturedLogs,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd.config.settings import Settings
from sockd.defences.admission import Admission
from sockd.defences.stream import ConnectionRegistry, PolicyFactory, PolicyProtocol
from sockd.observe.messagelog import MessageLog
from sockd.observe.observers import ClassicText, textLogger
from sockd.protocols.ack import AckFactory
from sockd.protocols.echo import EchoFactory
from sockd.protocols.flow import ReadPauser, pauseReadingWhileBlocked
from sockd.runtime.sendnow import SendAtOnce, installSendAtOnce, sendAtOnceClass

ANSWER = b"I got your message"


# -- close at EOF ---------------------------------------------------------------------------------------------------


@implementer(IHalfCloseableProtocol)
class HalfCloser(Protocol):
    """At EOF: write C{factory.last} (if any), then loseConnection(); records when connectionLost comes."""

    def connectionMade(self) -> None:
        self.factory.protocols.append(self)
        self.events: list[str] = []
        if self.factory.producer:
            self.transport.registerProducer(ReadPauser(self.transport), True)

    def readConnectionLost(self) -> None:
        self.events.append("eof")
        # Runs on the reactor's next turn, before Twisted's own close (which waits for writability).
        reactor.callLater(0, self.events.append, "next turn")
        if self.factory.last:
            self.transport.write(self.factory.last)
        self.transport.loseConnection()
        self.events.append("returned")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.events.append("lost")
        self.factory.lost.callback(self.events)


def _eofExchange(last: bytes = b"", producer: bool = False, install: bool = True) -> defer.Deferred[Any]:
    factory = Factory.forProtocol(HalfCloser)
    factory.protocols, factory.last, factory.producer = [], last, producer
    factory.lost = defer.Deferred()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    if install:
        assert installSendAtOnce(port)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.settimeout(10)
    client.shutdown(socket.SHUT_WR)

    def read() -> int:
        got = 0
        while chunk := client.recv(1 << 20):
            got += len(chunk)
        client.close()
        return got

    # The client reads in a thread meanwhile: queued answers drain only as it reads.
    reading = threads.deferToThread(read)
    both = defer.gatherResults([factory.lost, reading])
    both.addBoth(lambda result: port.stopListening().addCallback(lambda _: result))
    return both


@pytest_twisted.inlineCallbacks
def test_plain_twisted_closes_on_a_later_turn():
    events, _ = yield _eofExchange(install=False)
    assert events[:4] == ["eof", "returned", "next turn", "lost"]


@pytest_twisted.inlineCallbacks
def test_close_at_eof_closes_once_the_protocol_has_returned():
    events, got = yield _eofExchange(last=b"bye")
    assert events[:3] == ["eof", "returned", "lost"]  # not inside readConnectionLost, and before the next turn
    assert got == 3


@pytest_twisted.inlineCallbacks
def test_close_at_eof_leaves_queued_data_to_twisted():
    big = b"x" * (8 << 20)  # more than the socket buffers take at once: some of it is queued
    events, got = yield _eofExchange(last=big)
    assert got == len(big)  # nothing lost
    assert events.index("next turn") < events.index("lost")


@pytest_twisted.inlineCallbacks
def test_close_at_eof_leaves_a_registered_producer_to_twisted():
    events, _ = yield _eofExchange(producer=True)
    assert events[:4] == ["eof", "returned", "next turn", "lost"]


def _sockdPort(wrapped: Any, admission: Admission | None = None) -> tuple[Any, ConnectionRegistry]:
    registry = ConnectionRegistry(reactor)
    settings = Settings(max_connections=0, max_per_source=0, connection_rate=0.0, exempt=[])
    factory = PolicyFactory(wrapped, serviceName="perf-test", transportName="tcp",
                            admission=admission or Admission(settings, time.time), registry=registry,
                            clock=reactor, idleTimeout=120.0)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    assert installSendAtOnce(port)
    return port, registry


@pytest_twisted.inlineCallbacks
def test_half_close_with_a_partial_message_is_answered_then_closed_through_sockd():
    port, registry = _sockdPort(AckFactory(reactor, MessageLog("ack", False)))
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.sendall(b"one\npartial")
        client.shutdown(socket.SHUT_WR)
        client.setblocking(False)
        received = b""
        for _ in range(200):
            yield task.deferLater(reactor, 0.01, lambda: None)
            try:
                chunk = client.recv(100)
            except BlockingIOError:
                continue
            if not chunk:
                break
            received += chunk
        client.close()
        assert received == ANSWER * 2
        assert registry.connections == set()
    finally:
        yield port.stopListening()


def test_close_at_eof_is_left_off_for_a_transport_that_closes_differently():
    class Different(tcp.Server):
        def _postLoseConnection(self) -> Any:
            return None

    assert sendAtOnceClass(tcp.Server).closeAtEOF is True
    different = sendAtOnceClass(Different)
    assert different is not None and different.closeAtEOF is False


# -- the read pauser, registered when a write first queues ------------------------------------------------------


class _Port:
    _realPortNumber = 1


def _realTransport() -> tuple[Any, socket.socket]:
    mine, peer = socket.socketpair()
    cls = sendAtOnceClass(tcp.Server)
    transport = cls(mine, Protocol(), ("127.0.0.1", 40000), _Port(), 1, MemoryReactor())
    transport.protocol.makeConnection(transport)
    return transport, peer


def test_read_pauser_waits_for_the_first_queued_write():
    transport, peer = _realTransport()
    try:
        pauseReadingWhileBlocked(transport)
        assert transport.producer is None
        transport.write(b"sent at once")
        assert transport.producer is None
        transport.write(b"x" * (16 << 20))  # the peer reads nothing: most of it is queued
        assert isinstance(transport.producer, ReadPauser) and transport.streamingProducer
        assert transport.producerPaused  # over the buffer size: reading paused, as with an eager pauser
        transport.loseConnection()
        assert transport.producer is None  # it would hold the close
    finally:
        peer.close()


def test_a_producer_of_the_protocols_own_replaces_the_waiting_pauser():
    transport, peer = _realTransport()
    try:
        pauseReadingWhileBlocked(transport)
        mine = ReadPauser(transport)
        transport.registerProducer(mine, True)
        assert transport.producer is mine
        transport.write(b"x" * (16 << 20))
        assert transport.producer is mine
        with pytest.raises(RuntimeError):
            pauseReadingWhileBlocked(transport)  # as registerProducer always refused a second producer
    finally:
        transport.unregisterProducer()
        peer.close()


@pytest_twisted.inlineCallbacks
def test_policy_layer_defers_the_pauser_to_sockds_transport():
    port, registry = _sockdPort(EchoFactory())
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.sendall(b"echo me")
        for _ in range(200):
            yield task.deferLater(reactor, 0.01, lambda: None)
            if registry.connections:
                break
        (policy,) = registry.connections
        assert isinstance(policy.transport, SendAtOnce)
        assert policy.transport.producer is None
        assert policy.transport._readPausing is True
        client.settimeout(5)
        assert client.recv(100) == b"echo me"
        client.close()
    finally:
        yield port.stopListening()


def test_policy_layer_registers_the_pauser_at_once_on_other_transports():
    proto, transport = _connect(AckFactory(task.Clock(), MessageLog("ack", False)))
    assert isinstance(transport.producer, ReadPauser) and transport.streaming


# -- policy layer: declarations and log prefix ------------------------------------------------------------------


def _connect(wrapped: Any, transport: StringTransport | None = None) -> tuple[PolicyProtocol, StringTransport]:
    settings = Settings(max_connections=0, max_per_source=0, connection_rate=0.0, exempt=[])
    clock = task.Clock()
    factory = PolicyFactory(wrapped, serviceName="perf-test", transportName="tcp",
                            admission=Admission(settings, clock.seconds),
                            registry=ConnectionRegistry(clock), clock=clock)
    addr = IPv4Address("TCP", "192.0.2.1", 40000)
    proto = factory.buildProtocol(addr)
    assert proto is not None
    transport = transport or StringTransportWithDisconnection(peerAddress=addr)
    transport.protocol = proto  # type: ignore[attr-defined]
    proto.makeConnection(transport)
    return proto, transport


@implementer(ISSLTransport)
class SSLLikeTransport(StringTransportWithDisconnection):
    pass


def test_policy_protocol_provides_what_each_transport_provides():
    for _ in range(2):  # the second time from the cache
        plain, _ = _connect(EchoFactory())
        tls, _ = _connect(EchoFactory(), SSLLikeTransport())
        assert not ISSLTransport.providedBy(plain) and ISSLTransport.providedBy(tls)
        assert ITCPTransport.providedBy(plain) == ITCPTransport.providedBy(StringTransport())
        assert IHalfCloseableProtocol.providedBy(plain) and IHalfCloseableProtocol.providedBy(tls)


def test_policy_protocol_log_prefix_is_protocol_wrappers():
    class Named(Protocol):
        def logPrefix(self) -> str:
            return "custom"

    proto, _ = _connect(EchoFactory())
    assert proto.logPrefix() == proto.logPrefix() == "EchoProtocol (PolicyProtocol)"
    named, _ = _connect(Factory.forProtocol(Named))
    assert named.logPrefix() == "custom (PolicyProtocol)"


# -- admission verdicts -----------------------------------------------------------------------------------------


def test_admission_verdict_cache_follows_reconfiguration_and_mapped_addresses():
    admission = Admission(Settings(max_connections=0, max_per_source=2, connection_rate=0.0, exempt=[]), time.time)
    assert admission.admit("192.0.2.1") is None
    assert admission.admit("::ffff:192.0.2.1") is None  # the same source
    assert admission.admit("192.0.2.1") == "per-source"
    admission.reconfigure(Settings(max_connections=0, max_per_source=2, connection_rate=0.0, exempt=[],
                                   deny=["192.0.2.0/24"]))
    assert admission.admit("192.0.2.1") == "access"  # the new rules, not a cached verdict
    admission.release("::ffff:192.0.2.1")
    admission.release("192.0.2.1")
    assert admission.perSource == {} and admission.total == 0


# -- ack: the peer is asked only to be logged -------------------------------------------------------------------


class CountingTransport(StringTransport):
    asked = 0

    def getPeer(self) -> Any:
        self.asked += 1
        return super().getPeer()


@pytest.mark.parametrize("logging", [False, True])
def test_ack_asks_the_peer_only_when_logging_and_once(logging: bool):
    factory = AckFactory(task.Clock(), MessageLog("ack", logging))
    proto = factory.buildProtocol(None)
    transport = CountingTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000))
    proto.makeConnection(transport)
    with capturedLogs() as events:
        proto.dataReceived(b"a\nb\n")
    assert transport.value() == ANSWER * 2
    assert transport.asked == (1 if logging else 0)
    assert [e["peer"] for e in events if e.get("log_namespace") == "sockd.messages"] == (
        ["192.0.2.7:4000"] * 2 if logging else [])


# -- the lean message event -------------------------------------------------------------------------------------


def test_message_event_is_what_logger_info_emits():
    peer = IPv4Address("TCP", "192.0.2.1", 5)
    with capturedLogs() as fast:
        MessageLog("ack").stream(b"hi\r\n", peer)
        MessageLog("ack").datagram(b"d\x1b", ("192.0.2.2", 6))
    reference = Logger(namespace="sockd.messages")
    with capturedLogs() as slow:
        reference.info("Here is the message: {message}", message="hi", service="ack", transport="stream",
                       peer="192.0.2.1:5", bytes=4)
        reference.info("Received a datagram: {message}", message="d\\x1b", service="ack", transport="udp",
                       peer="192.0.2.2:6", bytes=2)
    assert len(fast) == len(slow) == 2
    for mine, theirs in zip(fast, slow, strict=True):
        assert mine.keys() == theirs.keys()
        for key in theirs:
            if key not in ("log_time", "log_logger"):
                assert mine[key] == theirs[key], key
        assert mine["log_logger"].namespace == "sockd.messages"
        assert isinstance(mine["log_time"], float)
        assert formatEventAsClassicLogText(mine) == formatEventAsClassicLogText(theirs)


# -- the classic text observer ----------------------------------------------------------------------------------


def _events() -> list[dict[str, Any]]:
    now = time.time()
    base = {"log_level": LogLevel.info, "log_namespace": "sockd.messages", "log_time": now}
    return [
        {**base, "log_format": "Here is the message: {message}", "message": "hi"},
        {**base, "log_format": "idle for {seconds:g}s {peer!r}", "seconds": 10.0, "peer": "x"},
        {**base, "log_format": "two\nlines {a}", "a": "and\nthree"},
        {**base, "log_format": "missing {nothere}"},
        {**base, "log_format": "call {f()}", "f": lambda: "called"},
        {**base, "log_format": "attr {o.real}", "o": 3},
        {**base, "log_format": "system", "log_system": "custom"},
        {**base, "log_format": b"bytes {a}", "a": 1},
        {**base, "log_format": ""},
        {**base, "log_format": "no time", "log_time": None},
        {**base, "log_format": "level-less", "log_level": None},
        {"log_format": "bare"},
        {**base, "log_format": "failed", "log_failure": Failure(ValueError("boom"))},
        {**base, "log_format": "int time", "log_time": int(now)},
        {**base, "log_format": "{{literal}} {a}", "a": "b"},
    ]


def test_classic_text_writes_twisteds_own_lines():
    fast = ClassicText()
    for event in _events():
        assert fast(event) == formatEventAsClassicLogText(event, formatTime=formatTime), event


def test_classic_text_stamp_changes_with_the_second_and_the_format():
    fast = ClassicText()
    base = {"log_level": LogLevel.info, "log_namespace": "n", "log_format": "x"}
    for when in (1_700_000_000.2, 1_700_000_000.9, 1_700_000_001.0, 1_699_999_999.5, 1_700_000_001.99):
        event = {**base, "log_time": when}
        assert fast(event) == formatEventAsClassicLogText(event), when
    subsecond = ClassicText("%H:%M:%S.%f")
    event = {**base, "log_time": 1_700_000_000.25}
    assert subsecond(event) == formatEventAsClassicLogText(event, formatTime=lambda t: formatTime(t, "%H:%M:%S.%f"))


def test_text_logger_is_a_zero_argument_factory_writing_message_lines():
    stream = io.StringIO()
    observer = textLogger(stream)
    globalLogPublisher.addObserver(observer)
    try:
        MessageLog("ack").stream(b"hello\n", IPv4Address("TCP", "192.0.2.1", 5))
    finally:
        globalLogPublisher.removeObserver(observer)
    (line,) = stream.getvalue().splitlines()
    assert line.endswith(" [sockd.messages#info] Here is the message: hello")
    assert callable(textLogger) and textLogger.__code__.co_argcount == 1 and textLogger.__defaults__ == (None,)


class _Socket:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list = []
        self.fail = fail

    def sendto(self, data: bytes, addr: object) -> int:
        if self.fail:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        self.sent.append((data, addr))
        return len(data)


class _DatagramTransport:
    def __init__(self, sock: _Socket) -> None:
        self.sock = sock
        self.written: list = []

    def getHandle(self) -> _Socket:
        return self.sock

    def write(self, data: bytes, addr: object = None) -> None:
        self.written.append((data, addr))


def test_datagram_answers_go_straight_to_the_socket_and_fall_back_on_errors() -> None:
    """Answers skip Twisted's address re-validation; an error is left to Twisted's write to handle."""
    import time

    from sockd.config.settings import Settings
    from sockd.defences.datagram import DatagramPolicy, GuardedDatagramProtocol
    from sockd.protocols.echo import EchoDatagramProtocol

    for fail in (False, True):
        sock = _Socket(fail)
        transport = _DatagramTransport(sock)
        guarded = GuardedDatagramProtocol(EchoDatagramProtocol(), DatagramPolicy(Settings(), time.time, ()),
                                          f"fastpath-{fail}")
        guarded.makeConnection(transport)
        guarded.datagramReceived(b"ping", ("127.0.0.1", 40000))
        if fail:
            assert sock.sent == [] and transport.written == [(b"ping", ("127.0.0.1", 40000))]
        else:
            assert sock.sent == [(b"ping", ("127.0.0.1", 40000))] and transport.written == []
        assert guarded.stats.answers == 1 and guarded.stats.bytesOut == 4
