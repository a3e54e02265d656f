"""Counting and logging the faults one listener applies: every one counted, few logged.

Each fault done is counted in C{sockd_faults_total{service,transport,fault}}.
The message log gets one line per listener and fault kind at most every
L{LOG_INTERVAL} seconds (a lossy listener drops thousands of answers a
second; the log says that it does, and the counter says how many).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.logger import Logger

from sockd.config.faults import Faults
from sockd.defences.ratelimit import LogThrottle
from sockd.observe.metrics import ListenerStats

log = Logger(namespace="sockd.faults")

#: One line per listener and fault kind at most this often (seconds).
LOG_INTERVAL = 60.0


class FaultEvents:
    """The faults of one listener: its settings, its counters, its throttled log."""

    def __init__(self, faults: Faults, stats: ListenerStats, seconds: Callable[[], float], description: str) -> None:
        self.faults = faults
        self.stats = stats
        self.description = description
        self.throttle = LogThrottle(LOG_INTERVAL, seconds, maxKeys=64)
        stats.expect(faults=True)

    def rng(self, stream: int | None = None) -> random.Random:
        """A random source: from the seed (and, for a stream, the connection's number), or the system's."""
        seed = self.faults.seed
        if seed is None:
            return random.Random()
        return random.Random(seed if stream is None else f"{seed}/{stream}")

    def note(self, fault: str, peer: str, what: str, count: int = 1) -> None:
        """C{fault} was done C{count} times (to C{peer}): count it, and log it if not logged lately."""
        stats = self.stats
        stats.faults[fault] = stats.faults.get(fault, 0) + count
        if self.throttle.allow(fault):
            log.info("{service}/{transport}: fault {fault}: {what} ({peer}); {fault} not logged again for "
                     "{interval:g}s, see sockd_faults_total", service=stats.service, transport=stats.transport,
                     fault=fault, what=what, peer=peer, interval=self.throttle.interval,
                     description=self.description)


def flipBit(data: bytes, rng: random.Random) -> bytes:
    """C{data} with one bit, chosen by C{rng}, flipped (empty data stays empty)."""
    if not data:
        return data
    bit = rng.randrange(len(data) * 8)
    changed = bytearray(data)
    changed[bit >> 3] ^= 1 << (bit & 7)
    return bytes(changed)
