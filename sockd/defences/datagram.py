"""The datagram policies: access lists and the reflection defences.

UDP small services are the classic reflection and loop tools (CERT CA-1996-01):
a forged source address makes sockd answer a victim, and a forged source port
of another echo or chargen service starts a loop.  L{GuardedDatagramProtocol}
wraps any service's datagram protocol and drops, unanswered:

  - datagrams from addresses the access lists refuse;
  - datagrams from source port 0, from the small services' ports (7, 9, 13,
    17, 19, 37) and from sockd's own listening ports;
  - datagrams beyond a per-source token bucket of answers;
  - datagrams beyond a global answer budget per second.

Sources in the exempt networks (loopback by default) skip the two rate limits:
a forged source address cannot be a loopback one from the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from sockd.config.settings import Settings
from sockd.defences.access import HostRules
from sockd.defences.ratelimit import GlobalBucket, KeyedBuckets, LogThrottle
from sockd.observe.metrics import ListenerStats, Metrics

log = Logger(namespace="sockd.udpguard")


class DatagramPolicy:
    """The datagram rules of one configuration, shared by every datagram listener."""

    def __init__(self, settings: Settings, seconds: Callable[[], float], blockedPorts: Iterable[int],
                 daemon: DatagramPolicy | None = None) -> None:
        self.seconds = seconds
        #: A service with rules of its own ([echo] in the file) shares the daemon's ports, budget and log.
        self.daemon = daemon
        self.blockedPorts: set[int] = daemon.blockedPorts if daemon is not None else set(blockedPorts)
        self.refusalLog: LogThrottle = (daemon.refusalLog if daemon is not None
                                        else LogThrottle(settings.refusal_log_interval, seconds))
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        self.rules = HostRules(settings.allow, settings.deny, settings.exempt)
        self.perSource = KeyedBuckets(settings.udp_rate, settings.udp_burst, self.seconds)
        if self.daemon is None:
            self.budget = GlobalBucket(settings.udp_budget, self.seconds)
            self.refusalLog.interval = settings.refusal_log_interval

    def addOwnPort(self, port: int) -> None:
        """A port sockd listens on: datagrams from it would be another sockd answering us."""
        if port:
            self.blockedPorts.add(port)

    def verdict(self, host: str, port: int) -> str | None:
        """None to answer, or the reason to drop a datagram from C{host}:C{port}."""
        known = self.rules.lookup(host)
        if not known.allowed:
            return "access"
        if port == 0 or port in self.blockedPorts:
            return "source-port"
        if known.exempt:
            return None  # loopback by default: it cannot be forged from the network, so it reflects nothing
        if not self.perSource.take(known.key):
            return "rate"
        if not (self.budget if self.daemon is None else self.daemon.budget).take():
            return "budget"
        return None


class GuardedDatagramProtocol(DatagramProtocol):
    """Check every datagram against a L{DatagramPolicy} before the service sees it."""

    noisy = False

    def __init__(self, inner: DatagramProtocol, policy: DatagramPolicy, serviceName: str,
                 transportName: str = "udp", metrics: Metrics | None = None) -> None:
        self.inner = inner
        self.policy = policy
        self.serviceName = serviceName
        self.stats = (metrics or Metrics(process=False)).statsFor(serviceName, transportName)

    def makeConnection(self, transport: IUDPTransport) -> None:
        super().makeConnection(transport)
        self.inner.makeConnection(_CountingTransport(transport, self.stats))

    def replaceInner(self, inner: DatagramProtocol) -> None:
        """Serve with a new service protocol from now on (a reload); the socket stays open."""
        old, self.inner = self.inner, inner
        if self.transport is not None:
            inner.makeConnection(_CountingTransport(self.transport, self.stats))
            old.doStop()

    def doStop(self) -> None:
        self.inner.doStop()
        super().doStop()  # type: ignore[no-untyped-call]  # Twisted's, untyped

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        stats = self.stats
        stats.datagrams += 1
        stats.bytesIn += len(datagram)
        reason = self.policy.verdict(addr[0], addr[1])
        if reason is None:
            self.inner.datagramReceived(datagram, addr)
            return
        stats.dropped[reason] += 1
        if self.policy.refusalLog.allow((addr[0], reason)):
            log.warn("{service}/udp: dropping datagrams from {peer} ({reason}); not logged again for {interval:g}s",
                     service=self.serviceName, peer=addr[0], reason=reason, interval=self.policy.refusalLog.interval)


@implementer(IUDPTransport)
class _CountingTransport:
    """The datagram transport as the service sees it: counts answers and bytes sent.

    An answer goes to the address its request came from, which the kernel just
    gave us, so it is sent straight on the port's socket (C{getHandle()});
    Twisted's C{write} would first re-validate the address as an IP literal, a
    microsecond per datagram.  Any error falls back to Twisted's C{write}, which
    handles it as it always does (nothing was sent: a datagram is all or nothing).
    """

    def __init__(self, transport: IUDPTransport, stats: ListenerStats) -> None:
        self._transport = transport
        self._stats = stats
        handle = getattr(transport, "getHandle", None)
        self._sendto: Callable[[bytes, tuple[str, int]], int] | None = (
            getattr(handle(), "sendto", None) if handle is not None else None)

    def write(self, datagram: bytes, addr: tuple[str, int] | None = None) -> None:
        stats = self._stats
        stats.answers += 1
        stats.bytesOut += len(datagram)
        if self._sendto is not None and addr is not None:
            try:
                self._sendto(datagram, addr)
                return
            except OSError:
                pass
        self._transport.write(datagram, addr)

    # The rest of IUDPTransport, passed through.
    def connect(self, host: str, port: int) -> None:
        """Connect the port to one peer (IUDPTransport)."""
        self._transport.connect(host, port)

    def getHost(self) -> IPv4Address | IPv6Address:
        """The port's own address (IUDPTransport)."""
        return self._transport.getHost()

    def stopListening(self) -> Deferred[None] | None:
        """Close the port (IUDPTransport)."""
        return self._transport.stopListening()

    def setBroadcastAllowed(self, enabled: bool) -> None:
        """Allow or forbid broadcast (IUDPTransport)."""
        self._transport.setBroadcastAllowed(enabled)

    def getBroadcastAllowed(self) -> bool:
        """Whether broadcast is allowed (IUDPTransport)."""
        return self._transport.getBroadcastAllowed()
