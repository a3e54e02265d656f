"""Faults on purpose, unit by unit: option parsing, and the wrappers' exact bytes and timing on a Clock."""

from __future__ import annotations

import math
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sockd.config.descriptions import DescriptionError, ListenSpec
from sockd.config.faults import DEFAULT_HOLD, parseFaults
from sockd.faults.datagram import FaultDatagramProtocol
from sockd.faults.events import FaultEvents
from sockd.faults.stream import FaultFactory
from sockd.observe.metrics import Metrics
from sockd.protocols.echo import EchoFactory


def test_fault_options_leave_the_endpoint_and_make_a_faults_record() -> None:
    spec = ListenSpec.parse("echo", "tcp:50107:interface=127.0.0.1:delay=100ms:jitter=20ms")
    assert spec.endpoint == "tcp:50107:interface=127.0.0.1"
    assert spec.faults is not None and spec.faults.delay == 0.1 and spec.faults.jitter == 0.02
    assert spec.faults.text == "delay=100ms jitter=20ms"
    assert spec.identity == ListenSpec.parse("echo", "tcp:50107:interface=127.0.0.1")
    assert spec != spec.identity and str(spec) == "tcp:50107:interface=127.0.0.1:delay=100ms:jitter=20ms"
    udp = ListenSpec.parse("echo", "udp:0:interface=::1:loss=5%:duplicate=0.01:seed=7")
    assert udp.datagram is not None and udp.datagram.interface == "::1"
    assert udp.faults is not None and (udp.faults.loss, udp.faults.duplicate, udp.faults.seed) == (0.05, 0.01, 7)
    assert ListenSpec.parse("echo", "tcp:0").faults is None
    faults = parseFaults({"stall": "forever", "hold": "64k", "rate": "2Ki/s"}, "tcp")
    assert faults is not None and faults.stall == math.inf and faults.hold == 64000 and faults.rate == 2048
    assert parseFaults({"mode": "600"}, "unix") is None


@pytest.mark.parametrize(("description", "words"), [
    ("udp:0:rate=10", "rate= is for stream listeners"),
    ("tcp:0:loss=5%", "loss= is for udp listeners"),
    ("tcp:0:delay=5", "a duration is a number with a unit"),
    ("udp:0:loss=120%", "between 0% and 100%"),
    ("unix:/tmp/x.sock:reset-after=3", "reset-after= is for plain TCP"),
    ("tcp:0:distribution=pareto", "uniform or normal"),
    ("tcp:0:seed=x", "a seed is a whole number"),
    ("tcp:0:hold=0", "hold=0"),
])
def test_bad_fault_options_are_one_line_naming_them(description: str, words: str) -> None:
    with pytest.raises(DescriptionError, match=words) as caught:
        ListenSpec.parse("echo", description)
    assert description in str(caught.value) and "\n" not in str(caught.value)


def stream(options: dict[str, str], factory: Any = None) -> tuple[Any, StringTransport, Clock, Metrics]:
    """One impaired connection of echo (or C{factory}) on a StringTransport, with its clock and metrics."""
    faults = parseFaults(options, "tcp")
    assert faults is not None
    clock = Clock()
    metrics = Metrics(process=False)
    events = FaultEvents(faults, metrics.statsFor("echo", "tcp"), clock.seconds, "tcp:0")
    wrapper = FaultFactory(factory or EchoFactory(), events, clock)
    protocol = wrapper.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
    protocol.makeConnection(transport)
    return protocol, transport, clock, metrics


def test_delay_holds_each_answer_and_keeps_their_order() -> None:
    protocol, transport, clock, metrics = stream({"delay": "100ms"})
    protocol.dataReceived(b"one ")
    clock.advance(0.05)
    protocol.dataReceived(b"two")
    clock.advance(0.0499)
    assert transport.value() == b""
    clock.advance(0.0002)
    assert transport.value() == b"one "
    clock.advance(0.05)
    assert transport.value() == b"one two"
    assert metrics.statsFor("echo", "tcp").faults["delay"] == 2


def test_jitter_is_uniform_around_the_delay_and_never_reorders_a_stream() -> None:
    protocol, transport, clock, _ = stream({"delay": "100ms", "jitter": "50ms", "seed": "3"})
    rng = FaultEvents(protocol.faults, Metrics(process=False).statsFor("x", "tcp"), clock.seconds, "").rng(1)
    draws = [0.1 + rng.uniform(-0.05, 0.05) for _ in range(20)]
    for i in range(20):
        protocol.dataReceived(b"%02d" % i)
    sent = []
    for _ in range(200):
        clock.advance(0.001)
        sent.append((round(clock.seconds(), 3), transport.value()))
    assert transport.value() == b"".join(b"%02d" % i for i in range(20))  # in order, whatever the draws
    first = next(t for t, v in sent if v)
    assert first == pytest.approx(math.ceil(draws[0] * 1000) / 1000, abs=0.0011)


