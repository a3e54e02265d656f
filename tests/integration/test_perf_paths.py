"""The fast paths of the hot code: each must behave exactly as the slow path it replaces.

A half-close through the policy layer on sockd's transport (the transports' own fast paths are in
test_core.py), the cached interface declaration and log prefix (policies.py), the admission
verdict cache (admission.py), the lazy peer (ack.py), the lean message event (observe/log/messages.py) and
the classic text observer (logging.py).
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol, ISSLTransport, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport, StringTransportWithDisconnection
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
from sockd.core.stream import TCPPort
from sockd.defences.admission import Admission
from sockd.defences.stream import ConnectionRegistry, PolicyFactory, PolicyProtocol
from sockd.observe.log.messages import MessageLog
from sockd.observe.log.observers import ClassicText, textLogger
from sockd.protocols.ack import AckFactory
from sockd.protocols.echo import EchoFactory
from sockd.protocols.flow import ReadPauser

ANSWER = b"I got your message"


def _sockdPort(wrapped: Any, admission: Admission | None = None) -> tuple[Any, ConnectionRegistry]:
    registry = ConnectionRegistry(reactor)
    settings = Settings(max_connections=0, max_per_source=0, connection_rate=0.0, exempt=[])
    factory = PolicyFactory(wrapped, serviceName="perf-test", transportName="tcp",
                            admission=admission or Admission(settings, time.time), registry=registry,
                            clock=reactor, idleTimeout=120.0)
    port = TCPPort(0, factory, 50, "127.0.0.1", reactor)  # sockd's own port, on whichever reactor runs
    port.startListening()
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
def test_ack_asks_the_peer_only_for_a_structured_message_event(logging: bool):
    """The transport stands for the peer: its address is asked for per event that shows it, never otherwise."""
    factory = AckFactory(task.Clock(), MessageLog("ack", logging))
    proto = factory.buildProtocol(None)
    transport = CountingTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 4000))
    proto.makeConnection(transport)
    with capturedLogs() as events:
        proto.dataReceived(b"a\nb\n")
    assert transport.value() == ANSWER * 2
    assert transport.asked == (2 if logging else 0)
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
        reference.info("Here is the message: {message}", message="hi", service="ack", transport="tcp",
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
