"""The inetd small services: echo (RFC 862), discard (863), chargen (864), qotd (865), daytime (867), time (868)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import FakeDatagramTransport, StringTransport

from sockd.protocols.chargen import CHUNK, ChargenDatagramProtocol, ChargenFactory, patternBytes, patternLine
from sockd.protocols.discard import DiscardDatagramProtocol, DiscardFactory
from sockd.protocols.echo import EchoDatagramProtocol, EchoFactory
from sockd.protocols.qotd import BUILTIN_QUOTES, QuoteError, QuotePicker, builtinQuotes, loadQuotes, parseQuotes
from sockd.protocols.speakfirst import AnswerDatagramProtocol, SpeakFirstFactory
from sockd.protocols.timeservices import clockAnswer, daytimeLine, timeBytes

ADDR = ("127.0.0.1", 40001)


def connectStream(factory):  # type: ignore[no-untyped-def]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def connectDatagram(proto):  # type: ignore[no-untyped-def]
    transport = FakeDatagramTransport()
    proto.makeConnection(transport)
    return transport


def referencePattern(length: int, firstLine: int = 0) -> bytes:
    """RFC 864 written out independently: line i is 72 printable characters starting at (i mod 95), then CR LF."""
    printable = [chr(c) for c in range(32, 127)]
    out = []
    size = 0
    line = firstLine
    while size < length:
        text = "".join(printable[(line + k) % 95] for k in range(72)) + "\r\n"
        out.append(text)
        size += 74
        line += 1
    return "".join(out).encode("ascii")[:length]


# -- echo ----------------------------------------------------------------------------------------------------------


def test_echo_returns_exactly_the_bytes_in_order() -> None:
    proto, transport = connectStream(EchoFactory())
    chunks = [b"hello\n", b"", b"\x00\xff\r\n", bytes(range(256)), b"x" * 70000]
    for chunk in chunks:
        proto.dataReceived(chunk)
    assert transport.value() == b"".join(chunks)
    assert not transport.disconnecting


def test_echo_pauses_reading_while_its_peer_does_not_read() -> None:
    _, transport = connectStream(EchoFactory())
    assert transport.streaming is True
    transport.producer.pauseProducing()
    assert transport.producerState == "paused"
    transport.producer.resumeProducing()
    assert transport.producerState == "producing"


def test_echo_datagram() -> None:
    proto = EchoDatagramProtocol()
    transport = connectDatagram(proto)
    proto.datagramReceived(b"ping\n", ADDR)
    proto.datagramReceived(b"", ("::1", 40002, 0, 0))
    proto.datagramReceived(b"\xab" * 65507, ADDR)
    assert transport.written == [(b"ping\n", ADDR), (b"", ("::1", 40002, 0, 0)), (b"\xab" * 65507, ADDR)]


# -- discard -------------------------------------------------------------------------------------------------------


def test_discard_answers_nothing_and_stays_open() -> None:
    proto, transport = connectStream(DiscardFactory())
    proto.dataReceived(b"anything\n" * 1000)
    assert transport.value() == b""
    assert not transport.disconnecting


def test_discard_datagram_answers_nothing() -> None:
    proto = DiscardDatagramProtocol()
    transport = connectDatagram(proto)
    proto.datagramReceived(b"anything", ADDR)
    assert transport.written == []


# -- chargen -------------------------------------------------------------------------------------------------------


def test_chargen_first_lines_literally() -> None:
    assert patternLine(0) == b""" !"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg\r\n"""
    assert patternLine(1) == b"""!"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefgh\r\n"""
    assert patternLine(2) == b""""#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghi\r\n"""
    assert all(len(patternLine(i)) == 74 for i in range(200))


def test_chargen_lines_wrap_and_repeat_after_95() -> None:
    assert patternLine(94) == b"~" + bytes(range(32, 32 + 71)) + b"\r\n"
    assert patternLine(95) == patternLine(0)
    assert patternLine(95 + 17) == patternLine(17)
    assert len({patternLine(i) for i in range(95)}) == 95


def test_chargen_pattern_bytes_match_reference_at_any_offset() -> None:
    reference = referencePattern(3 * 7030 + 600)
    for offset in (0, 1, 73, 74, 7029, 7030, 7031, 2 * 7030 + 5):
        assert patternBytes(offset, 512) == reference[offset : offset + 512]


def test_chargen_is_a_pull_producer_that_writes_only_when_asked() -> None:
    proto, transport = connectStream(ChargenFactory())
    assert transport.producer is proto
    assert transport.streaming is False
    assert transport.value() == b""
    proto.dataReceived(b"ignored input\n")
    assert transport.value() == b""
    proto.resumeProducing()
    assert len(transport.value()) == CHUNK
    proto.resumeProducing()
    proto.resumeProducing()
    # Across chunk boundaries the stream is exactly the endless pattern.
    assert transport.value() == referencePattern(3 * CHUNK)
    proto.stopProducing()


