"""PROXY protocol (v1 text and v2 binary) in front of any stream service.

Behind HAProxy every connection comes from the balancer; the client's own
address arrives in a PROXY header before the first payload byte.  Twisted's
C{haproxy:} wrapper drops a header split across reads (twisted#8287) and starts
the service before the header is parsed (twisted#12501), so a speak-first
service writes too early and access control sees the balancer.  Here the
wrapped factory's C{buildProtocol} runs only once the header is complete, with
the client's address, and the service's transport reports that address.

The header is believed only from a trusted balancer (C{--trusted-proxy},
loopback by default): any other peer is closed before a byte is read or
written.  Until its header arrives a connection holds a place in the limits
under its real peer (the balancer), so peers that never send one cannot pile
up past C{--max-connections}; then the place passes to the client it names.
"""

from __future__ import annotations

import ipaddress
import struct
from collections import Counter
from dataclasses import dataclass
from typing import cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from sockd.config.settings import LOOPBACK
from sockd.defences.access import Network, contains, parseHost, parseNetworks
from sockd.defences.ratelimit import LogThrottle
from sockd.defences.relay import TransportRelay
from sockd.interfaces import Hold, IAdmissionGate, IReadPausingTransport, IStreamTransport
from sockd.observe.addresses import formatAddress, hostOf
from sockd.protocols.flow import pauseReadingWhileBlocked

log = Logger(namespace="sockd.proxyprotocol")

V1_PREFIX = b"PROXY "
#: The v1 specification's limit, CR LF included.
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
#: Room for the addresses and the TLVs HAProxy may add (unique id, SNI, TLS details).
MAX_HEADER = 4096

_LOCAL, _PROXY = 0, 1
_UNSPEC, _INET, _INET6, _UNIX = 0, 1, 2, 3
_STREAM = 1

