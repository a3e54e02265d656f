"""The policies every stream connection passes through, as one factory wrapper.

Protocols know nothing of these: L{PolicyFactory} wraps any service factory
and its L{PolicyProtocol} sits between transport and service, in the manner of
C{twisted.protocols.policies}.  In one layer (one extra call per read or write)
it applies admission (access lists and connection limits, decided before any
byte is read), the idle timeout and the TLS handshake deadline, counts bytes
and answers for the metrics, and lets shutdown drain the connection.
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet import defer
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy
from zope.interface.declarations import Declaration

from sockd.defences.admission import Admission
from sockd.defences.relay import TransportRelay
from sockd.interfaces import IAdmissionGate, IPendingInput, IReadPausingTransport, IStreamTransport
from sockd.observe.addresses import formatAddress, hostOf
from sockd.observe.metrics import Metrics
from sockd.protocols.flow import pauseReadingWhileBlocked

log = Logger(namespace="sockd.policies")

#: (wrapper class, what the transport provides) -> the declaration directlyProvides() made for it.
_provides: dict[tuple[type, Declaration], Declaration] = {}
#: (wrapper class, wrapped protocol class) -> the log prefix, for classes that keep Protocol's (the class name).
_logPrefixes: dict[tuple[type, type], str] = {}


def _provideLikeTransport(wrapper: TransportRelay, transport: IStreamTransport) -> None:
    """What ProtocolWrapper.makeConnection does, C{directlyProvides(wrapper, providedBy(transport))}, cached.

    zope builds the same declaration for every connection of a listener (about 1.5 µs each);
    the first one is kept and reused.  Without the attribute zope uses, it is done every time.
    """
    key = (type(wrapper), providedBy(transport))
    declaration = _provides.get(key)
    if declaration is not None:
        wrapper.__provides__ = declaration
        return
    directlyProvides(wrapper, key[1])
    declaration = wrapper.__dict__.get("__provides__")
    if declaration is not None and len(_provides) < 256:
        _provides[key] = declaration


class ConnectionRegistry:
    """Every open stream connection: for their idle timeouts, and so shutdown can finish them gracefully.

    Idle timeouts run on one timer for all connections, not a delayed call per
    connection (about half a kilobyte for each idle connection): connections
    only note when they were last active, and the timer wakes at the earliest
    moment any of them could be idle, closes those that are, and sleeps until
    the next such moment.  Timeouts stay exact.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.connections: set[PolicyProtocol] = set()
        self._emptied: list[defer.Deferred[None]] = []
        self._sweepCall: IDelayedCall | None = None

    def add(self, connection: PolicyProtocol) -> None:
        self.connections.add(connection)
        deadline = connection.idleDeadline()
        if deadline is not None and self._sweepCall is None:
            self._sweepCall = self.clock.callLater(max(0.0, deadline - self.clock.seconds()), self._sweep)

    def rescheduleIdle(self) -> None:
        """An idle timeout changed (a reload): sweep now, and wake when the new timeouts say.

        Also when no sweep was due: a timeout turned on (from 0) applies to the
        connections already open.
        """
        if self._sweepCall is not None:
            if self._sweepCall.active():
                self._sweepCall.cancel()
            self._sweepCall = None
        self._sweep()

    def _sweep(self) -> None:
        self._sweepCall = None
        now = self.clock.seconds()
        earliest: float | None = None
        expired = []
        for connection in self.connections:
            deadline = connection.idleDeadline()
            if deadline is None:
                continue
            if deadline <= now:
                expired.append(connection)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        for connection in expired:
            connection.idleTimedOut()
        if earliest is not None:
            self._sweepCall = self.clock.callLater(earliest - now, self._sweep)

    def remove(self, connection: PolicyProtocol) -> None:
        self.connections.discard(connection)
        if not self.connections and self._sweepCall is not None:
            if self._sweepCall.active():
                self._sweepCall.cancel()
            self._sweepCall = None
        if not self.connections:
            waiting, self._emptied = self._emptied, []
            for d in waiting:
                d.callback(None)

    def drain(self, grace: float, quiet: float = 0.05) -> defer.Deferred[None]:
        """Close every connection once it has been quiet for C{quiet} seconds; abort the rest at C{grace}."""
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._emptied.append(d)
        for connection in list(self.connections):
            connection.drain(quiet)
        deadline = self.clock.callLater(grace, self.abortAll, "shutdown grace period over")

        def stopDeadline(result: None) -> None:
            if deadline.active():
                deadline.cancel()
            return result

        d.addBoth(stopDeadline)
        return d

    def abortAll(self, why: str) -> None:
        """End every connection now, saying C{why} for each (the grace period is over, or was cut short)."""
        for connection in list(self.connections):
            log.warn("{why}: aborting {peer}", why=why, peer=connection.peerName)
            connection.transport.abortConnection()