def test_slice_writes_pieces_slice_delay_apart() -> None:
    protocol, transport, clock, metrics = stream({"slice": "3", "slice-delay": "20ms"})
    protocol.dataReceived(b"I got your")
    assert transport.value() == b"I g"
    clock.advance(0.02)
    assert transport.value() == b"I got "
    clock.advance(0.04)
    assert transport.value() == b"I got your"
    assert metrics.statsFor("echo", "tcp").faults["slice"] == 1


def test_rate_caps_the_bytes_per_second() -> None:
    protocol, transport, clock, metrics = stream({"rate": "1000"})
    protocol.dataReceived(b"x" * 500)
    assert len(transport.value()) == 50  # a twentieth of a second's worth at once
    clock.advance(0.25)
    assert len(transport.value()) == 300
    clock.advance(0.25)
    assert len(transport.value()) == 500
    assert metrics.statsFor("echo", "tcp").faults["rate"] == 1


def test_corrupt_flips_exactly_one_bit_of_an_answer() -> None:
    protocol, transport, _, metrics = stream({"corrupt": "100%", "seed": "1"})
    protocol.dataReceived(b"\x00" * 16)
    got = transport.value()
    assert len(got) == 16 and sum(bin(b).count("1") for b in got) == 1
    assert metrics.statsFor("echo", "tcp").faults["corrupt"] == 1


def test_reset_after_sends_exactly_n_bytes_then_aborts() -> None:
    protocol, transport, _, metrics = stream({"reset-after": "5"})
    protocol.dataReceived(b"abc")
    protocol.dataReceived(b"defgh")
    protocol.dataReceived(b"ijk")
    assert transport.value() == b"abc" and not transport.disconnecting
    transport.producer.resumeProducing()  # a pull producer, asked at once: the last bytes go
    assert transport.value() == b"abcde" and not transport.disconnecting
    transport.producer.resumeProducing()  # asked again: the buffer is empty, so the reset follows
    assert transport.value() == b"abcde"
    assert transport.disconnecting  # StringTransport's abortConnection
    assert metrics.statsFor("echo", "tcp").faults["reset"] == 1