def test_chargen_stream_long_run_stays_exact() -> None:
    proto, transport = connectStream(ChargenFactory())
    for _ in range(12):  # more than one full period of the 7030-byte cycle many times over
        proto.resumeProducing()
    assert transport.value() == referencePattern(12 * CHUNK)


def test_chargen_datagram_seeded() -> None:
    proto = ChargenDatagramProtocol(random.Random(864))
    transport = connectDatagram(proto)
    sizes = random.Random(864)
    for n in range(300):
        proto.datagramReceived(b"" if n % 2 else b"any\n", ADDR)
    assert len(transport.written) == 300
    for n, (answer, addr) in enumerate(transport.written):
        assert addr == ADDR
        length = sizes.randint(0, 512)
        assert len(answer) == length
        # Each answer is the pattern from one line further than the previous answer.
        assert answer == referencePattern(length, firstLine=n % 95)
    assert max(len(a) for a, _ in transport.written) <= 512


# -- daytime and time ----------------------------------------------------------------------------------------------


def test_daytime_line_exact() -> None:
    assert daytimeLine(0) == b"Thursday, January 01, 1970 00:00:00-UTC\r\n"
    assert daytimeLine(1_000_000_000) == b"Sunday, September 09, 2001 01:46:40-UTC\r\n"
    assert daytimeLine(1_000_000_000.999) == b"Sunday, September 09, 2001 01:46:40-UTC\r\n"
    assert daytimeLine(2**31) == b"Tuesday, January 19, 2038 03:14:08-UTC\r\n"


def test_time_bytes_rfc868() -> None:
    assert timeBytes(0) == struct.pack("!I", 2208988800) == b"\x83\xaa\x7e\x80"
    assert timeBytes(-2208988800) == b"\x00\x00\x00\x00"  # 1900-01-01T00:00Z
    assert timeBytes(1_000_000_000.7) == struct.pack("!I", 3208988800)


def test_time_wraps_after_2036() -> None:
    rollover = 2085978496  # 2036-02-07T06:28:16Z: 2**32 seconds after 1900
    assert daytimeLine(rollover) == b"Thursday, February 07, 2036 06:28:16-UTC\r\n"
    assert timeBytes(rollover - 1) == b"\xff\xff\xff\xff"
    assert timeBytes(rollover) == b"\x00\x00\x00\x00"
    assert timeBytes(rollover + 1) == b"\x00\x00\x00\x01"
    assert timeBytes(rollover + 86400 * 365 * 100) == struct.pack("!I", 86400 * 365 * 100)


def test_daytime_stream_writes_then_closes() -> None:
    proto, transport = connectStream(SpeakFirstFactory(clockAnswer(daytimeLine, lambda: 0.0), Clock()))
    assert transport.value() == b"Thursday, January 01, 1970 00:00:00-UTC\r\n"
    assert transport.disconnecting
    proto.dataReceived(b"ignored")
    assert transport.value() == b"Thursday, January 01, 1970 00:00:00-UTC\r\n"


def test_time_stream_writes_four_bytes_then_closes() -> None:
    now = iter([0.0, 1.0])
    factory = SpeakFirstFactory(clockAnswer(timeBytes, lambda: next(now)), Clock())
    _, first = connectStream(factory)
    _, second = connectStream(factory)
    assert first.value() == struct.pack("!I", 2208988800) and first.disconnecting
    assert second.value() == struct.pack("!I", 2208988801) and second.disconnecting


def test_clock_datagrams_answer_any_datagram() -> None:
    daytime = AnswerDatagramProtocol(clockAnswer(daytimeLine, lambda: 0.0))
    time_ = AnswerDatagramProtocol(clockAnswer(timeBytes, lambda: 0.0))
    dt, tt = connectDatagram(daytime), connectDatagram(time_)
    for datagram in (b"", b"x", b"\x00" * 1000):
        daytime.datagramReceived(datagram, ADDR)
        time_.datagramReceived(datagram, ADDR)
    assert dt.written == [(b"Thursday, January 01, 1970 00:00:00-UTC\r\n", ADDR)] * 3
    assert tt.written == [(b"\x83\xaa\x7e\x80", ADDR)] * 3


# -- qotd ----------------------------------------------------------------------------------------------------------


def test_parse_quotes_percent_separated() -> None:
    text = "First quote.\n%\nSecond,\non two lines.\n%\n\n%\nThird. 100% true\n%"
    assert parseQuotes(text) == (b"First quote.\r\n", b"Second,\r\non two lines.\r\n", b"Third. 100% true\r\n")


def test_parse_quotes_blank_line_separated() -> None:
    text = "\nOne.\n\nTwo,\nstill two.\n   \n\n\nThree.\n"
    assert parseQuotes(text) == (b"One.\r\n", b"Two,\r\nstill two.\r\n", b"Three.\r\n")


