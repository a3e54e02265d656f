"""The tutorial's ack server (sockd/protocols/ack.py): framing, answers, timers, logging and flow control.

Everything runs on StringTransport and a Clock: no sockets, no global reactor.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport, StringTransport
from twisted.logger import capturedLogs, formatEvent, formatEventAsClassicLogText

from sockd.observe.log.messages import MessageLog
from sockd.protocols.ack import DATAGRAM_ANSWER, STREAM_ANSWER, AckDatagramProtocol, AckFactory, AckProtocol

ANSWER = b"I got your message"
PEER = IPv4Address("TCP", "192.0.2.10", 40000)


def makeAck(
    *, log: bool = False, maxLength: int = 255, quietTime: float = 0.1, closeAfterFirst: bool = False
) -> tuple[AckProtocol, StringTransport, Clock]:
    """An AckProtocol connected to a StringTransport, its timers on a Clock."""
    clock = Clock()
    factory = AckFactory(clock, MessageLog("ack", log), maxLength, quietTime, closeAfterFirst)
    proto = factory.buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    return proto, transport, clock


def answerCount(transport: StringTransport) -> int:
    """How many answers were written; fails unless the output is nothing but whole answers."""
    value = transport.value()
    count = len(value) // len(ANSWER)
    assert value == ANSWER * count, value
    return count


def messageTexts(events: list) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_namespace") == "sockd.messages"]


def test_answer_constants_are_the_tutorials_exact_bytes() -> None:
    assert STREAM_ANSWER == b"I got your message" and len(STREAM_ANSWER) == 18
    assert DATAGRAM_ANSWER == b"Got your message\n" and len(DATAGRAM_ANSWER) == 17


def test_one_line_gets_exactly_one_answer_without_newline() -> None:
    proto, transport, clock = makeAck()
    proto.dataReceived(b"hello\n")
    assert transport.value() == b"I got your message"
    assert not transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_no_answer_before_the_newline() -> None:
    proto, transport, _ = makeAck()
    proto.dataReceived(b"hello")
    assert transport.value() == b""
    proto.dataReceived(b" world\n")
    assert transport.value() == ANSWER


def test_254_bytes_plus_newline_is_one_message() -> None:
    proto, transport, clock = makeAck(log=True)
    with capturedLogs() as events:
        proto.dataReceived(b"x" * 254 + b"\n")
    assert transport.value() == ANSWER
    assert clock.getDelayedCalls() == []
    [event] = [e for e in events if e.get("log_namespace") == "sockd.messages"]
    assert event["message"] == "x" * 254
    assert event["bytes"] == 255


def test_255_bytes_then_newline_is_two_messages() -> None:
    """The 255-byte buffer fills first; the newline that follows is a message of its own."""
    proto, transport, _ = makeAck(log=True)
    with capturedLogs() as events:
        proto.dataReceived(b"y" * 255 + b"\n")
    assert answerCount(transport) == 2
    assert [e["bytes"] for e in events if e.get("log_namespace") == "sockd.messages"] == [255, 1]


def test_300_bytes_without_newline_answer_first_255_and_keep_the_rest() -> None:
    proto, transport, clock = makeAck(log=True)
    with capturedLogs() as events:
        proto.dataReceived(b"z" * 300)
        assert answerCount(transport) == 1
        # The remaining 45 bytes wait: they are answered only when the quiet timer fires.
        [call] = clock.getDelayedCalls()
        clock.advance(0.1)
    assert answerCount(transport) == 2
    assert [e["bytes"] for e in events if e.get("log_namespace") == "sockd.messages"] == [255, 45]


def test_custom_max_length() -> None:
    proto, transport, _ = makeAck(maxLength=4)
    proto.dataReceived(b"abcdefghij")  # abcd efgh | ij pending
    assert answerCount(transport) == 2
    proto.dataReceived(b"\n")  # ij\n
    assert answerCount(transport) == 3


def test_max_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AckFactory(Clock(), MessageLog("ack", False), maxLength=0)


def test_many_messages_in_one_read_get_one_answer_each() -> None:
    proto, transport, clock = makeAck()
    proto.dataReceived(b"a\nbb\n\nccc\n" + b"d\n" * 96)
    assert answerCount(transport) == 100
    assert clock.getDelayedCalls() == []


def test_message_split_over_many_reads_gets_one_answer() -> None:
    proto, transport, _ = makeAck()
    for byte in b"hello, world":
        proto.dataReceived(bytes([byte]))
        assert transport.value() == b""
    proto.dataReceived(b"\n")
    assert transport.value() == ANSWER


def test_half_close_with_pending_bytes_answers_then_closes() -> None:
    proto, transport, _ = makeAck()
    assert IHalfCloseableProtocol.providedBy(proto)
    proto.dataReceived(b"no newline")
    assert transport.value() == b""
    proto.readConnectionLost()
    assert transport.value() == ANSWER
    assert transport.disconnecting


def test_half_close_without_pending_bytes_closes_without_answer() -> None:
    proto, transport, clock = makeAck()
    proto.dataReceived(b"done\n")
    proto.readConnectionLost()
    assert transport.value() == ANSWER
    assert transport.disconnecting
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("quietTime", [0.1, 0.5, 2.0])
def test_partial_message_is_answered_after_exactly_quiet_time(quietTime: float) -> None:
    proto, transport, clock = makeAck(quietTime=quietTime)
    proto.dataReceived(b"254 bytes and waiting")
    [call] = clock.getDelayedCalls()
    assert call.getTime() == quietTime
    clock.advance(quietTime - 1e-6)
    assert transport.value() == b""
    clock.advance(quietTime - clock.seconds())  # lands exactly on quietTime
    assert clock.seconds() == quietTime
    assert transport.value() == ANSWER
    assert clock.getDelayedCalls() == []
    assert not transport.disconnecting


def test_new_bytes_rearm_the_quiet_timer() -> None:
    proto, transport, clock = makeAck(log=True, quietTime=0.5)
    with capturedLogs() as events:
        proto.dataReceived(b"abc")
        clock.advance(0.25)
        proto.dataReceived(b"d")  # re-armed: now due at 0.75
        clock.advance(0.25)
        assert transport.value() == b""
        assert [c.getTime() for c in clock.getDelayedCalls()] == [0.75]
        clock.advance(0.25)
    assert transport.value() == ANSWER
    assert messageTexts(events) == ["Here is the message: abcd"]


def test_completed_message_cancels_the_quiet_timer() -> None:
    proto, transport, clock = makeAck()
    proto.dataReceived(b"abc")
    assert len(clock.getDelayedCalls()) == 1
    proto.dataReceived(b"\n")
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert transport.value() == ANSWER


def test_quiet_timer_armed_for_the_remainder_after_complete_messages() -> None:
    proto, transport, clock = makeAck()
    proto.dataReceived(b"one\ntw")
    assert answerCount(transport) == 1
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.1)
    assert answerCount(transport) == 2


def test_connection_lost_cancels_timer_and_drops_pending() -> None:
    proto, transport, clock = makeAck()
    proto.dataReceived(b"partial")
    proto.connectionLost(None)
    assert clock.getDelayedCalls() == []
    clock.advance(1)
    assert transport.value() == b""


def test_close_after_first_answers_once_and_closes() -> None:
    proto, transport, clock = makeAck(closeAfterFirst=True)
    proto.dataReceived(b"one\ntwo\nthree")
    assert transport.value() == ANSWER
    assert transport.disconnecting
    assert clock.getDelayedCalls() == []


def test_close_after_first_with_a_quiet_partial_message() -> None:
    proto, transport, clock = makeAck(closeAfterFirst=True)
    proto.dataReceived(b"no newline")
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.value() == ANSWER
    assert transport.disconnecting


def test_close_after_first_ignores_data_after_closing() -> None:
    """A transport may deliver more data after loseConnection (TLS delivers every record already read)."""
    proto, transport, clock = makeAck(closeAfterFirst=True)
    proto.dataReceived(b"one\n")
    assert transport.disconnecting
    proto.dataReceived(b"two\n")
    proto.dataReceived(b"three")
    clock.advance(1)
    assert transport.value() == ANSWER
    assert clock.getDelayedCalls() == []


def tlsPair(factory: AckFactory, clock: Clock) -> tuple[object, object, object]:
    """An in-memory TLS connection to C{factory}: (pump, client protocol, server's fake TCP transport)."""
    import twisted.test
    from twisted.internet import ssl
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.test import iosim

    with open(os.path.join(os.path.dirname(twisted.test.__file__), "server.pem"), "rb") as f:
        certificate = ssl.PrivateCertificate.loadPEM(f.read())

    class Client(Protocol):
        received = b""
        lost = False

        def dataReceived(self, data: bytes) -> None:
            self.received += data

        def connectionLost(self, reason: object = None) -> None:
            self.lost = True

    client = Client()
    server = TLSMemoryBIOFactory(certificate.options(), False, factory, clock).buildProtocol(None)
    clientTLS = TLSMemoryBIOFactory(
        ssl.CertificateOptions(verify=False), True, Factory.forProtocol(lambda: client), clock
    ).buildProtocol(None)
    serverTransport = iosim.FakeTransport(server, False)
    pump = iosim.connect(server, serverTransport, clientTLS, iosim.FakeTransport(clientTLS, True), clock=clock)
    return pump, client, serverTransport


def test_close_unregisters_the_producer_first() -> None:
    """ITransport.loseConnection: 'if there is a registered producer ... it will not be closed until the
    producer has been unregistered'.  TLS transports (ssl:, tls:) honour that and never close."""
    proto, transport, _ = makeAck(closeAfterFirst=True)
    proto.dataReceived(b"one\n")
    assert transport.disconnecting
    assert transport.producer is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_close_after_first_over_tls_closes_the_connection() -> None:
    clock = Clock()
    pump, client, serverTransport = tlsPair(AckFactory(clock, MessageLog("ack", False), closeAfterFirst=True), clock)
    client.transport.write(b"one\n")  # type: ignore[attr-defined]
    for _ in range(20):
        pump.pump()  # type: ignore[attr-defined]
    assert client.received == ANSWER  # type: ignore[attr-defined]
    assert serverTransport.disconnecting  # type: ignore[attr-defined]
    assert client.lost  # type: ignore[attr-defined]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_close_after_first_over_tls_answers_once() -> None:
    """Two TLS records arriving in one TCP read: the ack-once server must still answer only once."""
    clock = Clock()
    pump, client, _ = tlsPair(AckFactory(clock, MessageLog("ack", False), closeAfterFirst=True), clock)
    for _ in range(5):
        pump.pump()  # type: ignore[attr-defined]
    client.transport.write(b"one\n")  # type: ignore[attr-defined]
    clock.advance(0)  # flushed as its own TLS record
    client.transport.write(b"two\n")  # type: ignore[attr-defined]
    clock.advance(0)
    for _ in range(20):
        pump.pump()  # type: ignore[attr-defined]
    assert client.received == ANSWER  # type: ignore[attr-defined]


def test_a_unix_peer_is_logged_as_transport_unix() -> None:
    """One name per field across logs and metrics: a Unix-socket peer is C{unix}, as its metrics say."""
    from twisted.internet.address import UNIXAddress

    factory = AckFactory(Clock(), MessageLog("ack", True), 255, 0.1, False)
    proto = factory.buildProtocol(UNIXAddress(b"/run/sockd/ack.sock"))
    proto.makeConnection(StringTransport(peerAddress=UNIXAddress(b"/run/sockd/ack.sock")))
    with capturedLogs() as events:
        proto.dataReceived(b"hello\n")
    event = next(e for e in events if e.get("log_namespace") == "sockd.messages")
    assert (event["transport"], event["peer"]) == ("unix", "/run/sockd/ack.sock")


def test_log_line_is_the_tutorials_without_line_end() -> None:
    proto, _, _ = makeAck(log=True)
    with capturedLogs() as events:
        proto.dataReceived(b"hello\r\n")
        proto.dataReceived(b"bye\n")
    assert messageTexts(events) == ["Here is the message: hello", "Here is the message: bye"]
    event = next(e for e in events if e.get("log_namespace") == "sockd.messages")
    assert event["service"] == "ack"
    assert event["transport"] == "tcp"
    assert event["peer"] == "192.0.2.10:40000"
    assert event["bytes"] == 7


def test_client_cannot_forge_log_lines() -> None:
    proto, transport, clock = makeAck(log=True)
    with capturedLogs() as events:
        proto.dataReceived(b"a\nFAKE LOG LINE")
        clock.advance(0.1)
        proto.dataReceived(b"b\rFAKE\x1b[2J\x85\xe2\x80\xa8X\n")
        proto.readConnectionLost()
    assert answerCount(transport) == 3
    texts = messageTexts(events)
    assert texts == [
        "Here is the message: a",
        "Here is the message: FAKE LOG LINE",
        "Here is the message: b\\rFAKE\\x1b[2J\\x85\\u2028X",
    ]
    for event in events:
        text = formatEvent(event)
        assert "\n" not in text and "\r" not in text and "\x1b" not in text
        assert len(text.splitlines()) <= 1
        classic = formatEventAsClassicLogText(event)
        assert classic.count("\n") == 1 and classic.endswith("\n")


def test_message_logging_disabled_logs_nothing() -> None:
    proto, transport, clock = makeAck(log=False)
    with capturedLogs() as events:
        proto.dataReceived(b"one\ntwo")
        clock.advance(0.1)
    assert answerCount(transport) == 2
    assert [e for e in events if e.get("log_namespace") == "sockd.messages"] == []


def test_flow_control_registers_a_streaming_producer_that_pauses_reading() -> None:
    proto, transport, _ = makeAck()
    assert transport.producer is not None
    assert transport.streaming is True
    transport.producer.pauseProducing()
    assert transport.producerState == "paused"
    transport.producer.resumeProducing()
    assert transport.producerState == "producing"
    transport.producer.stopProducing()  # does nothing: the transport takes reading away itself
    assert transport.producerState == "producing"


# -- datagrams ---------------------------------------------------------------------------------------------------


def makeDatagram(log: bool = False) -> tuple[AckDatagramProtocol, FakeDatagramTransport]:
    proto = AckDatagramProtocol(MessageLog("ack", log))
    transport = FakeDatagramTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_datagram_answered_to_its_sender() -> None:
    proto, transport = makeDatagram()
    proto.datagramReceived(b"hello", ("127.0.0.1", 40001))
    proto.datagramReceived(b"again\n", ("::1", 40002, 0, 0))
    assert transport.written == [
        (b"Got your message\n", ("127.0.0.1", 40001)),
        (b"Got your message\n", ("::1", 40002, 0, 0)),
    ]


def test_datagram_log_line() -> None:
    proto, _ = makeDatagram(log=True)
    with capturedLogs() as events:
        proto.datagramReceived(b"hello\n", ("127.0.0.1", 40001))
        proto.datagramReceived(b"line1\nline2", ("127.0.0.1", 40001))
    assert messageTexts(events) == ["Received a datagram: hello", "Received a datagram: line1\\nline2"]
    event = next(e for e in events if e.get("log_namespace") == "sockd.messages")
    assert event["transport"] == "udp" and event["bytes"] == 6 and event["service"] == "ack"
    assert event["peer"] == "127.0.0.1:40001"


def test_large_and_empty_datagrams() -> None:
    proto, transport = makeDatagram(log=True)
    with capturedLogs() as events:
        proto.datagramReceived(b"\xff" * 65507, ("127.0.0.1", 40001))
        proto.datagramReceived(b"", ("127.0.0.1", 40001))
    assert transport.written == [(DATAGRAM_ANSWER, ("127.0.0.1", 40001))] * 2
    logged = [e for e in events if e.get("log_namespace") == "sockd.messages"]
    assert [e["bytes"] for e in logged] == [65507, 0]
    assert logged[0]["message"] == "\\xff" * 65507


def test_datagram_logging_disabled() -> None:
    proto, transport = makeDatagram(log=False)
    with capturedLogs() as events:
        proto.datagramReceived(b"x", ("127.0.0.1", 40001))
    assert len(transport.written) == 1
    assert [e for e in events if e.get("log_namespace") == "sockd.messages"] == []
