"""Warnings that can come once per connection, logged as one line per interval with counts.

A full descriptor table (EMFILE) makes every waiting connection fail the same
way: hundreds of identical lines in a second, which fill the disk and hide
everything else, as refusals would without their throttle.  L{WarningSummary}
logs the first occurrence at once and then, while they keep coming, one line
per interval saying how many of each there were.  L{TwistedAcceptWarnings} does
the same for Twisted's own reactors' accept-loop lines, as a log filter.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import ILogFilterPredicate, LogEvent, Logger, LogLevel, PredicateResult
from zope.interface import implementer

__all__ = ["ACCEPT_WARNINGS", "TWISTED_ACCEPT_FORMATS", "TwistedAcceptWarnings", "WarningSummary"]

#: The default interval, the same as refusals' (C{--refusal-log-interval}).
INTERVAL = 10.0


class WarningSummary:
    """Log the first of a kind of event at once, then one line per C{interval} with the counts, while they come.

    C{clock}: the reactor (looked up when first needed if not given: a log
    filter is built before the reactor is chosen).
    """

    def __init__(self, log: Logger, interval: float = INTERVAL, clock: IReactorTime | None = None,
                 level: LogLevel = LogLevel.warn) -> None:
        self.log = log
        self.interval = interval
        self.clock = clock
        self.level = level
        self.counts: Counter[str] = Counter()
        self._window: IDelayedCall | None = None

    def note(self, what: str) -> None:
        """One more event described by C{what} (events with the same text are counted together)."""
        if self._window is not None:
            self.counts[what] += 1
            return
        self.log.emit(self.level, "{what}; more like it are counted and logged every {interval:g}s",
                      what=what, interval=self.interval)
        self._open()

    def _open(self) -> None:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        assert self.clock is not None
        self._window = self.clock.callLater(self.interval, self._flush)

    def _flush(self) -> None:
        self._window = None
        if not self.counts:
            return  # a quiet interval: the next event is logged at once again
        summary = "; ".join(f"{count} x {what}" for what, count in sorted(self.counts.items()))
        self.counts.clear()
        self.log.emit(self.level, "in the last {interval:g}s: {summary}", summary=summary, interval=self.interval)
        self._open()

    def stop(self) -> None:
        """Cancel the pending summary (a test's clean-up; a daemon's last interval is simply not reported)."""
        if self._window is not None and self._window.active():
            self._window.cancel()
        self._window = None


#: Twisted's per-connection accept messages (twisted.internet.tcp), and how each is summed up.
TWISTED_ACCEPT_FORMATS = {
    "EMFILE encountered; releasing reserved file descriptor.": "descriptor table full (EMFILE)",
    "EMFILE recovery: Closed socket from {address}": "connection closed unanswered: descriptor table full (EMFILE)",
    "Re-reserving EMFILE recovery file descriptor.": None,  # the end of each recovery: says nothing more
    "Could not accept new connection ({acceptError})": "could not accept a connection",
}


@implementer(ILogFilterPredicate)
class TwistedAcceptWarnings:
    """A log filter predicate: Twisted's reactors' per-connection accept lines, summed up by a L{WarningSummary}."""

    def __init__(self, summary: WarningSummary | None = None) -> None:
        self.summary = summary or WarningSummary(Logger(namespace="sockd.accept"))

    def __call__(self, event: LogEvent) -> PredicateResult:
        what = TWISTED_ACCEPT_FORMATS.get(event.get("log_format") or "", "")
        if what == "":
            return PredicateResult.maybe
        # Every observer's filter sees the same event: count it once.
        if what is not None and not event.get("sockd_summed"):
            event["sockd_summed"] = True
            if "acceptError" in event:
                what = f"{what} ({event['acceptError']})"
            self.summary.note(what)
        return PredicateResult.no


#: The one filter every sockd observer puts in front of itself (one summary for the process, as one reactor).
ACCEPT_WARNINGS = TwistedAcceptWarnings()
