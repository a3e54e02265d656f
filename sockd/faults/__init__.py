"""Faults on purpose: listeners that delay, drop, duplicate, reorder, corrupt, trickle, slice, reset or stall.

A listen description's fault options (L{sockd.config.faults}) put one wrapper
between the policy layer and the service: L{sockd.faults.stream.FaultFactory}
for streams, L{sockd.faults.datagram.FaultDatagramProtocol} for datagrams.  A
listener without fault options has no wrapper at all.  The defences stay in
front: admission and access lists before any fault, held answers in bounded
memory, extra datagram copies through the reflection budget.
"""

__all__ = ["datagram", "events", "stream"]
