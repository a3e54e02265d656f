"""Echo (RFC 862): send back every byte received, and every datagram."""

from __future__ import annotations

from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol

from sockd.interfaces import IStreamTransport
from sockd.protocols.flow import pauseReadingWhileBlocked


class EchoProtocol(Protocol):
    """Return every byte, reading no faster than the peer reads its echo."""

    transport: IStreamTransport

    def connectionMade(self) -> None:
        pauseReadingWhileBlocked(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoFactory(Factory[EchoProtocol]):
    """Builds an L{EchoProtocol} per connection."""

    noisy = False
    protocol = EchoProtocol


class EchoDatagramProtocol(DatagramProtocol):
    """Return each datagram to its sender."""

    noisy = False
    transport: IUDPTransport

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.transport.write(datagram, addr)