@implementer(IHalfCloseableProtocol, IReadPausingTransport)
class PolicyProtocol(TransportRelay, Protocol):
    """Admission bookkeeping, timeouts, counting and draining around one service protocol.

    The idle timer is one delayed call per idle period, not one reset per read
    or write: reads and writes only note the time, and the timer, when it
    fires, re-arms itself for the rest of the period if there was activity.
    """

    factory: PolicyFactory
    transport: IStreamTransport
    _draining = False
    _handshakeCall: IDelayedCall | None = None
    _drainCall: IDelayedCall | None = None
    _producer: IProducer | None = None

    def __init__(self, factory: PolicyFactory, wrappedProtocol: IProtocol, host: str | None) -> None:
        self.wrappedProtocol = wrappedProtocol
        self.factory = factory
        self.host = host
        #: Released where it was counted, even if a reload gives the factory another service's admission.
        self.admission = factory.admission
        self._lastActive = 0.0

    @property
    def peerName(self) -> str:
        return formatAddress(self.transport.getPeer()) if self.transport is not None else "?"

    def makeConnection(self, transport: IStreamTransport) -> None:
        """ProtocolWrapper.makeConnection, inlined with the bookkeeping (it runs once per connection)."""
        factory = self.factory
        factory.registry.add(self)
        stats = factory.stats
        stats.active += 1
        stats.accepted += 1
        self._lastActive = factory.seconds()
        if factory.handshakeTimeout:
            self._handshakeCall = factory.clock.callLater(factory.handshakeTimeout, self._checkHandshake)
        _provideLikeTransport(self, transport)
        self.connected = 1
        self.transport = transport
        # Answers go out when written: with Nagle, a second small write while the first is unacknowledged
        # (TLS 1.3's session tickets, then the answer) waits for the peer's delayed ACK, 40 ms.
        noDelay = getattr(transport, "setTcpNoDelay", None)
        if noDelay is not None:
            noDelay(True)
        self.connectionMade()  # type: ignore[no-untyped-call]  # Twisted's, untyped
        # It provides what its transport provides (C{_provideLikeTransport} above).
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]  # (not cast(): a call per connection)

    def logPrefix(self) -> str:
        """ProtocolWrapper's C{"Wrapped (PolicyProtocol)"}, cached per class when it is just the class name."""
        key = (type(self), type(self.wrappedProtocol))
        prefix = _logPrefixes.get(key)
        if prefix is None:
            prefix = super().logPrefix()
            if getattr(key[1], "logPrefix", None) is Protocol.logPrefix and len(_logPrefixes) < 256:
                _logPrefixes[key] = prefix
        return prefix

    def pauseReadingWhileBlocked(self) -> None:
        """L{IReadPausingTransport}, passed on; on a transport without it, a producer registered through this layer."""
        # It relays IConsumer (TransportRelay declares what its transport provides, at makeConnection).
        pauseReadingWhileBlocked(self.transport, self)  # type: ignore[arg-type]  # (not cast(): a call per connection)

    def dataReceived(self, data: bytes) -> None:
        factory = self.factory
        self._lastActive = factory.seconds()
        factory.stats.bytesIn += len(data)
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        factory = self.factory
        self._lastActive = factory.seconds()
        stats = factory.stats
        stats.bytesOut += len(data)
        stats.answers += 1
        self.transport.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._producer = producer
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._producer is not None:
            self._producer = None
            self.transport.unregisterProducer()

    def loseConnection(self) -> None:
        """Close once written; a registered producer would keep some transports (TLS) open, so drop it.

        sockd's transports' read pausing is no producer: it never holds a close.
        """
        self.unregisterProducer()
        super().loseConnection()

    def idleDeadline(self) -> float | None:
        """When this connection counts as idle if nothing happens first; None if it never does (or drains)."""
        idle = self.factory.idleTimeout
        if not idle or self._draining:
            return None
        return self._lastActive + idle

    def idleTimedOut(self) -> None:
        """The registry's idle timer found no read or write for the idle timeout."""
        self.factory.stats.timedOut["idle"] += 1
        log.emit(self.factory.idleLogLevel, "{service}/{transport}: closing {peer}: idle for {seconds:g}s",
                 service=self.factory.serviceName, transport=self.factory.transportName,
                 peer=self.peerName, seconds=self.factory.idleTimeout)
        self.transport.abortConnection()

    def _checkQuiet(self) -> None:
        """Shutdown: close once quiet for C{_quiet} seconds."""
        left = self._lastActive + self._quiet - self.factory.seconds()
        if left > 0:
            self._drainCall = self.factory.clock.callLater(left, self._checkQuiet)
            return
        self._drainCall = None
        self._finish()

    def _checkHandshake(self) -> None:
        self._handshakeCall = None
        handle = self.transport.getHandle()
        if getattr(handle, "get_finished", lambda: True)() is None:
            self.factory.stats.timedOut["tls-handshake"] += 1
            log.info("{service}/{transport}: closing {peer}: TLS handshake not done in {seconds:g}s",
                     service=self.factory.serviceName, transport=self.factory.transportName,
                     peer=self.peerName, seconds=self.factory.handshakeTimeout)
            self.transport.abortConnection()

    def drain(self, quiet: float) -> None:
        """Shutdown: keep serving until quiet for C{quiet} seconds, then answer what is pending and close."""
        self._draining = True
        self._quiet = quiet
        # Read everything the peer already sent, even if flow control had paused reading: closing with
        # unread input makes the kernel reset the connection, destroying answers still on their way.
        self.unregisterProducer()
        if IReadPausingTransport.implementedBy(type(self.transport)):
            self.transport.unregisterProducer()  # sockd's transports' read pausing, which is no producer
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None and getattr(self.transport, "connected", True):
            resume()
        self._lastActive = self.factory.seconds()
        self._drainCall = self.factory.clock.callLater(quiet, self._checkQuiet)

    def _finish(self) -> None:
        pending = IPendingInput(self.wrappedProtocol, None)
        if pending is not None:
            pending.flushPending()
        self.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        call = self._drainCall
        if call is not None:
            self._drainCall = None
            if call.active():
                call.cancel()
        call = self._handshakeCall
        if call is not None:
            self._handshakeCall = None
            if call.active():
                call.cancel()
        factory = self.factory
        self.admission.release(self.host)
        factory.stats.active -= 1
        factory.registry.remove(self)
        # ProtocolWrapper.connectionLost, less the no-op unregisterProtocol; None breaks the cycle.
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None  # type: ignore[assignment]  # no event follows
        wrapped.connectionLost(reason)  # type: ignore[arg-type]  # as given: None only from a direct call


