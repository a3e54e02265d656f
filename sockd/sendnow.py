"""Send at once when nothing is queued, instead of on the next reactor turn.

A Twisted TCP transport queues every C{write()} until the reactor's next turn
(twisted#5303); asyncio sends at once.  For a request/response service that
costs a whole extra trip through the event loop per answer.  L{SendAtOnce}
is a transport mixin: when the transport's buffer is empty it hands the data
straight to C{writeSomeData} (the transport's own send, which already deals
with EWOULDBLOCK and errors), and queues only what the kernel did not take.
Ordering is kept because nothing is ever sent around queued data.

It is installed per listening port by replacing the port's C{transport}
class, a subclass of the one Twisted chose; if Twisted's transport no longer
has the attributes this relies on, the port is left as it was.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp

_REQUIRED = ("writeSomeData", "dataBuffer", "disconnecting", "_writeDisconnected", "producer", "streamingProducer")


class SendAtOnce:
    """Mixin for C{twisted.internet.tcp.Connection} subclasses."""

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
        super().write(data)  # type: ignore[misc]


_classes: dict[type, type] = {}


def sendAtOnceClass(transportClass: type) -> type | None:
    """The send-at-once subclass of a transport class, or None if it lacks what the mixin needs."""
    if transportClass in _classes:
        return _classes[transportClass]
    if issubclass(transportClass, SendAtOnce):
        return transportClass
    if not all(hasattr(transportClass, name) for name in _REQUIRED):
        return None
    subclass = type(f"SendAtOnce{transportClass.__name__}", (SendAtOnce, transportClass), {})
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
