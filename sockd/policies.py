"""The policies every stream connection passes through, as one factory wrapper.

Protocols know nothing of these: L{PolicyFactory} wraps any service factory
and its L{PolicyProtocol} sits between transport and service, in the manner of
C{twisted.protocols.policies}.  In one layer (one extra call per read or write)
it applies admission (access lists and connection limits, decided before any
byte is read), the idle timeout and the TLS handshake deadline, counts bytes
and answers for the metrics, and lets shutdown drain the connection.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, TimeoutMixin, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd import metrics
from sockd.addresses import formatAddress, hostOf
from sockd.admission import Admission

log = Logger(namespace="sockd.policies")


class ConnectionRegistry:
    """Every open stream connection, so shutdown can finish them gracefully."""

    def __init__(self) -> None:
        self.connections: set[PolicyProtocol] = set()
        self._emptied: list[defer.Deferred[None]] = []

    def add(self, connection: PolicyProtocol) -> None:
        self.connections.add(connection)

    def remove(self, connection: PolicyProtocol) -> None:
        self.connections.discard(connection)
        if not self.connections:
            waiting, self._emptied = self._emptied, []
            for d in waiting:
                d.callback(None)

    def drain(self, clock: IReactorTime, grace: float, quiet: float = 0.05) -> defer.Deferred[None]:
        """Close every connection once it has been quiet for C{quiet} seconds; abort the rest at C{grace}."""
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._emptied.append(d)
        for connection in list(self.connections):
            connection.drain(quiet)
        deadline = clock.callLater(grace, self._abortAll)
        d.addBoth(lambda result: (deadline.cancel() if deadline.active() else None, result)[1])
        return d

    def _abortAll(self) -> None:
        for connection in list(self.connections):
            log.warn("shutdown grace period over: aborting {peer}", peer=connection.peerName)
            connection.transport.abortConnection()


@implementer(IHalfCloseableProtocol)
class PolicyProtocol(ProtocolWrapper, TimeoutMixin):
    """Admission bookkeeping, timeouts, counting and draining around one service protocol."""

    factory: PolicyFactory
    _draining = False
    _handshakeCall: Any = None
    _producer: Any = None

    def __init__(self, factory: PolicyFactory, wrappedProtocol: Any, host: str | None, peerName: str) -> None:
        super().__init__(factory, wrappedProtocol)
        self.host = host
        self.peerName = peerName
        self.callLater = factory.clock.callLater  # TimeoutMixin would use the global reactor

    def makeConnection(self, transport: Any) -> None:
        factory = self.factory
        factory.registry.add(self)
        factory.active.inc()
        factory.accepted.inc()
        self.setTimeout(factory.idleTimeout or None)
        if factory.handshakeTimeout:
            self._handshakeCall = factory.clock.callLater(factory.handshakeTimeout, self._checkHandshake)
        super().makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.factory.bytesIn.inc(len(data))
        self.wrappedProtocol.dataReceived(data)

    def write(self, data: bytes) -> None:
        self.resetTimeout()
        factory = self.factory
        factory.bytesOut.inc(len(data))
        factory.answers.inc()
        self.transport.write(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        if self._producer is not None:
            self._producer = None
            self.transport.unregisterProducer()

    def loseConnection(self) -> None:
        """Close once written; a registered producer would keep some transports (TLS) open, so drop it."""
        self.unregisterProducer()
        super().loseConnection()

    def readConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.writeConnectionLost()

    def timeoutConnection(self) -> None:
        if self._draining:
            self._finish()
            return
        self.factory.timedOut("idle").inc()
        log.info("{service}/{transport}: closing {peer}: idle for {seconds:g}s",
                 service=self.factory.service, transport=self.factory.transport,
                 peer=self.peerName, seconds=self.factory.idleTimeout)
        self.transport.abortConnection()

    def _checkHandshake(self) -> None:
        self._handshakeCall = None
        handle = self.transport.getHandle()
        if getattr(handle, "get_finished", lambda: True)() is None:
            self.factory.timedOut("tls-handshake").inc()
            log.info("{service}/{transport}: closing {peer}: TLS handshake not done in {seconds:g}s",
                     service=self.factory.service, transport=self.factory.transport,
                     peer=self.peerName, seconds=self.factory.handshakeTimeout)
            self.transport.abortConnection()

    def drain(self, quiet: float) -> None:
        """Shutdown: keep serving until quiet for C{quiet} seconds, then answer what is pending and close."""
        self._draining = True
        self.setTimeout(quiet)

    def _finish(self) -> None:
        flush = getattr(self.wrappedProtocol, "flushPending", None)
        if flush is not None:
            flush()
        self.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        if self._handshakeCall is not None and self._handshakeCall.active():
            self._handshakeCall.cancel()
        factory = self.factory
        factory.admission.release(self.host)
        factory.active.dec()
        factory.registry.remove(self)
        super().connectionLost(reason)


class PolicyFactory(WrappingFactory):
    """Wrap a service factory with admission, timeouts, counting and draining."""

    protocol = PolicyProtocol
    noisy = False

    def __init__(
        self,
        wrappedFactory: Any,
        *,
        service: str,
        transport: str,
        admission: Admission,
        registry: ConnectionRegistry,
        clock: IReactorTime,
        idleTimeout: float = 0,
        handshakeTimeout: float = 0,
    ) -> None:
        super().__init__(wrappedFactory)
        self.service = service
        self.transport = transport
        self.admission = admission
        self.registry = registry
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.handshakeTimeout = handshakeTimeout
        labels = {"service": service, "transport": transport}
        self.accepted = metrics.connectionsAccepted.labels(**labels)
        self.active = metrics.connectionsActive.labels(**labels)
        self.bytesIn = metrics.bytesReceived.labels(**labels)
        self.bytesOut = metrics.bytesSent.labels(**labels)
        self.answers = metrics.answers.labels(**labels)
        self._labels = labels

    def timedOut(self, kind: str) -> Any:
        return metrics.connectionsTimedOut.labels(kind=kind, **self._labels)

    def buildProtocol(self, addr: Any) -> PolicyProtocol | None:
        host = hostOf(addr)
        reason = self.admission.admit(host)
        if reason is not None:
            metrics.connectionsRefused.labels(reason=reason, **self._labels).inc()
            self.admission.noteRefusal(self.service, self.transport, host, reason)
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            self.admission.release(host)
            return None
        return self.protocol(self, wrapped, host, formatAddress(addr))

    # WrappingFactory keeps a dict of live protocols; the registry does that job.
    def registerProtocol(self, p: Any) -> None:
        pass

    def unregisterProtocol(self, p: Any) -> None:
        pass
