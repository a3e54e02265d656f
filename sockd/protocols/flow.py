"""Flow control shared by the stream services that answer what they read.

A service that writes in answer to reads (echo, ack) must stop reading while its
peer is not reading, or a client that sends and never reads makes the daemon
buffer without bound.  The transport tells a registered streaming producer to
pause when its write buffer is full; this producer then pauses the transport's
reading, and resumes it once the buffer has drained.

Registering it costs a chain of calls per connection, and most connections of
a request/response service never queue a byte.  So a service asks its
transport, through L{pauseReadingWhileBlocked}, for the one method
C{pauseReadingWhileBlocked()} of L{IReadPausingTransport}: sockd's own
transports pause reading without registering anything, and the wrappers in
between pass the call on.  Only a transport without it (Twisted's own, under
C{-r epoll}) gets the producer here, registered at once.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer
from zope.interface import implementer

from sockd.interfaces import IReadPausingTransport, IStreamTransport


@implementer(IPushProducer)
class ReadPauser:
    """Pause reading from C{transport} while its own write buffer is full."""

    def __init__(self, transport: IPushProducer) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Nothing to stop: the transport is closing and takes its reading with it."""


def pauseReadingWhileBlocked(transport: IStreamTransport, consumer: IConsumer | None = None) -> None:
    """Make C{transport} stop reading whenever its peer stops reading.

    Without L{IReadPausingTransport}, a L{ReadPauser} of C{transport} is
    registered with C{consumer} (default: the transport itself; a wrapper names
    itself, to know it has a producer to drop at close).
    """
    # Asked of the class: a wrapper declares what its transport provides without having the method.
    if IReadPausingTransport.implementedBy(type(transport)):
        transport.pauseReadingWhileBlocked()  # type: ignore[attr-defined]  # implementedBy says (cast(): a call)
    else:
        (transport if consumer is None else consumer).registerProducer(ReadPauser(transport), True)
