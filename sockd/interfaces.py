"""The contracts between sockd's layers, as zope.interface declarations.

Where one layer calls an optional method of another (drain a protocol's
pending input, abandon a half-started listener, stop worker supervisors
first), it asks for an interface rather than probing with C{getattr}, so a
reader finds every implementer by name.
"""

from __future__ import annotations

from typing import Protocol

from twisted.application.service import IService
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IReactorCore,
    IReactorFromThreads,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
    IReactorUDP,
    IReactorUNIX,
    ISystemHandle,
    ITransport,
)
from zope.interface import Attribute, Interface

__all__ = ["Hold", "IAdmissionGate", "IDatagramListener", "IListener", "IMessageSink", "IPendingInput", "IReactor",
           "IReadPausingTransport", "IStopsFirst", "IStreamTransport"]


class IReactor(IReactorCore, IReactorTime, IReactorFromThreads, IReactorTCP, IReactorUDP, IReactorUNIX, IReactorSocket):
    """The reactor as sockd uses it: the union of the reactor interfaces it calls, for type checkers.

    No reactor declares it: every reactor sockd runs on (its own I/O core, Twisted's
    epoll, poll, select and asyncio reactors) provides each of its bases.
    """


class IStreamTransport(ITransport, IConsumer, IPushProducer, ISystemHandle):
    """A stream connection's transport as sockd's protocols and wrappers use it, for type checkers.

    No transport declares it: TCP, Unix and TLS transports, Twisted's and sockd's,
    provide each of its bases, and C{abortConnection} (L{ITCPTransport}'s, which
    Unix and TLS transports have too).
    """

    def abortConnection() -> None:
        """Close the connection now, dropping what is buffered."""


class IAdmissionGate(Interface):
    """A factory that admits connections, so that a reader in front of it (PROXY) can count one before building it."""

    def hold(host: str | None) -> Hold | None:
        """Count a connection by its real peer until it can be built: what to C{releaseHold(host)} it from, or None.

        None: refused (counted and logged already); close it without a byte.
        """

    def refuse(host: str | None, reason: str) -> None:
        """Count and log a connection refused in front of it, for C{reason} (a metric label)."""


class Hold(Protocol):
    """What L{IAdmissionGate.hold} returns: where the place it counted is given back."""

    def releaseHold(self, host: str | None) -> None:
        """Forget the connection counted for C{host}: its PROXY header came, or it closed first."""


class IPendingInput(Interface):
    """A protocol that may hold input it has not answered yet (the ack service's partial message)."""

    def flushPending() -> None:
        """Answer what has arrived but not been answered: the peer is done, quiet, or sockd is stopping."""


class IListener(Interface):
    """A service that binds one listen description for one sockd service."""

    serviceName = Attribute("The sockd service it serves, such as 'ack'.")
    description = Attribute("The listen description it binds, as given.")

    def abandon() -> None:
        """Start-up failed elsewhere: close now, removing any socket file this listener created."""


class IDatagramListener(IListener):
    """A listener for datagrams: its port matters to the reflection defences."""

    boundPort = Attribute("The UDP port actually bound (0 before binding): answers to it would loop.")


class IStopsFirst(IService):
    """A service that must stop before the listeners, because its children serve their sockets."""

    def hurry() -> None:
        """The stop signal came again while stopping: finish now, without waiting for open connections."""


class IReadPausingTransport(Interface):
    """A transport that can stop reading while its peer is not reading, at no cost until a write queues.

    The one way a protocol asks for read pausing (L{sockd.protocols.flow.pauseReadingWhileBlocked}
    calls it, or registers a read-pausing producer on a transport without it).
    sockd's own transports (L{sockd.core.stream}) provide it; the wrappers
    between them and a service (the policy layer, the PROXY reader) pass it on.
    It is asked of the transport's class (C{implementedBy}), not the object:
    protocol wrappers declare whatever their transport provides.
    """

    def pauseReadingWhileBlocked() -> None:
        """Stop reading whenever the write queue is full, resume once it drains.

        Like registering a streaming producer that pauses and resumes the
        transport's reading (and refused, as that is, while another producer is
        registered), but lazily: nothing is registered, and reading is stopped
        only when a write has queued past the buffer size, so a connection whose
        writes go straight to the kernel costs no C{epoll_ctl} for it.  A
        producer registered later replaces it; C{unregisterProducer()} ends it.
        """


class IMessageSink(Interface):
    """Where message lines go as finished text, with no log event: the message log's fast path.

    sockd's own log sink (L{sockd.observe.log.sink.LineSink}) provides it when
    sockd writes twistd's log itself.  The assembly hands it to every message
    log (L{sockd.observe.log.messages.MessageLogging}) and to the C{--workers}
    supervisor; without one, messages are C{twisted.logger} events.
    """

    journal = Attribute("Whether lines carry sd-daemon(3) priorities (the output is the journal).")
    dropped = Attribute("Lines that could not be written (disk full, closed pipe) and are gone.")

    def message(tail: bytes, message: bytes) -> None:
        """Append one message line: the timestamp, then C{tail}, then the message escaped."""

    def lines(data: bytes) -> None:
        """Append whole lines another process's sink made (a C{--workers} child's)."""
