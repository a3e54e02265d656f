"""Stream faults: answers delayed, trickled, sliced, corrupted, cut off by a reset, or never sent.

L{FaultFactory} wraps a service factory (inside the policy layer, so
admission, the idle timeout and the byte counts still see the real
connection); its L{FaultProtocol} is the transport its service writes to.
Every answer (each C{write}) is given a time to leave:

  - C{delay}/C{jitter}: now plus a delay drawn per answer; a stream keeps its
    order, so an answer never leaves before the one written before it;
  - C{rate}: pieces of at most a twentieth of a second's worth, spaced so the
    connection carries at most C{rate} bytes a second;
  - C{slice}: pieces of C{slice} bytes, C{slice-delay} apart;
  - C{corrupt}: one bit flipped in the answer (before slicing);
  - C{reset-after}: once exactly that many answer bytes have left (and the
    peer's kernel has acknowledged them), the connection is reset
    (C{SO_LINGER} 0, then abort); later answers are discarded;
  - C{stall}: answers are discarded and the connection is kept open (closed,
    with a FIN, after the stall time if it is not C{forever}).

Bytes waiting to leave are held here.  While more than C{hold} bytes wait,
or the transport's own buffer is full (the peer is not reading), reading from
the peer and any producer of the service are paused: a client that sends and
never reads costs at most C{hold} bytes.  A service that writes on regardless
past four times C{hold} has its connection aborted (counted as C{overflow}).
A close asked by the service waits until the held answers have left.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
from collections import deque
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IPullProducer, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from sockd.defences.relay import TransportRelay
from sockd.faults.events import FaultEvents, flipBit
from sockd.interfaces import IPendingInput, IReadPausingTransport, IStreamTransport
from sockd.observe.addresses import formatAddress

#: A connection whose service writes past this many times C{hold} (ignoring the pause) is aborted.
OVERFLOW_FACTOR = 4
#: How often a reset waits for the peer to acknowledge the last bytes (seconds), and for how long at most.
RESET_POLL = 0.002
RESET_PATIENCE = 10.0
_LINGER_ZERO = struct.pack("ii", 1, 0)


@implementer(IPushProducer)
class _Downstream:
    """Registered with the real transport: tells the fault layer when the peer stops and resumes reading."""

    def __init__(self, owner: FaultProtocol) -> None:
        self.owner = owner

    def pauseProducing(self) -> None:
        self.owner._downstreamPaused = True
        self.owner._updateFlow()

    def resumeProducing(self) -> None:
        self.owner._downstreamPaused = False
        self.owner._updateFlow()
        self.owner._pump()

    def stopProducing(self) -> None:
        """The connection is going; nothing of ours to stop."""


@implementer(IPullProducer)
class _WhenDrained:
    """A pull producer registered to learn when the transport's buffer is empty: its second call says so."""

    def __init__(self, first: Any, drained: Any) -> None:
        self.calls = 0
        self.first = first
        self.drained = drained

    def resumeProducing(self) -> None:
        self.calls += 1
        if self.calls == 1:
            self.first()
        elif self.calls == 2:
            self.drained()

    def stopProducing(self) -> None:
        """The connection went first."""


