"""Send at once when nothing is queued, instead of on the next reactor turn.

A Twisted TCP transport queues every C{write()} until the reactor's next turn
(twisted#5303); asyncio sends at once.  For a request/response service that
costs a whole extra trip through the event loop per answer.  L{SendAtOnce}
is a transport mixin: when the transport's buffer is empty it hands the data
straight to C{writeSomeData} (the transport's own send, which already deals
with EWOULDBLOCK and errors), and queues only what the kernel did not take.
Ordering is kept because nothing is ever sent around queued data.

It does the same for closing (C{closeAtEOF}): when the peer half-closes, a
half-closeable protocol (sockd's policy layer, so every stream service)
answers what is pending and calls C{loseConnection()}; Twisted then registers
for writability and closes on the next turn, after an empty C{send()} -- two
C{epoll_ctl} calls, a syscall and a reactor turn per connection that a plain
protocol does not pay.  The mixin closes as soon as the protocol's
C{readConnectionLost} returns, if nothing is queued and no producer is
registered, exactly as that next turn would; otherwise Twisted's path runs.

It is installed per listening port by replacing the port's C{transport}
class, a subclass of the one Twisted chose; if Twisted's transport no longer
has the attributes this relies on, the port is left as it was (and if only
its closing differs, C{closeAtEOF} is left off).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import abstract, error, tcp
from twisted.python.failure import Failure

from sockd.protocols.flow import ReadPauser

_REQUIRED = ("writeSomeData", "dataBuffer", "disconnecting", "_writeDisconnected", "producer", "streamingProducer")
_REQUIRED_CLOSE = ("readConnectionLost", "loseConnection", "connectionLost", "stopReading", "startWriting",
                   "dataBuffer", "offset", "disconnecting", "connected", "_writeDisconnected", "producer")


#: One shared reason, as the reactor itself shares one per kind of disconnection.
_DONE = Failure(error.ConnectionDone())


class SendAtOnce:
    """Mixin for C{twisted.internet.tcp.Connection} subclasses.

    It also registers L{sockd.protocols.flow}'s read-pausing producer lazily: only a
    write that queues can fill the buffer, so the producer is registered just
    before the first one (most request/response connections never queue).

    With C{closeAtEOF} (set on the subclasses whose transport closes as
    assumed), only a C{loseConnection()} made while the protocol handles the
    peer's half-close is taken over; the protocol has returned before the
    socket closes, so it never sees C{connectionLost} in the middle of its own code.
    """

    closeAtEOF = False
    _inEOF = False
    _closeAfterEOF = False
    #: None: not asked; True: asked, nothing registered yet; a ReadPauser: registered.
    _readPausing: Any = None

    def write(self, data: bytes) -> None:
        # The queue Twisted fills in write(); if a release renames it, nothing is ever sent around it.
        queued = getattr(self, "_tempDataBuffer", True)
        if data and not queued and not self.dataBuffer and self.connected:  # type: ignore[attr-defined]
            # A pull producer is asked for more only when a queued write drains: leave those alone.
            pull = self.producer is not None and not self.streamingProducer  # type: ignore[attr-defined]
            if not pull and not self.disconnecting and not self._writeDisconnected:  # type: ignore[attr-defined]
                sent = self.writeSomeData(data)  # type: ignore[attr-defined]
                if isinstance(sent, int) and sent > 0:
                    if sent == len(data):
                        return
                    data = data[sent:]
        if self._readPausing is True and data and self.producer is None:  # type: ignore[attr-defined]
            pauser = self._readPausing = ReadPauser(self)
            super().registerProducer(pauser, True)  # type: ignore[misc]
        super().write(data)  # type: ignore[misc]

    def pauseReadingWhileBlocked(self) -> None:
        """L{sockd.protocols.flow.pauseReadingWhileBlocked}, deferred until a write queues."""
        if self.producer is not None:  # type: ignore[attr-defined]
            self.registerProducer(ReadPauser(self), True)  # type: ignore[attr-defined]  # raises, as it always did
        self._readPausing = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._readPausing is not None:
            if self.producer is self._readPausing:  # type: ignore[attr-defined]
                super().unregisterProducer()  # type: ignore[misc]  # a producer of the protocol's own replaces it
            self._readPausing = None
        super().registerProducer(producer, streaming)  # type: ignore[misc]

    def unregisterProducer(self) -> None:
        self._readPausing = None
        if self.producer is not None:  # type: ignore[attr-defined]
            super().unregisterProducer()  # type: ignore[misc]

    def loseConnection(self) -> None:
        if self._readPausing is not None:
            # It only pauses reading, which closing stops anyway; registered, it would hold the close.
            self.unregisterProducer()
        if (self._inEOF and self.connected and not self.disconnecting  # type: ignore[attr-defined]
                and not self._writeDisconnected and self.producer is None  # type: ignore[attr-defined]
                and not getattr(self, "TLS", False) and not self._queued()):
            # What FileDescriptor.loseConnection does, less startWriting(): readConnectionLost closes.
            self.stopReading()  # type: ignore[attr-defined]
            self.disconnecting = 1
            self._closeAfterEOF = True
            return
        super().loseConnection()  # type: ignore[misc]

    def readConnectionLost(self, reason: Failure) -> None:
        if not self.closeAtEOF:
            super().readConnectionLost(reason)  # type: ignore[misc]
            return
        self._inEOF = True
        try:
            super().readConnectionLost(reason)  # type: ignore[misc]
        finally:
            self._inEOF = False
        if not self._closeAfterEOF:
            return
        self._closeAfterEOF = False
        if not self.connected or getattr(self, "_aborting", False):  # type: ignore[attr-defined]
            return
        if self.producer is not None or self._queued():  # type: ignore[attr-defined]
            # Written or registered after loseConnection(): Twisted's path flushes, then closes.
            self.startWriting()  # type: ignore[attr-defined]
            return
        self.connectionLost(_DONE)  # type: ignore[attr-defined]

    def _queued(self) -> bool:
        # Twisted's second queue; should a release rename it, everything counts as queued (Twisted's path).
        return bool(getattr(self, "_tempDataLen", 1)) or len(self.dataBuffer) > self.offset  # type: ignore[attr-defined]


def _canCloseAtEOF(transportClass: type) -> bool:
    """Whether the transport closes as this mixin assumes: Twisted's own end of a flushed loseConnection()."""
    return (all(hasattr(transportClass, name) for name in _REQUIRED_CLOSE)
            and getattr(transportClass, "_postLoseConnection", None) is abstract.FileDescriptor._postLoseConnection)


_classes: dict[type, type] = {}


def sendAtOnceClass(transportClass: type) -> type | None:
    """The send-at-once subclass of a transport class, or None if it lacks what the mixin needs."""
    if transportClass in _classes:
        return _classes[transportClass]
    if issubclass(transportClass, SendAtOnce):
        return transportClass
    if not all(hasattr(transportClass, name) for name in _REQUIRED):
        return None
    subclass = type(f"SendAtOnce{transportClass.__name__}", (SendAtOnce, transportClass),
                    {"closeAtEOF": _canCloseAtEOF(transportClass)})
    _classes[transportClass] = subclass
    return subclass


def installSendAtOnce(port: Any) -> bool:
    """Make the connections a listening port accepts send at once; return whether it could."""
    if not isinstance(port, tcp.Port):  # unix.Port is a tcp.Port too
        return False
    subclass = sendAtOnceClass(port.transport)
    if subclass is None:
        return False
    port.transport = subclass
    return True
