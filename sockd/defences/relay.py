"""A wrapping protocol's transport side, relayed method by method, without C{__getattr__}.

Twisted's C{ProtocolWrapper} reaches whatever the transport has through
C{__getattr__}.  A class with C{__getattr__} anywhere in its bases pays for it
on every attribute access of its instances, found or not (CPython's
attribute-lookup fast paths are off for it): about 45 ns each, and a wrapper
that sits in every read and write makes a dozen such accesses per message.
L{TransportRelay} relays instead exactly the methods and attributes of the
transport interfaces a stream transport provides (TCP, Unix, TLS, producer,
consumer, system handle), each as a property of the class that reads the
transport's.
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    ILoggingContext,
    INegotiated,
    IPushProducer,
    ISSLTransport,
    ISystemHandle,
    ITCPTransport,
    ITLSTransport,
    IUNIXTransport,
)
from zope.interface.declarations import Declaration

from sockd.interfaces import IStreamTransport

#: The interfaces whose methods and attributes are relayed to the transport.
RELAYED = (ITCPTransport, IUNIXTransport, ISSLTransport, ITLSTransport, INegotiated, IPushProducer, IConsumer,
           ISystemHandle)


def _relayed(name: str) -> property:
    """C{wrapper.name} is C{wrapper.transport.name}: a transport without it makes C{getattr(wrapper, name, None)}
    None, as with C{__getattr__} (protocols probe for C{loseWriteConnection} that way)."""
    return property(lambda self: getattr(self.transport, name), doc=f"The transport's C{{{name}}}.")


class TransportRelay:
    """The transport half of a protocol wrapper: every relayed name calls, or reads, C{self.transport}'s.

    It also passes the half-close events on to the wrapped protocol, as C{ProtocolWrapper} does.

    Subclasses override what they intercept (C{write}, C{loseConnection}, ...).
    """

    # Set by makeConnection; None before (Protocol's class attribute, in every subclass's bases).
    transport: IStreamTransport
    disconnecting = 0
    #: What zope's directlyProvides() sets (L{sockd.defences.stream} reuses one per transport kind).
    __provides__: Declaration

    def loseConnection(self) -> None:
        self.disconnecting = 1
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        """The peer half-closed: a half-closeable service hears of it, any other is closed (as ProtocolWrapper)."""
        wrapped = self.wrappedProtocol  # type: ignore[attr-defined]
        if IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our side is half-closed: a half-closeable service hears of it."""
        wrapped = self.wrappedProtocol  # type: ignore[attr-defined]
        if IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.writeConnectionLost()

    def stopConsuming(self) -> None:
        """Twisted's wrappers relay this one too (it is in no interface)."""
        self.transport.stopConsuming()  # type: ignore[attr-defined]  # in no interface

    def logPrefix(self) -> str:
        """What Twisted's wrappers log as: C{"Wrapped (Wrapper)"}."""
        wrapped = self.wrappedProtocol  # type: ignore[attr-defined]
        inner = wrapped.logPrefix() if ILoggingContext.providedBy(wrapped) else wrapped.__class__.__name__
        return f"{inner} ({self.__class__.__name__})"


for _interface in RELAYED:
    for _name in _interface.names(all=True):
        if _name in TransportRelay.__dict__:
            continue
        setattr(TransportRelay, _name, _relayed(_name))


__all__ = ["RELAYED", "TransportRelay"]
