"""Services that answer once: speak on connect and close, or answer any datagram.

Daytime, Time and QOTD differ only in what they say, so each supplies a
zero-argument callable that returns the answer's bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

Answer = Callable[[], bytes]


class SpeakFirstProtocol(Protocol):
    """Send the factory's answer as soon as the connection opens, then close."""

    factory: SpeakFirstFactory

    def connectionMade(self) -> None:
        self.transport.write(self.factory.answer())
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """Anything the peer sends is ignored: these services only speak."""


class SpeakFirstFactory(Factory):
    noisy = False
    protocol = SpeakFirstProtocol

    def __init__(self, answer: Answer) -> None:
        self.answer = answer


class AnswerDatagramProtocol(DatagramProtocol):
    """Answer any datagram, whatever it holds, with a fresh answer."""

    noisy = False
    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(self.answer(), addr)
