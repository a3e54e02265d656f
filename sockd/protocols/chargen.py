"""Character generator (RFC 864).

The RFC's pattern: lines of 72 characters taken from the 95 printable ASCII
characters (space to tilde) in order, each line starting one character later
than the one before, each ended by CR LF.  The stream flavour sends the pattern
for as long as the peer reads it (a pull producer, so a slow reader costs no
memory); the datagram flavour answers each datagram with 0 to 512 characters of
the pattern.
"""

from __future__ import annotations

import random

from twisted.internet.interfaces import IPullProducer, IUDPTransport
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from zope.interface import implementer

from sockd.interfaces import IStreamTransport

PRINTABLE = bytes(range(32, 127))
LINE_WIDTH = 72


def patternLine(index: int) -> bytes:
    """Line C{index} (from 0) of the RFC 864 pattern, with its CR LF."""
    start = index % len(PRINTABLE)
    doubled = PRINTABLE + PRINTABLE
    return doubled[start : start + LINE_WIDTH] + b"\r\n"


#: One full period of the pattern: 95 lines, after which it repeats exactly.
CYCLE = b"".join(patternLine(i) for i in range(len(PRINTABLE)))

#: Bytes written per pull: about the transport's own buffer size.
CHUNK = 64 * 1024

# Enough repeats of the cycle that any offset into it can be followed by CHUNK bytes.
_RUN = CYCLE * (CHUNK // len(CYCLE) + 2)


def patternBytes(offset: int, length: int) -> bytes:
    """C{length} bytes of the endless pattern, from C{offset}; C{length} <= CHUNK."""
    start = offset % len(CYCLE)
    return _RUN[start : start + length]


@implementer(IPullProducer)
class ChargenProtocol(Protocol):
    """Stream the pattern, one chunk each time the transport's buffer empties."""

    transport: IStreamTransport

    def __init__(self) -> None:
        self._offset = 0

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        self.transport.write(patternBytes(self._offset, CHUNK))
        self._offset = (self._offset + CHUNK) % len(CYCLE)

    def stopProducing(self) -> None:
        """The connection is going away; the transport unregisters us."""

    def dataReceived(self, data: bytes) -> None:
        """RFC 864: any data received is thrown away."""


class ChargenFactory(Factory[ChargenProtocol]):
    """Builds a L{ChargenProtocol} per connection."""

    noisy = False
    protocol = ChargenProtocol


class ChargenDatagramProtocol(DatagramProtocol):
    """Answer each datagram with a random number (0 to 512) of pattern characters.

    Successive answers continue the rotation, one line further each time.
    """

    noisy = False
    transport: IUDPTransport

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._line = 0

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        length = self._rng.randint(0, 512)
        answer = patternBytes(self._line * (LINE_WIDTH + 2), length)
        self._line = (self._line + 1) % len(PRINTABLE)
        self.transport.write(answer, addr)
