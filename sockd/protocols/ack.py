"""The tutorial's ack server: every message is logged and acknowledged.

Stream flavour: a message ends at a newline; or when the pending bytes reach the
maximum message length (the tutorial's server reads into a 255-byte buffer); or
when the peer half-closes with bytes pending; or when a partial message has been
quiet for a short time, because the tutorial's client, given a long line, sends
254 bytes without a newline and then waits for its answer.  Each message is
answered with exactly the 18 bytes C{I got your message}.

Datagram flavour: each datagram is logged and answered with the 17 bytes
C{Got your message\\n}.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime, IUDPTransport
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd.interfaces import IPendingInput, IStreamTransport
from sockd.observe.log.messages import MessageLog
from sockd.protocols.flow import pauseReadingWhileBlocked

STREAM_ANSWER = b"I got your message"
DATAGRAM_ANSWER = b"Got your message\n"


@implementer(IHalfCloseableProtocol, IPendingInput)
class AckProtocol(Protocol):
    """Frame a byte stream into messages and acknowledge each one."""

    factory: AckFactory
    transport: IStreamTransport
    _quietCall: IDelayedCall | None = None
    _closing = False
    #: This connection's message log (L{MessageLog.forConnection}); None: messages are not logged.
    _logMessage: Callable[[bytes], None] | None = None

    def __init__(self) -> None:
        self._pending = b""

    def connectionMade(self) -> None:
        pauseReadingWhileBlocked(self.transport)
        # The transport stands for the peer: asked for its address only if the log needs it.
        self._logMessage = self.factory.messageLog.forConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        factory = self.factory
        maxLength = factory.maxLength
        pending = self._pending
        buffer = pending + data if pending else data
        end = len(buffer)
        if buffer[-1:] == b"\n" and end <= maxLength and buffer.find(b"\n") == end - 1:
            # The usual case, one whole message: answered without the framing loop.
            logMessage = self._logMessage
            if logMessage is not None:
                logMessage(buffer)
            self.transport.write(STREAM_ANSWER)
            if pending:
                self._pending = b""
            if factory.closeAfterFirst:
                self._close()
            elif self._quietCall is not None:
                self._cancelQuietCall()
            return
        start = 0
        while start < end:
            newline = buffer.find(b"\n", start, start + maxLength)
            if newline >= 0:
                stop = newline + 1
            elif end - start >= maxLength:
                stop = start + maxLength
            else:
                break
            self._answer(buffer[start:stop])
            start = stop
            if factory.closeAfterFirst:
                self._close()
                return
        self._pending = buffer[start:] if start else buffer
        if self._pending:
            if self._quietCall is None:
                self._quietCall = factory.clock.callLater(factory.quietTime, self._quiet)
            else:
                self._quietCall.reset(factory.quietTime)
        elif self._quietCall is not None:
            self._cancelQuietCall()

    def _answer(self, message: bytes) -> None:
        logMessage = self._logMessage
        if logMessage is not None:
            logMessage(message)
        self.transport.write(STREAM_ANSWER)

    def flushPending(self) -> None:
        """Answer a partial message now: the peer is done, quiet, or we are stopping."""
        if self._quietCall is not None:
            self._cancelQuietCall()
        if self._pending:
            pending, self._pending = self._pending, b""
            self._answer(pending)
            if self.factory.closeAfterFirst:
                self._close()

    def _quiet(self) -> None:
        self._quietCall = None
        self.flushPending()

    def _cancelQuietCall(self) -> None:
        if self._quietCall is not None:
            if self._quietCall.active():
                self._quietCall.cancel()
            self._quietCall = None

    def _close(self) -> None:
        """Stop reading, forget what is pending, and close once the answers are written.

        The read-pausing producer is unregistered first: a transport (TLS in
        particular) does not finish closing while a producer is registered.
        """
        if self._closing:
            return
        self._closing = True
        self._pending = b""
        if self._quietCall is not None:
            self._cancelQuietCall()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def readConnectionLost(self) -> None:
        self.flushPending()
        self._close()

    def writeConnectionLost(self) -> None:
        """We never half-close our side, so there is nothing to do."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._quietCall is not None:
            self._cancelQuietCall()
        self._pending = b""


class AckFactory(Factory[AckProtocol]):
    """Builds L{AckProtocol}s that share one set of framing rules."""

    noisy = False
    protocol = AckProtocol

    def __init__(
        self,
        clock: IReactorTime,
        messageLog: MessageLog,
        maxLength: int = 255,
        quietTime: float = 0.1,
        closeAfterFirst: bool = False,
    ) -> None:
        if maxLength < 1:
            raise ValueError("maximum message length must be at least 1")
        self.clock = clock
        self.messageLog = messageLog
        self.maxLength = maxLength
        self.quietTime = quietTime
        self.closeAfterFirst = closeAfterFirst


class AckDatagramProtocol(DatagramProtocol):
    """Log each datagram and answer it with C{Got your message\\n}."""

    noisy = False
    transport: IUDPTransport

    def __init__(self, messageLog: MessageLog) -> None:
        self.messageLog = messageLog

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.messageLog.datagram(datagram, addr)
        self.transport.write(DATAGRAM_ANSWER, addr)