Address = IPv4Address | IPv6Address


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header (or one longer than allowed)."""


@dataclass(frozen=True)
class ProxyHeader:
    """A parsed header; no addresses means "use the socket's own" (LOCAL, UNKNOWN, UNSPEC, AF_UNIX)."""

    length: int
    source: Address | None = None
    destination: Address | None = None


def _hostText(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The form a dual-stack socket would report, so logs and access lists see the same text."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _twistedAddress(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> Address:
    if ip.version == 4:
        return IPv4Address("TCP", _hostText(ip), port)
    return IPv6Address("TCP", _hostText(ip), port)


def _v1Address(host: str, port: str, version: int) -> Address:
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise ProxyHeaderError(f"bad port {port!r} in v1 header")
    try:
        ip = ipaddress.IPv4Address(host) if version == 4 else ipaddress.IPv6Address(host)
    except ValueError:
        ip = None
    if ip is None or "%" in host:
        raise ProxyHeaderError(f"bad IPv{version} address {host!r} in v1 header")
    return _twistedAddress(ip, int(port))


def _parseV1(buffer: bytes) -> ProxyHeader | None:
    if not V1_PREFIX.startswith(buffer[: len(V1_PREFIX)]):
        raise ProxyHeaderError("not a PROXY header")
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buffer) >= V1_MAX:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
        if b"\n" in buffer:
            raise ProxyHeaderError("v1 header ends without CR LF")
        return None
    try:
        parts = buffer[:end].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not ASCII") from None
    if parts[1:2] == ["UNKNOWN"]:
        return ProxyHeader(end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("v1 header is not PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    version = 4 if parts[1] == "TCP4" else 6
    return ProxyHeader(
        end + 2, _v1Address(parts[2], parts[4], version), _v1Address(parts[3], parts[5], version)
    )


def _parseV2(buffer: bytes, maxHeader: int) -> ProxyHeader | None:
    if buffer[: len(V2_SIGNATURE)] != V2_SIGNATURE[: len(buffer)]:
        raise ProxyHeaderError("not a PROXY header")
    if len(buffer) < V2_FIXED:
        return None
    versionCommand, familyProtocol, length = struct.unpack_from("!BBH", buffer, len(V2_SIGNATURE))
    command = versionCommand & 0x0F
    if versionCommand >> 4 != 2 or command not in (_LOCAL, _PROXY):
        raise ProxyHeaderError(f"v2 header with unknown version/command 0x{versionCommand:02x}")
    total = V2_FIXED + length
    if total > maxHeader:
        raise ProxyHeaderError(f"v2 header of {total} bytes is over the {maxHeader}-byte limit")
    if len(buffer) < total:
        return None
    family, protocol = familyProtocol >> 4, familyProtocol & 0x0F
    if family > _UNIX or protocol > 2:
        raise ProxyHeaderError(f"v2 header with unknown family/protocol 0x{familyProtocol:02x}")
    if command == _LOCAL or family in (_UNSPEC, _UNIX) or protocol == 0:
        return ProxyHeader(total)
    if protocol != _STREAM:
        raise ProxyHeaderError("v2 header announces datagrams on a stream connection")
    size = 4 if family == _INET else 16
    if length < 2 * size + 4:
        raise ProxyHeaderError(f"v2 header too short for its addresses ({length} bytes)")
    start = V2_FIXED
    source = ipaddress.ip_address(buffer[start : start + size])
    destination = ipaddress.ip_address(buffer[start + size : start + 2 * size])
    sourcePort, destinationPort = struct.unpack_from("!HH", buffer, start + 2 * size)
    # What follows the addresses (TLVs) is skipped: length already bounds it.
    return ProxyHeader(total, _twistedAddress(source, sourcePort), _twistedAddress(destination, destinationPort))


def parseHeader(buffer: bytes, maxHeader: int = MAX_HEADER) -> ProxyHeader | None:
    """Parse the PROXY header at the start of C{buffer}: None while more bytes are needed.

    Fails as soon as the bytes cannot begin a valid header, so a client that is
    not a balancer is turned away at its first byte, not at the timeout.
    """
    if not buffer:
        return None
    if buffer[:1] == V2_SIGNATURE[:1]:
        return _parseV2(buffer, maxHeader)
    return _parseV1(buffer)


@implementer(IHalfCloseableProtocol, IReadPausingTransport)
class ProxyProtocol(TransportRelay, Protocol):
    """Read the PROXY header, then build and start the service with the client's address.

    Until then nothing reaches the service and nothing is written; afterwards
    this is the service's transport, reporting the client as its peer.
    """

    factory: ProxyProtocolFactory
    transport: IStreamTransport
    wrappedProtocol: IProtocol | None = None
    _timeoutCall: IDelayedCall | None = None

    def __init__(self, factory: ProxyProtocolFactory, held: Hold | None = None, realHost: str | None = None) -> None:
        self.factory = factory
        #: Where the place held for the real peer until the header arrives is released (None: none held).
        self._held = held
        self._realHost = realHost
        self._buffer = b""
        self._waiting = True
        self._header: ProxyHeader | None = None

    def logPrefix(self) -> str:
        return self.__class__.__name__

    def makeConnection(self, transport: IStreamTransport) -> None:
        # Not a wrapper's usual one: that would start the (not yet built) service now.
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        self._timeoutCall = self.factory.clock.callLater(self.factory.timeout, self._timedOut)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        if not self._waiting:
            return  # refused or failed: the connection is closing
        buffer = self._buffer + data
        try:
            header = parseHeader(buffer, self.factory.maxHeader)
        except ProxyHeaderError as e:
            self._fail("malformed", str(e))
            return
        if header is None:
            self._buffer = buffer
            return
        self._stopWaiting()
        self._header = header
        self._startService(buffer[header.length :])

    def _startService(self, rest: bytes) -> None:
        self._release()  # the client the header names takes the balancer's place, or is refused
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self.transport.loseConnection()  # refused: close without a byte
            return
        self.wrappedProtocol = protocol
        # It provides what its transport provides (makeConnection above).
        protocol.makeConnection(cast(IStreamTransport, self))
        if rest and not self.disconnecting:
            protocol.dataReceived(rest)

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.releaseHold(self._realHost)

    def _stopWaiting(self) -> None:
        self._waiting = False
        self._buffer = b""
        if self._timeoutCall is not None and self._timeoutCall.active():
            self._timeoutCall.cancel()
        self._timeoutCall = None

    def _timedOut(self) -> None:
        self._timeoutCall = None
        self._fail("timeout", f"no complete PROXY header in {self.factory.timeout:g}s")

    def _fail(self, kind: str, detail: str) -> None:
        self._stopWaiting()
        self.factory.noteFailure(kind, self.transport.getPeer(), detail)
        self.abortConnection()

    # The service's transport.

    def getPeer(self) -> IAddress:
        if self._header is not None and self._header.source is not None:
            return self._header.source
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        if self._header is not None and self._header.destination is not None:
            return self._header.destination
        return self.transport.getHost()

    def abortConnection(self) -> None:
        self.disconnecting = 1
        self.transport.abortConnection()

    def pauseReadingWhileBlocked(self) -> None:
        """L{IReadPausingTransport}, passed on (a read-pausing producer on a transport without it)."""
        pauseReadingWhileBlocked(self.transport)

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # Events from the real transport.

    def readConnectionLost(self) -> None:
        protocol = self.wrappedProtocol
        if protocol is None:
            self._stopWaiting()  # end of stream before a whole header: nothing to serve
            self.transport.loseConnection()
        elif IHalfCloseableProtocol.providedBy(protocol):
            protocol.readConnectionLost()
        else:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        protocol = self.wrappedProtocol
        if protocol is not None and IHalfCloseableProtocol.providedBy(protocol):
            protocol.writeConnectionLost()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._stopWaiting()
        self._release()
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        if protocol is not None:
            protocol.connectionLost(reason)  # type: ignore[arg-type]  # as given: None only from a direct call


class ProxyProtocolFactory(WrappingFactory):
    """Put a PROXY protocol reader (v1 and v2) in front of C{wrappedFactory}.

    C{trusted}: the CIDR blocks whose peers may send a header (loopback by
    default); a peer outside them is closed unanswered (a Unix-socket peer has
    no address: the socket file's mode decides who connects).  C{timeout}
    bounds how long a connection may take to send its header; C{maxHeader}
    bounds a v2 header with its TLVs (v1 is always at most 107 bytes).
    Failures are counted in C{failures} and the refusal metric, and logged at
    most once per C{logInterval} per balancer and kind.  When the wrapped
    factory is an L{IAdmissionGate}, a connection waiting for its header is
    counted there under its real peer.
    """

    # WrappingFactory's stubs want a ProtocolWrapper; this one relays without one (L{TransportRelay}).
    protocol: type[ProxyProtocol] = ProxyProtocol  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime,
        timeout: float = 5.0,
        maxHeader: int = MAX_HEADER,
        logInterval: float = 60.0,
        trusted: tuple[str, ...] | list[str] = LOOPBACK,
    ) -> None:
        if maxHeader < V2_FIXED + 36:
            raise ValueError(f"maxHeader must leave room for IPv6 addresses ({V2_FIXED + 36} bytes)")
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]  # Twisted's, untyped
        self.clock = clock
        self.timeout = timeout
        self.maxHeader = maxHeader
        self.failures: Counter[str] = Counter()
        self._logThrottle = LogThrottle(logInterval, clock.seconds)
        self.trust(trusted)
        stats = getattr(wrappedFactory, "stats", None)
        if stats is not None:
            stats.expect(proxy=True)  # its refusals for a bad header are shown (at 0) from the start

    def trust(self, blocks: tuple[str, ...] | list[str]) -> None:
        """Take headers from peers in these CIDR blocks only (at start, and again on reload)."""
        self.trusted: tuple[Network, ...] = parseNetworks(blocks, "--trusted-proxy")
        self._verdicts: dict[str, bool] = {}

    def trusts(self, host: str) -> bool:
        """Whether a real peer may send a PROXY header: one look-up per balancer address, remembered."""
        verdict = self._verdicts.get(host)
        if verdict is None:
            address = parseHost(host)
            verdict = address is not None and contains(self.trusted, address)
            if len(self._verdicts) >= 4096:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict

    # None refuses the connection, as Factory.buildProtocol allows (WrappingFactory's stubs do not).
    def buildProtocol(self, addr: IAddress) -> ProxyProtocol | None:  # type: ignore[override]
        host = hostOf(addr)
        gate: IAdmissionGate | None = IAdmissionGate(self.wrappedFactory, None)
        if host is not None and not self.trusts(host):
            self.failures["untrusted-proxy"] += 1
            if gate is not None:
                gate.refuse(host, "untrusted-proxy")
            elif self._logThrottle.allow((host, "untrusted-proxy")):
                log.warn("refused {peer} (untrusted-proxy): not a --trusted-proxy", peer=host)
            return None  # closed before any byte is read or written
        held = None
        if gate is not None:
            held = gate.hold(host)
            if held is None:
                return None
        return self.protocol(self, held, host)

    def noteFailure(self, kind: str, balancer: IAddress, detail: str) -> None:
        """Count one connection aborted for its header, and log it unless logged lately."""
        self.failures[kind] += 1
        service = getattr(self.wrappedFactory, "serviceName", "unknown")
        transport = getattr(self.wrappedFactory, "transportName", "haproxy")
        stats = getattr(self.wrappedFactory, "stats", None)  # the PolicyFactory's counters, if it counts
        if stats is not None:
            stats.refused[f"proxy-{kind}"] += 1
        peer = formatAddress(balancer)
        if self._logThrottle.allow((getattr(balancer, "host", peer), kind)):
            log.warn(
                "{service}/{transport}: aborted {peer}: {detail}; more like it are not logged for {interval:g}s",
                service=service, transport=transport, peer=peer, detail=detail, kind=kind,
                interval=self._logThrottle.interval,
            )