@implementer(IHalfCloseableProtocol, IReadPausingTransport, IPendingInput)
class FaultProtocol(TransportRelay, Protocol):
    """Between the policy layer (its transport) and one service protocol: holds and spoils its answers."""

    transport: IStreamTransport

    factory: FaultFactory
    disconnecting = 0

    def __init__(self, factory: FaultFactory, wrappedProtocol: Any, number: int) -> None:
        self.factory = factory
        self.wrappedProtocol = wrappedProtocol
        self.faults = factory.events.faults
        self.rng = factory.events.rng(number)
        self._queue: deque[tuple[float, bytes]] = deque()
        self._held = 0
        self._lastDue = 0.0
        self._nextFree = 0.0
        self._call: Any = None
        self._closing = False
        self._accepted = 0
        self._resetPending = False
        self._resetting = False
        self._resetDeadline = 0.0
        self._downstream = _Downstream(self)
        self._downstreamPaused = False
        self._blocked = False
        self._servicePausedReading = False
        self._readingPaused = False
        self._producer: Any = None
        self._streaming = True
        self._pullCall: Any = None
        self._stallCall: Any = None
        self._lost = False

    @property
    def peerName(self) -> str:
        return formatAddress(self.transport.getPeer()) if self.transport is not None else "?"

    # The connection

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        transport.registerProducer(self._downstream, True)
        faults = self.faults
        if faults.stall is not None and faults.stall != float("inf"):
            self._stallCall = self.factory.clock.callLater(faults.stall, self._endStall)
        self.wrappedProtocol.makeConnection(self)
        if faults.resetAfter == 0:
            self._resetPending = True
            self._startReset(b"")

    def dataReceived(self, data: bytes) -> None:
        self.wrappedProtocol.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        for name in ("_call", "_pullCall", "_stallCall"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
        self._queue.clear()
        self._held = 0
        wrapped, self.wrappedProtocol = self.wrappedProtocol, None
        if wrapped is not None:
            wrapped.connectionLost(reason)

    # The service's transport

    def write(self, data: bytes) -> None:
        if not data or self._lost or self._resetting:
            return
        faults = self.faults
        events = self.factory.events
        if faults.stall is not None:
            events.note("stall", self.peerName, f"{len(data)} answer bytes not sent")
            return
        if faults.resetAfter is not None:
            room = faults.resetAfter - self._accepted
            if room <= 0:
                return
            if len(data) >= room:
                data = data[:room]
                self._resetPending = True
            self._accepted += len(data)
        rng = self.rng
        if faults.corrupt and rng.random() < faults.corrupt:
            data = flipBit(data, rng)
            events.note("corrupt", self.peerName, "flipped a bit of an answer")
        now = self.factory.clock.seconds()
        due = max(now, self._lastDue)
        if faults.delays:
            due = max(now + faults.sampleDelay(rng), self._lastDue)
            events.note("delay", self.peerName, f"answer held {1000 * (due - now):.1f} ms")
        if faults.slice:
            size = faults.slice
            if len(data) > size:
                events.note("slice", self.peerName, f"{len(data)} bytes in pieces of {size}")
        elif faults.rate:
            size = max(1, faults.rate // 20)
        else:
            size = len(data)
        step = faults.sliceDelay if faults.slice else 0.0
        if faults.rate:
            events.note("rate", self.peerName, f"{len(data)} bytes at {faults.rate} bytes/s")
        for i, start in enumerate(range(0, len(data), size)):
            piece = data[start : start + size]
            at = due + i * step
            if faults.rate:
                at = max(at, self._nextFree)
                self._nextFree = at + len(piece) / faults.rate
            self._queue.append((at, piece))
            self._lastDue = at
        self._held += len(data)
        if self._held > OVERFLOW_FACTOR * faults.hold:
            events.note("overflow", self.peerName, f"more than {OVERFLOW_FACTOR * faults.hold} answer bytes held: "
                        "aborting the connection")
            self.transport.abortConnection()
            return
        self._pump()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self._lost or self.faults.stall is not None or self._resetting:
            return  # a stall keeps the connection open; a reset ends it its own way
        self._closing = True
        self.disconnecting = 1
        if not self._queue:
            self._close()

    def _close(self) -> None:
        self._closing = False
        self.transport.loseConnection()

    def abortConnection(self) -> None:
        self._queue.clear()
        self.transport.abortConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer
        self._streaming = streaming
        if streaming:
            if self._blocked:
                producer.pauseProducing()
        else:
            self._schedulePull()

    def unregisterProducer(self) -> None:
        self._producer = None
        if self._pullCall is not None and self._pullCall.active():
            self._pullCall.cancel()
        self._pullCall = None

    def pauseReadingWhileBlocked(self) -> None:
        """L{IReadPausingTransport}: reading already pauses here whenever answers are held back or blocked."""

    def pauseProducing(self) -> None:
        """The service asks to stop reading from its peer."""
        self._servicePausedReading = True
        self._applyReading()

    def resumeProducing(self) -> None:
        """The service asks to read again."""
        self._servicePausedReading = False
        self._applyReading()

    def flushPending(self) -> None:
        """Shutdown: send what is held now, then let the service answer what it holds."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        while self._queue and not self._lost:
            self._deliver(self._queue.popleft()[1])
        self._held = 0
        pending = IPendingInput(self.wrappedProtocol, None)
        if pending is not None:
            pending.flushPending()

    # Sending held answers

    def _pump(self) -> None:
        """Send every piece whose time has come; wake again for the next."""
        if self._lost:
            return
        clock = self.factory.clock
        now = clock.seconds()
        queue = self._queue
        while queue and queue[0][0] <= now and not self._resetting:
            if self._downstreamPaused:
                break  # the peer is not reading: keep it here, where it is counted against hold
            _, piece = queue.popleft()
            self._held -= len(piece)
            if self._resetPending and not queue:
                self._startReset(piece)
                return
            self._deliver(piece)
        call = self._call
        if queue and not self._downstreamPaused:
            wait = queue[0][0] - now
            if call is None or not call.active():
                self._call = clock.callLater(wait, self._fire)
            elif abs(call.getTime() - queue[0][0]) > 1e-9:
                call.reset(wait)
        elif not queue and self._closing:
            self._close()
            return
        self._updateFlow()

    def _fire(self) -> None:
        self._call = None
        self._pump()

    def _deliver(self, piece: bytes) -> None:
        self.transport.write(piece)

    # Flow control

    def _updateFlow(self) -> None:
        blocked = self._downstreamPaused or self._held >= self.faults.hold
        if blocked != self._blocked:
            self._blocked = blocked
            producer = self._producer
            if producer is not None and self._streaming:
                if blocked:
                    producer.pauseProducing()
                else:
                    producer.resumeProducing()
            self._applyReading()
        if not blocked and self._producer is not None and not self._streaming:
            self._schedulePull()

    def _applyReading(self) -> None:
        paused = self._blocked or self._servicePausedReading
        if paused != self._readingPaused and not self._lost and self.transport is not None:
            self._readingPaused = paused
            if paused:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _schedulePull(self) -> None:
        if self._pullCall is None or not self._pullCall.active():
            self._pullCall = self.factory.clock.callLater(0, self._pull)

    def _pull(self) -> None:
        self._pullCall = None
        if self._producer is not None and not self._streaming and not self._blocked and not self._lost:
            self._producer.resumeProducing()

    # Stall and reset

    def _endStall(self) -> None:
        self._stallCall = None
        self.factory.events.note("stall", self.peerName, f"closing after stalling {self.faults.stall:g}s")
        self.transport.loseConnection()

    def _startReset(self, last: bytes) -> None:
        """Send C{last}, wait until the transport's buffer is empty and the peer has it all, then reset."""
        self._resetting = True
        transport = self.transport
        transport.unregisterProducer()  # the flow-control producer gives way to one that hears the buffer drain
        transport.registerProducer(_WhenDrained(lambda: transport.write(last) if last else None,
                                                self._waitForAcknowledgement), False)
        if not last:
            self._waitForAcknowledgement()

    def _waitForAcknowledgement(self) -> None:
        self._resetDeadline = self.factory.clock.seconds() + RESET_PATIENCE
        self._checkAcknowledged()

    def _checkAcknowledged(self) -> None:
        if self._lost:
            return
        getHandle = getattr(self.transport, "getHandle", None)
        handle = getHandle() if getHandle is not None else None
        unacknowledged = 0
        if isinstance(handle, socket.socket):
            try:
                unacknowledged = struct.unpack("i", fcntl.ioctl(handle.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
            except OSError:
                unacknowledged = 0
        if unacknowledged and self.factory.clock.seconds() < self._resetDeadline:
            self._call = self.factory.clock.callLater(RESET_POLL, self._checkAcknowledged)
            return
        self._call = None
        if isinstance(handle, socket.socket):
            try:
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            except OSError:
                pass
        self.factory.events.note("reset", self.peerName, f"reset after {self._accepted} answer bytes")
        self.transport.unregisterProducer()
        self.transport.abortConnection()


class FaultFactory(WrappingFactory):
    """Wrap a service factory so that each connection's answers suffer the listener's faults."""

    protocol = FaultProtocol  # type: ignore[assignment]  # Twisted's stub wants a ProtocolWrapper
    noisy = False

    def __init__(self, wrappedFactory: Any, events: FaultEvents, clock: IReactorTime) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]  # Twisted's, untyped
        self.events = events
        self.clock = clock
        #: Connections made so far: a seeded listener's n-th connection always draws the same numbers.
        self.made = 0

    def buildProtocol(self, addr: Any) -> FaultProtocol | None:  # type: ignore[override]
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        self.made += 1
        return self.protocol(self, wrapped, self.made)

    # WrappingFactory keeps a dict of live protocols; nothing here needs it.
    def registerProtocol(self, p: Any) -> None:
        pass

    def unregisterProtocol(self, p: Any) -> None:
        pass
