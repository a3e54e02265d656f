"""Datagram faults: answers delayed, dropped, duplicated, reordered, corrupted, or never sent.

L{FaultDatagramProtocol} sits inside the datagram guard (so access lists and
the reflection defences still decide which datagrams are answered at all) and
gives its service a transport that spoils answers.  For each answer, in this
order and with one random source per listener (seeded by C{seed=}):

  - C{stall}: not sent;
  - C{loss}: dropped with that probability;
  - C{corrupt}: one bit flipped with that probability;
  - C{duplicate}: a second copy with that probability;
  - C{delay}/C{jitter}: each copy waits its own drawn delay, so with jitter
    answers overtake each other as on a real network;
  - C{reorder}: held back with that probability until the next answer to the
    same peer has gone (or C{reorder-wait} has passed), so it arrives after it.

A duplicate is an extra answer the request did not pay for: it is sent only if
the guard's policy (access lists, source port, per-source rate, global budget)
would answer a datagram from that peer now, and otherwise counted as
C{budget}.  Answers waiting (delayed or held back) take at most C{hold} bytes
per listener; beyond it an answer is dropped and counted as C{overflow}.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from zope.interface import implementer

from sockd.faults.events import FaultEvents, flipBit


def _peer(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)


class FaultDatagramProtocol(DatagramProtocol):
    """Wrap a service's datagram protocol; its answers suffer the listener's faults."""

    noisy = False

    def __init__(self, inner: DatagramProtocol, events: FaultEvents, clock: IReactorTime,
                 verdict: Callable[[str, int], str | None]) -> None:
        self.inner = inner
        self.events = events
        self.faults = events.faults
        self.clock = clock
        #: The guard's judgement of a peer now (None: it may be answered), asked before sending a duplicate.
        self.verdict = verdict
        self.rng = events.rng()
        self._heap: list[tuple[float, int, bytes, Any, bool]] = []
        self._order = 0
        self._held = 0
        self._call: Any = None
        #: Answers held back for the next answer to their peer to overtake: peer -> (datagram, extra, timer).
        self._heldBack: dict[Any, tuple[bytes, bool, Any]] = {}

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.inner.makeConnection(_FaultyTransport(self, transport))

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.inner.datagramReceived(datagram, addr)

    def doStop(self) -> None:
        """Stopping (a reload's new service, or shutdown): what waits is sent now rather than lost."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        waiting = sorted(self._heap)
        self._heap = []
        for _, _, datagram, addr, extra in waiting:
            self._send(datagram, addr, extra)
        for addr in list(self._heldBack):
            self._releaseHeld(addr)
        self._held = 0
        self.inner.doStop()
        super().doStop()  # type: ignore[no-untyped-call]  # Twisted's, untyped

    # Answers

    def answer(self, datagram: bytes, addr: Any) -> None:
        """What the service's C{transport.write} does: decide this answer's fate."""
        faults = self.faults
        events = self.events
        rng = self.rng
        if faults.stall is not None:
            events.note("stall", _peer(addr), "answer not sent")
            return
        if faults.loss and rng.random() < faults.loss:
            events.note("loss", _peer(addr), "answer dropped")
            return
        if faults.corrupt and rng.random() < faults.corrupt:
            datagram = flipBit(datagram, rng)
            events.note("corrupt", _peer(addr), "flipped a bit of an answer")
        copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
        if copies == 2:
            events.note("duplicate", _peer(addr), "answer sent twice")
        reorder = bool(faults.reorder) and rng.random() < faults.reorder
        delays = [faults.sampleDelay(rng) for _ in range(copies)] if faults.delays else [0.0] * copies
        if faults.delays:
            events.note("delay", _peer(addr), f"answer held {1000 * delays[0]:.1f} ms", count=copies)
        for copy, delay in enumerate(delays):
            if self._held + len(datagram) > faults.hold and (delay > 0 or reorder):
                events.note("overflow", _peer(addr), f"more than {faults.hold} answer bytes waiting: dropped")
                continue
            extra = copy == 1
            if reorder and copy == 0:
                self._holdBack(datagram, addr, extra, delay)
            elif delay > 0:
                self._schedule(self.clock.seconds() + delay, datagram, addr, extra)
            else:
                self._send(datagram, addr, extra)

    def _holdBack(self, datagram: bytes, addr: Any, extra: bool, delay: float) -> None:
        if addr in self._heldBack:  # one held back per peer: this one goes its way and lets the other out
            if delay:
                self._schedule(self.clock.seconds() + delay, datagram, addr, extra)
            else:
                self._send(datagram, addr, extra)
            return
        self._held += len(datagram)
        timer = self.clock.callLater(delay + self.faults.reorderWait, self._releaseHeld, addr)
        self._heldBack[addr] = (datagram, extra, timer)
        self.events.note("reorder", _peer(addr), "answer held back for the next to overtake")

    def _releaseHeld(self, addr: Any) -> None:
        entry = self._heldBack.pop(addr, None)
        if entry is None:
            return
        datagram, extra, timer = entry
        if timer.active():
            timer.cancel()
        self._held -= len(datagram)
        self._transmit(datagram, addr, extra)

    def _schedule(self, due: float, datagram: bytes, addr: Any, extra: bool) -> None:
        self._order += 1
        heapq.heappush(self._heap, (due, self._order, datagram, addr, extra))
        self._held += len(datagram)
        self._arm()

    def _arm(self) -> None:
        if not self._heap:
            return
        due = self._heap[0][0]
        call = self._call
        wait = max(0.0, due - self.clock.seconds())
        if call is None or not call.active():
            self._call = self.clock.callLater(wait, self._fire)
        elif call.getTime() > due:
            call.reset(wait)

    def _fire(self) -> None:
        self._call = None
        now = self.clock.seconds()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, datagram, addr, extra = heapq.heappop(heap)
            self._held -= len(datagram)
            self._send(datagram, addr, extra)
        self._arm()

    def _send(self, datagram: bytes, addr: Any, extra: bool) -> None:
        """Send now; then let out an answer held back for this peer, which this one has overtaken."""
        self._transmit(datagram, addr, extra)
        if addr in self._heldBack:
            self._releaseHeld(addr)

    def _transmit(self, datagram: bytes, addr: Any, extra: bool) -> None:
        if extra and isinstance(addr, tuple):
            if self.verdict(addr[0], addr[1]) is not None:
                self.events.note("budget", _peer(addr), "duplicate not sent: the reflection defences refuse it")
                return
        if self.transport is not None:
            self.transport.write(datagram, addr)


@implementer(IUDPTransport)
class _FaultyTransport:
    """The datagram transport as an impaired service sees it: C{write} goes through the faults."""

    def __init__(self, owner: FaultDatagramProtocol, transport: Any) -> None:
        self._owner = owner
        self._transport = transport

    def write(self, datagram: bytes, addr: Any = None) -> None:
        """Send an answer, as the faults decide (IUDPTransport)."""
        self._owner.answer(datagram, addr)

    def connect(self, host: str, port: int) -> None:
        """Connect the port to one peer (IUDPTransport)."""
        self._transport.connect(host, port)

    def getHost(self) -> Any:
        """The port's own address (IUDPTransport)."""
        return self._transport.getHost()

    def stopListening(self) -> Any:
        """Close the port (IUDPTransport)."""
        return self._transport.stopListening()

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """Allow or forbid broadcast (IUDPTransport)."""
        self._transport.setBroadcastAllowed(enabled)

    def getBroadcastAllowed(self) -> bool:
        """Whether broadcast is allowed (IUDPTransport)."""
        return bool(self._transport.getBroadcastAllowed())
