"""Who may open a stream connection: access lists, connection counts and rates.

One L{Admission} is shared by every stream listener, so the totals are the
daemon's totals (xinetd's instances, per_source and cps) and a reload changes
them in one place.  Its memory is bounded whatever the number of peers.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from sockd.config.settings import Settings
from sockd.defences.access import HostRules, sourceKey
from sockd.defences.ratelimit import KeyedBuckets, LogThrottle

log = Logger(namespace="sockd.admission")


class Limits:
    """The admission rules of one configuration; replaced whole on reload."""

    def __init__(self, settings: Settings, seconds: Callable[[], float]) -> None:
        self.rules = HostRules(settings.allow, settings.deny, settings.exempt)
        self.maxConnections = settings.max_connections
        self.maxPerSource = settings.max_per_source
        self.rates = KeyedBuckets(settings.connection_rate, settings.connection_burst, seconds)


class Admission:
    """Admits or refuses new connections and keeps the counts they are judged by."""

    def __init__(self, settings: Settings, seconds: Callable[[], float], daemon: Admission | None = None) -> None:
        self.seconds = seconds
        #: A service with limits of its own ([echo] in the file) also counts towards the daemon's total.
        self.daemon = daemon
        self.limits = Limits(settings, seconds)
        self.refusalLog = LogThrottle(settings.refusal_log_interval, seconds)
        self.total = 0
        self.perSource: dict[str, int] = {}
        #: Connections held by L{hold} per (non-exempt) real peer: apart from C{perSource}, which counts clients,
        #: so a balancer's waiting connections never use up the places of a client that has its address.
        self.waiting: dict[str, int] = {}

    def reconfigure(self, settings: Settings) -> None:
        """Apply new limits at once; connections already open are counted on."""
        self.limits = Limits(settings, self.seconds)
        self.refusalLog.interval = settings.refusal_log_interval

    def admit(self, host: str | None, claimed: bool = False) -> str | None:
        """Count a new connection from C{host} and return None, or return why it is refused.

        C{claimed}: the address came from a PROXY header, not the socket, so
        C{--exempt} does not apply (a header saying 127.0.0.1 earns nothing).
        """
        limits = self.limits
        daemon = self.daemon
        if daemon is not None and daemon.limits.maxConnections and daemon.total >= daemon.limits.maxConnections:
            return "max-connections"
        if host is None:
            if limits.maxConnections and self.total >= limits.maxConnections:
                return "max-connections"
            self._count()
            return None
        verdict = limits.rules.lookup(host)
        if not verdict.allowed:
            return "access"
        if limits.maxConnections and self.total >= limits.maxConnections:
            return "max-connections"
        key = verdict.key
        perSource = self.perSource
        if claimed or not verdict.exempt:
            if limits.maxPerSource and perSource.get(key, 0) >= limits.maxPerSource:
                return "per-source"
            if not limits.rates.take(key):
                return "rate"
        perSource[key] = perSource.get(key, 0) + 1
        self._count()
        return None

    def hold(self, host: str | None) -> str | None:
        """Count a connection whose service is not built yet (its PROXY header has not come), by its real peer.

        Undone by L{releaseHold}.

        Only the totals apply: C{max_connections} and the real peer's
        C{max_per_source} (unless exempt).  The access lists and the rate are
        for the client the header names, judged by L{admit} once it arrives.
        """
        daemon = self.daemon
        if daemon is not None and daemon.limits.maxConnections and daemon.total >= daemon.limits.maxConnections:
            return "max-connections"
        limits = self.limits
        if limits.maxConnections and self.total >= limits.maxConnections:
            return "max-connections"
        if host is not None:
            verdict = limits.rules.lookup(host)
            if not verdict.exempt:
                key = verdict.key
                waiting = self.waiting.get(key, 0)
                if limits.maxPerSource and waiting >= limits.maxPerSource:
                    return "per-source"
                self.waiting[key] = waiting + 1
        self._count()
        return None

    def releaseHold(self, host: str | None) -> None:
        """Forget one connection that L{hold} counted."""
        self.total -= 1
        if self.daemon is not None:
            self.daemon.total -= 1
        if host is not None:
            key = sourceKey(host)
            left = self.waiting.get(key, 0) - 1
            if left > 0:
                self.waiting[key] = left
            else:
                self.waiting.pop(key, None)

    def _count(self) -> None:
        self.total += 1
        if self.daemon is not None:
            self.daemon.total += 1

    def release(self, host: str | None) -> None:
        """Forget one connection from C{host} that L{admit} counted."""
        self.total -= 1
        if self.daemon is not None:
            self.daemon.total -= 1
        if host is not None:
            key = sourceKey(host)
            left = self.perSource.get(key, 1) - 1
            if left > 0:
                self.perSource[key] = left
            else:
                self.perSource.pop(key, None)

    def noteRefusal(self, service: str, transport: str, host: str | None, reason: str) -> None:
        """Log a refusal, at most once per source and interval, so logs do not become the flood."""
        if self.refusalLog.allow((host, reason)):
            log.warn(
                "{service}/{transport}: refused {peer} ({reason}); further refusals of it are not logged"
                " for {interval:g}s",
                service=service, transport=transport, peer=host or "unix", reason=reason,
                interval=self.refusalLog.interval,
            )


