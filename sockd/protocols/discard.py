"""Discard (RFC 863): read and throw away; never answer."""

from __future__ import annotations

from twisted.internet.protocol import DatagramProtocol, Factory, Protocol


class DiscardProtocol(Protocol):
    """Throw away all data; the connection lasts until the peer (or a timeout) ends it."""

    def dataReceived(self, data: bytes) -> None:
        """Discarded, as RFC 863 asks."""


class DiscardFactory(Factory[DiscardProtocol]):
    """Builds a L{DiscardProtocol} per connection."""

    noisy = False
    protocol = DiscardProtocol


class DiscardDatagramProtocol(DatagramProtocol):
    """Throw away every datagram."""

    noisy = False

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        """Discarded, as RFC 863 asks."""
