"""Serving sockets someone else bound: systemd (socket activation) or a C{--workers} parent.

Twisted's C{adoptStreamPort} treats an adopted Unix socket as its own: it
chmods the file to 0666 at start (twisted#10261: widening the owner's 0660,
or failing with EPERM when sockd does not own the file) and unlinks it at
stop (systemd.socket(5): a daemon "must not unlink the socket").  And it
trusts the address family it is told, so C{systemd:domain=INET} on an IPv6
socket reads every address with the wrong layout.  L{AdoptingReactor} fixes
all three for any endpoint built on it: an adopted Unix socket is served by
sockd's own port (L{sockd.core.stream.UNIXPort}, which leaves a file it
did not create alone) on whichever reactor runs, and the family is checked.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator, IProtocolFactory

from sockd.core.stream import UNIXPort
from sockd.errors import StartupError
from sockd.interfaces import IReactor


def socketFamily(fd: int) -> socket.AddressFamily:
    """The real address family of an open socket descriptor."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.family
    finally:
        sock.detach()


class AdoptingReactor:
    """The reactor as an endpoint sees it, with listening done by adopting an inherited socket.

    With C{fd} given (a worker), every listen call adopts that descriptor, so
    C{serverFromString(AdoptingReactor(reactor, fd), "ssl:...")} wraps TLS exactly
    as for a fresh port.  Without it (C{systemd:} endpoints), only adoption itself
    is changed: Unix sockets are kept, and the family is checked.
    """

    def __init__(self, reactor: IReactor, fd: int | None = None) -> None:
        self._reactor = reactor
        self._fd = fd

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: socket.AddressFamily,
                        factory: IProtocolFactory) -> IListeningPort:
        fd = self._fd if self._fd is not None else fileDescriptor
        real = socketFamily(fd)
        if self._fd is None and real != addressFamily:
            said = {socket.AF_INET: "INET", socket.AF_INET6: "INET6", socket.AF_UNIX: "UNIX"}
            raise StartupError(f"inherited socket {fd} is {said.get(real, real)}, not "
                               f"{said.get(addressFamily, addressFamily)}: say domain={said.get(real, real)}")
        os.set_blocking(fd, False)
        if real == socket.AF_UNIX:
            port = UNIXPort.fromListeningDescriptor(self._reactor, fd, factory)  # the file is left alone
            port.startListening()
            return port
        # IReactorSocket's stub asks for a ServerFactory; every reactor takes any IProtocolFactory.
        return self._reactor.adoptStreamPort(fd, real, factory)  # type: ignore[arg-type]

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = "") -> IListeningPort:
        assert self._fd is not None
        return self.adoptStreamPort(self._fd, socketFamily(self._fd), factory)

    def listenSSL(self, port: int, factory: IProtocolFactory, contextFactory: IOpenSSLServerConnectionCreator,
                  backlog: int = 50, interface: str = "") -> IListeningPort:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(self, address: str, factory: IProtocolFactory, backlog: int = 50, mode: int = 0o666,
                   wantPID: int = 0) -> IListeningPort:
        return self.listenTCP(0, factory)

    def __getattr__(self, name: str) -> object:
        return getattr(self._reactor, name)
