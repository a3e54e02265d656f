"""A ceiling on message lines: per source, a token bucket; what it holds back is counted and summarised.

Every message is logged by default, so without a ceiling one client sending
small messages as fast as it can writes the log as fast as the disk takes it.
L{MessageLimiter} lets each source (the peer's IP address; every Unix-socket
peer together) log C{--log-burst} lines at once and C{--log-rate} lines per
second after that, which is more than any normal use of the tutorial's
services sends.  The lines held back are counted (C{sockd_log_suppressed_total}
in C{/metrics}) and summarised, as journald does, in one line per source and
interval::

    suppressed 48,211 messages from 127.0.0.1 in the last 10 s

The bucket is kept in its GCRA form (one "theoretical arrival time" per
source), so a message costs a clock read, a dictionary look-up and a
comparison.  The table of sources is bounded (L{MessageLimiter.maxSources});
its idle entries (a full bucket) are dropped when a summary is written, and
when it is full a new source shares one bucket with every other newcomer, so
many addresses cannot buy many bursts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

#: The source of every Unix-socket peer (they have no address of their own).
UNIX = "Unix-socket peers"
#: The shared source of newcomers while the table is full.
OTHERS = "other sources (too many to track)"

log = Logger(namespace="sockd.messages")


def sourceOf(peer: Any) -> str:
    """The source of a message: the IP address of its connection, address or C{(host, port)}, or L{UNIX}."""
    getPeer = getattr(peer, "getPeer", None)
    address = getPeer() if getPeer is not None else peer
    host = getattr(address, "host", None)
    if type(host) is str:
        return host
    if type(address) is tuple and address:
        return str(address[0])
    return UNIX


class MessageLimiter:
    """Per-source token buckets for message lines (C{--log-rate}, C{--log-burst}), with journald-style summaries.

    @ivar suppressed: message lines held back since start (the metric).
    """

    #: Seconds between two summaries of one source's suppressed lines.
    interval = 10.0
    #: Sources tracked at once; newcomers beyond it share one bucket.
    maxSources = 1024

    def __init__(self, rate: float, burst: int, clock: Any) -> None:
        self.clock = clock
        self._seconds = clock.seconds
        # The last stream peer and its source: a connection's messages come in runs, so most look-ups end here.
        # (Holding the peer keeps it alive, so no other object can take its identity.)
        self._lastPeer: Any = None
        self._lastSource = UNIX
        self.suppressed = 0
        #: Per source: when its bucket would be full again, plus one interval (GCRA's arrival time).
        self._due: dict[str, float] = {}
        #: Lines held back per source since the last summary.
        self._held: dict[str, int] = {}
        self._since = 0.0
        self._pruned = float("-inf")
        self._call: Any = None
        self.reconfigure(rate, burst)

    def reconfigure(self, rate: float, burst: int) -> None:
        """New limits (a reload; C{rate} 0: no limit); buckets keep their state."""
        self.rate = rate
        self.burst = burst
        self._step = 1.0 / rate if rate else 0.0
        # A burst of `burst` lines fits; the half step absorbs the rounding of repeated additions.
        self._window = (burst + 0.5) * self._step if rate else float("inf")

    def allowPeer(self, peer: Any) -> bool:
        """L{allow} for the source of C{peer} (a connection, an address, a C{(host, port)} pair)."""
        if peer is not self._lastPeer:
            self._lastSource = sourceOf(peer)
            self._lastPeer = peer
        return self.allow(self._lastSource)

    def gate(self, source: str, write: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """C{write} behind C{source}'s bucket: one connection's message log, its source found once.

        The check is L{allow}'s, repeated here because it runs for every
        message of a flood and a call less per message is most of its cost.
        """
        dues = self._due
        seconds = self._seconds

        def gated(message: bytes) -> None:
            now = seconds()
            due = dues.get(source)
            if due is None:
                if self._newcomer(source, now):
                    write(message)
                return
            if due < now:
                due = now
            due += self._step
            if due - now > self._window:
                self._hold(source, now)
                return
            dues[source] = due
            write(message)

        return gated

    def allow(self, source: str) -> bool:
        """Whether a message line from C{source} is logged now; if not, it is counted for the summary."""
        now = self._seconds()
        due = self._due.get(source)
        if due is None:
            return self._newcomer(source, now)
        if due < now:
            due = now
        due += self._step
        if due - now > self._window:
            self._hold(source, now)
            return False
        self._due[source] = due
        return True

    def _newcomer(self, source: str, now: float) -> bool:
        """A source not in the table: it starts with a full bucket, or shares L{OTHERS}' if the table is full."""
        if len(self._due) >= self.maxSources:
            if now - self._pruned >= 1.0:
                self._prune(now)
            if len(self._due) >= self.maxSources:
                due = self._due.get(OTHERS, now)
                due = max(due, now) + self._step
                if due - now > self._window:
                    self._hold(OTHERS, now)
                    return False
                self._due[OTHERS] = due
                return True
        self._due[source] = now + self._step
        return True

    def _hold(self, source: str, now: float) -> None:
        self.suppressed += 1
        self._held[source] = self._held.get(source, 0) + 1
        if self._call is None:
            self._since = now
            self._call = self.clock.callLater(self.interval, self.report)

    def _prune(self, now: float) -> None:
        """Forget sources whose bucket is full again: they would start afresh anyway."""
        self._pruned = now
        for source in [s for s, due in self._due.items() if due <= now]:
            del self._due[source]

    def report(self) -> None:
        """Write one summary line per source with lines held back since the last report."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        held, self._held = self._held, {}
        now = self.clock.seconds()
        seconds = max(1, round(now - self._since))
        for source, count in held.items():
            log.info("suppressed {count:,} messages from {source} in the last {seconds} s",
                     count=count, source=source, seconds=seconds)
        self._prune(now)


__all__ = ["OTHERS", "UNIX", "MessageLimiter", "sourceOf"]