def test_stall_never_answers_and_keeps_the_connection_open_until_its_time() -> None:
    class Daytime(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(b"now\r\n")
            self.transport.loseConnection()

    protocol, transport, clock, metrics = stream({"stall": "5s"}, Factory.forProtocol(Daytime))
    assert transport.value() == b"" and not transport.disconnecting
    clock.advance(4.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting and transport.value() == b""
    assert metrics.statsFor("echo", "tcp").faults["stall"] == 2  # the answer, then the close


def test_a_close_waits_for_the_held_answers() -> None:
    class Once(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(b"bye")
            self.transport.loseConnection()

    protocol, transport, clock, _ = stream({"delay": "1s"}, Factory.forProtocol(Once))
    protocol.dataReceived(b"x")
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.value() == b"bye" and transport.disconnecting


def test_held_bytes_beyond_hold_pause_reading_until_they_leave() -> None:
    protocol, transport, clock, _ = stream({"delay": "1s", "hold": "1000"})
    protocol.dataReceived(b"x" * 600)
    assert transport.producerState == "producing"
    protocol.dataReceived(b"x" * 600)
    assert transport.producerState == "paused"  # 1200 held > 1000: no more reading
    clock.advance(1)
    assert transport.producerState == "producing" and len(transport.value()) == 1200


def test_the_peer_not_reading_pauses_reading_and_keeps_answers_here() -> None:
    protocol, transport, clock, _ = stream({"delay": "10ms"})
    transport.producer.pauseProducing()  # the transport's buffer is full
    assert transport.producerState == "paused"
    protocol.dataReceived(b"abc")
    clock.advance(0.02)
    assert transport.value() == b""
    transport.producer.resumeProducing()
    assert transport.value() == b"abc" and transport.producerState == "producing"


def test_a_service_writing_past_four_holds_is_aborted_and_counted() -> None:
    protocol, transport, _, metrics = stream({"delay": "1s", "hold": "100"})
    for _ in range(5):
        protocol.write(b"y" * 100)
    assert transport.disconnecting and metrics.statsFor("echo", "tcp").faults["overflow"] == 1


def test_shutdown_flushes_what_is_held() -> None:
    protocol, transport, _, _ = stream({"delay": "10s"})
    protocol.dataReceived(b"late")
    protocol.flushPending()
    assert transport.value() == b"late"


class Sent:
    """A datagram transport that keeps what was written."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def write(self, datagram: bytes, addr: Any = None) -> None:
        self.sent.append((datagram, addr))


class Echo(DatagramProtocol):
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(datagram, addr)


def datagrams(options: dict[str, str], verdict: Any = None) -> tuple[FaultDatagramProtocol, Sent, Clock, Metrics]:
    faults = parseFaults(options, "udp")
    assert faults is not None
    clock = Clock()
    metrics = Metrics(process=False)
    events = FaultEvents(faults, metrics.statsFor("echo", "udp"), clock.seconds, "udp:0")
    protocol = FaultDatagramProtocol(Echo(), events, clock, verdict or (lambda host, port: None))
    sent = Sent()
    protocol.makeConnection(sent)
    return protocol, sent, clock, metrics


PEER = ("127.0.0.1", 4000)


def test_a_seeded_loss_pattern_repeats_exactly() -> None:
    patterns = []
    for _ in range(2):
        protocol, sent, _, metrics = datagrams({"loss": "30%", "seed": "7"})
        for i in range(200):
            protocol.datagramReceived(b"%d" % i, PEER)
        patterns.append([d for d, _ in sent.sent])
        assert metrics.statsFor("echo", "udp").faults["loss"] == 200 - len(sent.sent)
    assert patterns[0] == patterns[1] and 100 < len(patterns[0]) < 180


def test_duplicates_pass_the_guard_when_sent_and_are_counted_when_refused() -> None:
    refuse = {"now": False}
    protocol, sent, _, metrics = datagrams({"duplicate": "100%"},
                                           verdict=lambda host, port: "budget" if refuse["now"] else None)
    protocol.datagramReceived(b"a", PEER)
    refuse["now"] = True
    protocol.datagramReceived(b"b", PEER)
    assert [d for d, _ in sent.sent] == [b"a", b"a", b"b"]
    faults = metrics.statsFor("echo", "udp").faults
    assert faults["duplicate"] == 2 and faults["budget"] == 1


def test_reorder_lets_the_next_answer_overtake_or_sends_after_the_wait() -> None:
    protocol, sent, clock, _ = datagrams({"reorder": "100%", "reorder-wait": "50ms"})
    protocol.datagramReceived(b"1", PEER)  # held back
    protocol.datagramReceived(b"2", PEER)  # one is held already: this one goes, and lets 1 out after it
    assert [d for d, _ in sent.sent] == [b"2", b"1"]
    protocol.datagramReceived(b"3", PEER)
    clock.advance(0.049)
    assert len(sent.sent) == 2
    clock.advance(0.002)
    assert [d for d, _ in sent.sent] == [b"2", b"1", b"3"]


def test_datagram_delay_and_the_hold_bound() -> None:
    protocol, sent, clock, metrics = datagrams({"delay": "100ms", "hold": "10"})
    protocol.datagramReceived(b"12345678", PEER)
    protocol.datagramReceived(b"12345678", PEER)  # 16 bytes would wait: over the bound, dropped
    clock.advance(0.1)
    assert sent.sent == [(b"12345678", PEER)]
    assert metrics.statsFor("echo", "udp").faults["overflow"] == 1


def test_stopping_sends_what_waits() -> None:
    protocol, sent, _, _ = datagrams({"delay": "5s"})
    protocol.datagramReceived(b"x", PEER)
    protocol.doStop()
    assert sent.sent == [(b"x", PEER)]


def test_the_default_hold_is_documented_size() -> None:
    assert DEFAULT_HOLD == 256 * 1024


def assemble(tmp_path: Any, listen: str) -> tuple[Any, Any]:
    from twisted.internet.testing import MemoryReactorClock

    from sockd.app import Assembly
    from sockd.tap import Options

    config = tmp_path / "sockd.toml"
    config.write_text(listen)
    options = Options()
    options.parseOptions(["--config", str(config)])
    return Assembly(options, MemoryReactorClock()), config


def test_a_listener_without_faults_has_no_wrapper_and_a_reload_adds_and_removes_one(tmp_path: Any) -> None:
    from sockd.defences.datagram import GuardedDatagramProtocol
    from sockd.defences.stream import PolicyFactory
    from sockd.protocols.echo import EchoDatagramProtocol

    assembly, config = assemble(tmp_path, '[listen]\necho = ["tcp:0", "udp:0"]\n')
    (streamRecord, datagramRecord) = assembly.running.values()
    stream, guard = streamRecord.policy, datagramRecord.policy
    assert isinstance(stream, PolicyFactory) and isinstance(guard, GuardedDatagramProtocol)
    assert type(stream.wrappedFactory) is EchoFactory and type(guard.inner) is EchoDatagramProtocol
    listeners = (streamRecord.listener, datagramRecord.listener)

    config.write_text('[listen]\necho = ["tcp:0:delay=100ms", "udp:0:loss=5%"]\n')
    assembly.reload()
    assert [str(spec) for spec in assembly.running] == ["tcp:0:delay=100ms", "udp:0:loss=5%"]
    assert tuple(r.listener for r in assembly.running.values()) == listeners  # the same listeners, not re-bound
    assert isinstance(stream.wrappedFactory, FaultFactory) and stream.wrappedFactory.events.faults.delay == 0.1
    assert isinstance(guard.inner, FaultDatagramProtocol) and guard.inner.faults.loss == 0.05

    config.write_text('[listen]\necho = ["tcp:0", "udp:0"]\n')
    assembly.reload()
    assert tuple(r.listener for r in assembly.running.values()) == listeners
    assert type(stream.wrappedFactory) is EchoFactory and type(guard.inner) is EchoDatagramProtocol
    assert assembly.metrics.reloads["ok"] == 2
