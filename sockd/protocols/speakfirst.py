"""Services that answer once: speak on connect and close, or answer any datagram.

Daytime, Time and QOTD differ only in what they say, so each supplies a
zero-argument callable that returns the answer's bytes.

On a stream, closing a socket while the peer's bytes sit unread makes the
kernel send a reset, which can destroy the answer before the peer reads it
(a client that sends a line first, as the tutorial's client does).  So the
stream flavour half-closes after speaking, discards what the peer sends,
and closes when the peer does, or after a short linger.  Over TLS, where
half-close is not available, it simply closes.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime, ISSLTransport, IUDPTransport
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd.interfaces import IStreamTransport

Answer = Callable[[], bytes]

#: Seconds to wait for the peer to close after we have spoken and half-closed.
LINGER = 2.0


@implementer(IHalfCloseableProtocol)
class SpeakFirstProtocol(Protocol):
    """Send the factory's answer as soon as the connection opens, then close."""

    factory: SpeakFirstFactory
    transport: IStreamTransport
    _linger: IDelayedCall | None = None

    def connectionMade(self) -> None:
        transport = self.transport
        transport.write(self.factory.answer())
        halfClose = getattr(transport, "loseWriteConnection", None)
        if halfClose is None or ISSLTransport.providedBy(transport):
            transport.loseConnection()
            return
        halfClose()
        self._linger = self.factory.clock.callLater(self.factory.linger, transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        """Anything the peer sends is read and ignored: these services only speak."""

    def readConnectionLost(self) -> None:
        self._stopLingering()
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our own half-close: nothing more to do until the peer closes."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._stopLingering()

    def _stopLingering(self) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None


class SpeakFirstFactory(Factory[SpeakFirstProtocol]):
    """Builds connections that send one answer at once, then half-close and linger (daytime, time, qotd)."""

    protocol = SpeakFirstProtocol
    noisy = False

    def __init__(self, answer: Answer, clock: IReactorTime, linger: float = LINGER) -> None:
        self.answer = answer
        self.clock = clock
        self.linger = linger


class AnswerDatagramProtocol(DatagramProtocol):
    """Answer any datagram, whatever it holds, with a fresh answer."""

    noisy = False
    transport: IUDPTransport

    def __init__(self, answer: Answer) -> None:
        self.answer = answer

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.transport.write(self.answer(), addr)