@implementer(IAdmissionGate)
class PolicyFactory(WrappingFactory):
    """Wrap a service factory with admission, timeouts, counting and draining.

    C{claimedPeers}: its peers' addresses come from PROXY headers, so none is
    exempt from the per-address limits, whatever it claims.  C{idleLogLevel}:
    where idle closes are logged (debug for the metrics site, whose scrapers
    keep connections open between scrapes).
    """

    # WrappingFactory's stubs want a ProtocolWrapper; this one relays without one (L{TransportRelay}).
    protocol: type[PolicyProtocol] = PolicyProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        *,
        serviceName: str,
        transportName: str,
        admission: Admission,
        registry: ConnectionRegistry,
        clock: IReactorTime,
        idleTimeout: float = 0,
        handshakeTimeout: float = 0,
        metrics: Metrics | None = None,
        tls: bool = False,
        claimedPeers: bool = False,
        idleLogLevel: LogLevel = LogLevel.info,
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]  # Twisted's, untyped
        self.claimedPeers = claimedPeers
        self.idleLogLevel = idleLogLevel
        self.serviceName = serviceName
        self.transportName = transportName
        self.admission = admission
        self.registry = registry
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.handshakeTimeout = handshakeTimeout
        #: Counted here (C{metrics}: the daemon's, or a private one for a factory made on its own).
        self.stats = (metrics or Metrics(process=False)).statsFor(serviceName, transportName)
        #: Whether its connections have a TLS handshake (and so a handshake deadline, and its timeouts counted).
        self.tls = tls or bool(handshakeTimeout)
        if self.tls:
            self.stats.expect(tls=True)
        self.seconds = clock.seconds

    # None refuses the connection, as Factory.buildProtocol allows (WrappingFactory's stubs do not).
    def buildProtocol(self, addr: IAddress) -> PolicyProtocol | None:  # type: ignore[override]
        host = hostOf(addr)
        reason = self.admission.admit(host, self.claimedPeers)
        if reason is not None:
            self.refuse(host, reason)
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            self.admission.release(host)
            return None
        return self.protocol(self, wrapped, host)

    def hold(self, host: str | None) -> Admission | None:
        """L{IAdmissionGate}: count a connection by its real peer until its PROXY header names the client."""
        admission = self.admission
        reason = admission.hold(host)
        if reason is not None:
            self.refuse(host, reason)
            return None
        return admission

    def refuse(self, host: str | None, reason: str) -> None:
        """L{IAdmissionGate}: count a refusal under C{reason} and log it, at most once per source and interval."""
        self.stats.refused[reason] += 1
        self.admission.noteRefusal(self.serviceName, self.transportName, host, reason)

    # WrappingFactory keeps a dict of live protocols; the registry does that job.
    def registerProtocol(self, p: PolicyProtocol) -> None:
        pass

    def unregisterProtocol(self, p: PolicyProtocol) -> None:
        pass
