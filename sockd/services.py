"""The table of services: each described once, by what it builds and where it listens.

Adding a service is one entry here: its stream factory, its datagram protocol
(or None), its default listeners, and whether it speaks first (which matters
to wrappers that must know the real peer before the service says anything).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.internet.protocol import DatagramProtocol

from sockd.config.settings import Settings
from sockd.observe.log.messages import EVENTS, MessageLog, MessageLogging
from sockd.protocols.ack import AckDatagramProtocol, AckFactory
from sockd.protocols.chargen import ChargenDatagramProtocol, ChargenFactory
from sockd.protocols.discard import DiscardDatagramProtocol, DiscardFactory
from sockd.protocols.echo import EchoDatagramProtocol, EchoFactory
from sockd.protocols.qotd import QuotePicker, builtinQuotes
from sockd.protocols.speakfirst import AnswerDatagramProtocol, SpeakFirstFactory
from sockd.protocols.timeservices import clockAnswer, daytimeLine, timeBytes


@dataclass
class Context:
    """What the builders need: the settings, a clock, the shared quote list and how messages are logged."""

    settings: Settings
    clock: IReactorTime
    quotes: QuotePicker = field(default_factory=lambda: QuotePicker(builtinQuotes()))
    now: Callable[[], float] = time.time
    logging: MessageLogging = EVENTS

    def messageLog(self, service: str) -> MessageLog:
        """The per-message log of one service, on or off as the settings say."""
        return MessageLog(service, self.settings.log_messages, self.logging)


@dataclass(frozen=True)
class ServiceSpec:
    """One row of the service table: how to build the service for streams and datagrams, and where it listens."""

    name: str
    summary: str
    stream: Callable[[Context], IProtocolFactory]
    datagram: Callable[[Context], DatagramProtocol] | None
    defaults: tuple[str, ...]
    speaksFirst: bool = False


def _ackStream(c: Context) -> IProtocolFactory:
    s = c.settings
    return AckFactory(c.clock, c.messageLog("ack"), s.max_message, s.quiet_time, s.ack_once)


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        "ack", "the tutorial's server: logs each message, answers 'I got your message'",
        _ackStream,
        lambda c: AckDatagramProtocol(c.messageLog("ack")),
        ("tcp:51717", "udp:51717", "unix:sockd.sock"),
    ),
    ServiceSpec(
        "echo", "RFC 862: returns every byte and datagram",
        lambda c: EchoFactory(), lambda c: EchoDatagramProtocol(),
        ("tcp:50007", "udp:50007"),
    ),
    ServiceSpec(
        "discard", "RFC 863: throws everything away",
        lambda c: DiscardFactory(), lambda c: DiscardDatagramProtocol(),
        ("tcp:50009", "udp:50009"),
    ),
    ServiceSpec(
        "daytime", "RFC 867: one ASCII date-time line",
        lambda c: SpeakFirstFactory(clockAnswer(daytimeLine, c.now), c.clock),
        lambda c: AnswerDatagramProtocol(clockAnswer(daytimeLine, c.now)),
        ("tcp:50013", "udp:50013"), speaksFirst=True,
    ),
    ServiceSpec(
        "qotd", "RFC 865: a quote under 512 bytes",
        lambda c: SpeakFirstFactory(c.quotes, c.clock), lambda c: AnswerDatagramProtocol(c.quotes),
        ("tcp:50017", "udp:50017"), speaksFirst=True,
    ),
    ServiceSpec(
        "chargen", "RFC 864: the rotating printable-ASCII pattern (UDP only when asked: it amplifies)",
        lambda c: ChargenFactory(), lambda c: ChargenDatagramProtocol(),
        ("tcp:50019",), speaksFirst=True,
    ),
    ServiceSpec(
        "time", "RFC 868: 32-bit seconds since 1900",
        lambda c: SpeakFirstFactory(clockAnswer(timeBytes, c.now), c.clock),
        lambda c: AnswerDatagramProtocol(clockAnswer(timeBytes, c.now)),
        ("tcp:50037", "udp:50037"), speaksFirst=True,
    ),
)

BY_NAME: dict[str, ServiceSpec] = {s.name: s for s in SERVICES}

#: The well-known ports of the UDP small services: answering datagrams from
#: them is how echo/chargen loops start (CERT CA-1996-01).
SMALL_SERVICE_PORTS = frozenset({7, 9, 13, 17, 19, 37})