def test_parse_quotes_crlf_file() -> None:
    assert parseQuotes("One.\r\n\r\nTwo,\r\nstill two.\r\n") == (b"One.\r\n", b"Two,\r\nstill two.\r\n")


def test_parse_quotes_percent_separated_crlf_file() -> None:
    assert parseQuotes("One.\r\n%\r\nTwo,\r\nstill two.\r\n%\r\n") == (b"One.\r\n", b"Two,\r\nstill two.\r\n")


def test_parse_quotes_utf8() -> None:
    assert parseQuotes("Caf\u00e9 \u2615\n") == ("Caf\u00e9 \u2615\r\n".encode(),)


def test_quote_of_511_bytes_is_accepted_and_512_refused_by_number() -> None:
    ok = "a" * 509  # 509 + CR LF = 511 bytes
    assert parseQuotes(f"short\n%\n{ok}\n") == (b"short\r\n", ok.encode() + b"\r\n")
    long = "b" * 510  # 512 bytes with CR LF
    with pytest.raises(QuoteError) as e:
        parseQuotes(f"short\n%\n{long}\n%\nlast\n", "quotes file /etc/q")
    assert str(e.value) == "quotes file /etc/q: quote 2 is 512 bytes; RFC 865 allows under 512"


def test_multibyte_quote_counted_in_bytes() -> None:
    with pytest.raises(QuoteError, match="quote 1 is 512 bytes"):
        parseQuotes("\u00e9" * 255)  # 510 bytes of UTF-8 + CR LF


def test_no_quotes_is_an_error() -> None:
    with pytest.raises(QuoteError, match="no quotes found"):
        parseQuotes("\n%\n  \n%\n")


def test_builtin_quotes_fit_rfc865() -> None:
    quotes = builtinQuotes()
    assert len(quotes) == len(BUILTIN_QUOTES) > 0
    for quote in quotes:
        assert len(quote) < 512
        assert quote.endswith(b"\r\n")
        assert b"\n" not in quote.replace(b"\r\n", b"")
        quote.decode("ascii")


def test_load_quotes(tmp_path: Path) -> None:
    path = tmp_path / "quotes"
    path.write_text("One.\n%\nTwo.\n", encoding="utf-8")
    assert loadQuotes(str(path)) == (b"One.\r\n", b"Two.\r\n")


def test_load_quotes_missing_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-quotes"
    with pytest.raises(QuoteError) as e:
        loadQuotes(str(missing))
    assert str(e.value) == f"quotes file {missing}: No such file or directory"


def test_load_quotes_not_utf8_names_it(tmp_path: Path) -> None:
    path = tmp_path / "latin1"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(QuoteError, match=f"quotes file {path}: .*utf-8"):
        loadQuotes(str(path))


def test_load_quotes_too_long_names_file_and_quote(tmp_path: Path) -> None:
    path = tmp_path / "long"
    path.write_text("ok\n\n" + "x" * 600 + "\n", encoding="utf-8")
    with pytest.raises(QuoteError) as e:
        loadQuotes(str(path))
    assert str(e.value) == f"quotes file {path}: quote 2 is 602 bytes; RFC 865 allows under 512"


def test_qotd_stream_and_datagram() -> None:
    quotes = builtinQuotes()
    picker = QuotePicker(quotes, random.Random(865))
    seen = set()
    for _ in range(50):
        _, transport = connectStream(SpeakFirstFactory(picker, Clock()))
        assert transport.value() in quotes
        assert transport.disconnecting
        seen.add(transport.value())
    assert len(seen) > 1  # a fresh choice each time
    proto = AnswerDatagramProtocol(picker)
    transport = connectDatagram(proto)
    proto.datagramReceived(b"", ADDR)
    [(answer, addr)] = transport.written
    assert answer in quotes and addr == ADDR


class HalfClosingTransport(StringTransport):
    """A StringTransport that can half-close, like a TCP or Unix transport."""

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


def test_speak_first_half_closes_and_waits_for_the_peer() -> None:
    """Closing with the peer's bytes unread would reset the connection and could destroy the answer."""
    clock = Clock()
    factory = SpeakFirstFactory(lambda: b"quote\r\n", clock, linger=2.0)
    proto = factory.buildProtocol(None)
    transport = HalfClosingTransport()
    proto.makeConnection(transport)
    assert transport.value() == b"quote\r\n"
    assert transport.writeClosed and not transport.disconnecting
    proto.dataReceived(b"the client's line\n")  # read and ignored
    proto.readConnectionLost()  # the peer closes: so do we
    assert transport.disconnecting
    assert not clock.getDelayedCalls()


def test_speak_first_closes_after_the_linger_if_the_peer_does_not() -> None:
    clock = Clock()
    proto = SpeakFirstFactory(lambda: b"x", clock, linger=2.0).buildProtocol(None)
    transport = HalfClosingTransport()
    proto.makeConnection(transport)
    clock.advance(1.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnecting
