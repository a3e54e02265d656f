"""sockd's UDP port: Twisted's C{udp.Port} semantics, without re-validating the addresses it answers.

Twisted checks the destination of every C{write(datagram, addr)} (is it an
IPv4 or IPv6 literal of the port's family?) -- two C{inet_pton} calls per
answer.  A reply to the address tuple C{datagramReceived} was given is sent
to what the kernel reported: that exact tuple (the same object) is not
checked again; any other address is, as Twisted does.  Multicast is not
here: C{listenMulticast} stays Twisted's own.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.internet import abstract, address, defer, error
from twisted.internet.interfaces import IListeningPort, ILoggingContext, IReadDescriptor, ISystemHandle, IUDPTransport
from twisted.python import log
from zope.interface import implementer

_READ_IGNORE = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.EMSGSIZE, errno.ENOBUFS, errno.ENOMEM)
_READ_REFUSED = (errno.ECONNREFUSED,)


def _prefixOf(thing: object) -> str:
    if ILoggingContext.providedBy(thing):
        return thing.logPrefix()
    return thing.__class__.__name__


@implementer(IListeningPort, IUDPTransport, ISystemHandle, IReadDescriptor, ILoggingContext)
class UDPPort:
    """A bound UDP socket serving one C{DatagramProtocol}."""

    #: Bytes read in one readable event at most, so one busy socket does not starve the others.
    maxThroughput = 256 * 1024
    addressFamily: socket.AddressFamily = socket.AF_INET
    connected = 0
    disconnected = 0
    realPortNumber: int | None = None
    _connectedTo: Any = None
    _lastPeer: Any = None
    _stopDeferred: Any = None

    def __init__(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192,
                 reactor: Any = None) -> None:
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.maxPacketSize = maxPacketSize
        self.reactor = reactor
        self.preexistingSocket: socket.socket | None = None
        if abstract.isIPv6Address(interface):
            self.addressFamily = socket.AF_INET6
        elif interface and not abstract.isIPAddress(interface):
            raise error.InvalidAddressError(interface, "not an IPv4 or IPv6 address.")
        self.logstr = f"{_prefixOf(protocol)} (UDP)"

    @classmethod
    def fromListeningDescriptor(cls, reactor: Any, fd: int, addressFamily: Any, protocol: Any,
                                maxPacketSize: int) -> UDPPort:
        """A port serving a bound datagram socket someone else made (systemd, or a C{--workers} parent)."""
        sock = socket.socket(addressFamily, socket.SOCK_DGRAM, fileno=os.dup(fd))
        sock.setblocking(False)
        self = cls(sock.getsockname()[1], protocol, "", maxPacketSize, reactor)
        self.addressFamily = addressFamily
        self.interface = sock.getsockname()[0]
        self.preexistingSocket = sock
        return self

    def fileno(self) -> int:
        return -1

    def getHandle(self) -> socket.socket:
        return self.socket

    def logPrefix(self) -> str:
        return self.logstr

    def startListening(self) -> None:
        if self.preexistingSocket is not None:
            sock, self.preexistingSocket = self.preexistingSocket, None
        else:
            sock = socket.socket(self.addressFamily, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.bind((self.interface, self.port))
            except OSError as e:
                sock.close()
                raise error.CannotListenError(self.interface, self.port, e) from None
        self.realPortNumber = sock.getsockname()[1]
        log.msg(f"{_prefixOf(self.protocol)} starting on {self.realPortNumber}")
        self.connected = 1
        self.socket = sock
        self.fileno = sock.fileno  # type: ignore[method-assign]
        self.protocol.makeConnection(self)
        self.reactor.addReader(self)

    def doRead(self) -> None:
        read = 0
        recvfrom = self.socket.recvfrom
        size = self.maxPacketSize
        protocol = self.protocol
        six = self.addressFamily == socket.AF_INET6
        while read < self.maxThroughput:
            try:
                data, addr = recvfrom(size)
            except OSError as e:
                if e.errno in _READ_IGNORE:
                    return
                if e.errno in _READ_REFUSED:
                    if self._connectedTo:
                        protocol.connectionRefused()
                    return
                raise
            read += len(data)
            if six:
                addr = addr[:2]
            self._lastPeer = addr
            try:
                protocol.datagramReceived(data, addr)
            except BaseException:
                log.err()
            if self.protocol is not protocol or not self.connected:
                return

    def write(self, datagram: bytes, addr: Any = None) -> Any:
        if self._connectedTo:
            assert addr in (None, self._connectedTo)
            try:
                return self.socket.send(datagram)
            except OSError as e:
                if e.errno == errno.EMSGSIZE:
                    raise error.MessageLengthError("message too long") from None
                if e.errno == errno.ECONNREFUSED:
                    self.protocol.connectionRefused()
                    return None
                raise
        assert addr is not None
        if addr is not self._lastPeer:  # the address the kernel just gave us needs no check
            self._checkAddress(addr[0])
        try:
            return self.socket.sendto(datagram, addr)
        except OSError as e:
            if e.errno == errno.EMSGSIZE:
                raise error.MessageLengthError("message too long") from None
            if e.errno == errno.ECONNREFUSED:
                return None
            raise

    def _checkAddress(self, host: str) -> None:
        four = abstract.isIPAddress(host)
        six = not four and abstract.isIPv6Address(host)
        if not four and not six and host != "<broadcast>":
            raise error.InvalidAddressError(host, "write() only accepts IP addresses, not hostnames")
        if (four or host == "<broadcast>") and self.addressFamily == socket.AF_INET6:
            raise error.InvalidAddressError(host, "IPv6 port write() called with IPv4 or broadcast address")
        if six and self.addressFamily == socket.AF_INET:
            raise error.InvalidAddressError(host, "IPv4 port write() called with IPv6 address")

    def writeSequence(self, seq: Any, addr: Any) -> None:
        self.write(b"".join(seq), addr)

    def connect(self, host: str, port: int) -> None:
        if self._connectedTo:
            raise RuntimeError("already connected, reconnecting is not currently supported")
        if not abstract.isIPAddress(host) and not abstract.isIPv6Address(host):
            raise error.InvalidAddressError(host, "not an IPv4 or IPv6 address.")
        self._connectedTo = (host, port)
        self.socket.connect((host, port))

    def startReading(self) -> None:
        self.reactor.addReader(self)

    def stopReading(self) -> None:
        """Stop reading but keep the socket (a C{--workers} parent leaves the reading to its workers)."""
        self.reactor.removeReader(self)

    def stopListening(self) -> Any:
        result = None
        if self.connected:
            result = self._stopDeferred = defer.Deferred()
        self.reactor.removeReader(self)
        if self.connected:
            self.reactor.callLater(0, self.connectionLost)
        return result

    def loseConnection(self) -> None:
        self.stopListening()

    def connectionLost(self, reason: Any = None) -> None:
        log.msg(f"(UDP Port {self.realPortNumber} Closed)")
        self.realPortNumber = None
        self.maxThroughput = -1
        self.disconnected = 1
        self.connected = 0
        self.reactor.removeReader(self)
        self.reactor.removeWriter(self)
        self.protocol.doStop()
        self.socket.close()
        self.fileno = lambda: -1  # type: ignore[method-assign]
        stopped, self._stopDeferred = self._stopDeferred, None
        if stopped is not None:
            stopped.callback(None)

    def getHost(self) -> Any:
        addr = self.socket.getsockname()
        if self.addressFamily == socket.AF_INET6:
            return address.IPv6Address("UDP", *addr[:2])
        return address.IPv4Address("UDP", *addr)

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, enabled)

    def getBroadcastAllowed(self) -> bool:
        return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST))

    def __repr__(self) -> str:
        if self.realPortNumber is not None:
            return f"<{self.protocol.__class__} on {self.realPortNumber}>"
        return f"<{self.protocol.__class__} not connected>"


__all__ = ["UDPPort"]
