"""Listeners: one service each, bound in privilegedStartService.

Binding happens in C{privilegedStartService}, before twistd drops to
C{--uid/--gid}, so ports below 1024 work for an unprivileged daemon.  Each
listener logs one line naming its service, transport and the address actually
bound (port 0 becomes a real port), and any failure becomes a
L{StartupError} that names the service and the address.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd.config.descriptions import (
    DatagramAddress,
    DescriptionError,
    escapeInterface,
    parseDatagram,
    socketTransport,
    split,
)
from sockd.config.descriptions import (
    transportName as describedTransport,
)
from sockd.errors import StartupError
from sockd.interfaces import IDatagramListener, IListener
from sockd.observe.addresses import formatAddress

log = Logger(namespace="sockd.listeners")

#: Twisted's default maxPacketSize (8192) silently truncates larger datagrams.
MAX_DATAGRAM = 65535


def _reason(error: BaseException) -> str:
    if isinstance(error, CannotListenError) and error.socketError is not None:
        inner = error.socketError
        return getattr(inner, "strerror", None) or str(inner)
    if isinstance(error, OSError) and error.strerror:
        # A unix: lockfile error names the pid written in the lock link, which is no file name.
        filename = str(error.filename) if error.filename is not None else ""
        name = f" {filename}" if filename and not filename.isdigit() else ""
        return f"{error.strerror}{name}"
    return str(error) or error.__class__.__name__


#: Twisted's default listen backlog is 50: a burst of connections overflows it and clients wait
#: for SYN retransmits.  The kernel caps this at net.core.somaxconn.
BACKLOG = 1024


def withDefaults(description: str, mode: int) -> str:
    """Give a description the daemon's defaults: a Unix socket's mode, a deeper backlog; unless it says."""
    kind, _, kwargs = split(description)
    if kind == "unix" and "mode" not in kwargs:
        description = f"{description}:mode={mode:o}"
    if kind in ("tcp", "tcp6", "unix", "ssl", "tls") and "backlog" not in kwargs:
        description = f"{description}:backlog={BACKLOG}"
    return description


def unixPath(description: str) -> str | None:
    """The socket file a C{unix:} description names, or None for any other kind."""
    kind, args, kwargs = split(description)
    if kind != "unix":
        return None
    return kwargs.get("address") or (args[0] if args else None)


def clearStaleSocket(path: str) -> None:
    """Remove a socket file left by a dead daemon; refuse to touch a live one or a non-socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise StartupError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        log.info("removed stale socket file {path} (no process listening on it)", path=path)
        return
    except OSError as e:
        if e.errno in (errno.ENOENT,):
            return
        raise StartupError(f"{path}: cannot check the existing socket file: {e.strerror}") from None
    finally:
        probe.close()
    raise StartupError(f"{path} is in use by a running process (another sockd?)")


def checkCertificates(description: str) -> None:
    """C{tls:} endpoints read their PEM directory lazily; fail at start, clearly, if it is unusable."""
    kind, args, kwargs = split(description)
    if kind != "tls":
        return
    path = kwargs.get("path") or (args[0] if args else "")
    if not os.path.isdir(path):
        raise StartupError(f"certificate directory {path!r} does not exist")
    pems = [name for name in os.listdir(path) if name.endswith(".pem")]
    if not pems:
        raise StartupError(f"certificate directory {path!r} holds no .pem files")
    for name in pems:
        if not os.access(os.path.join(path, name), os.R_OK):
            raise StartupError(f"cannot read certificate {os.path.join(path, name)}")


class _Listener(Service):
    """What every listener shares: one listening port, closed when the service stops."""

    port: Any = None
    _paused = False

    def pauseAccepting(self) -> None:
        """The parent of workers keeps the socket open but leaves accepting (or reading) to them."""
        self._paused = True
        self.port.stopReading()

    def fileno(self) -> int:
        return self.port.fileno()

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        if not self._paused and getattr(port, "connected", False):
            # Connections already in the accept queue (and datagrams already queued) were sent before
            # we stopped: take them now, so they are served and drained rather than reset with the socket.
            port.doRead()
        return defer.maybeDeferred(port.stopListening)


@implementer(IListener)
class StreamListener(_Listener):
    """Listen with a Twisted server endpoint string for one service's stream flavour."""


    def __init__(self, reactor: Any, serviceName: str, description: str, factory: Any,
                 transportName: str | None = None, inheritedFd: int | None = None, announce: bool = True,
                 unixMode: int = 0o660) -> None:
        self.reactor = reactor
        self.serviceName = serviceName
        self.description = description
        self.factory = factory
        self.transportName = transportName or describedTransport(description)
        self.inheritedFd = inheritedFd
        self.announce = announce
        self.unixMode = unixMode
        self.name = f"{serviceName} {description}"

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        if self.inheritedFd is not None:
            self._adopt()
            return
        where = f"{self.serviceName} {self.description}"
        try:
            path = unixPath(self.description)
            if path is not None:
                clearStaleSocket(path)
            checkCertificates(self.description)
        except StartupError as e:
            raise StartupError(f"{where}: {e}") from None
        reactor = self.reactor
        if split(self.description)[0] == "systemd":
            from sockd.runtime.adopt import AdoptingReactor

            reactor = AdoptingReactor(self.reactor)  # keeps systemd's Unix socket files, checks the family
        try:
            endpoint = serverFromString(reactor, withDefaults(escapeInterface(self.description), self.unixMode))
        except (ValueError, TypeError, KeyError) as e:
            raise StartupError(f"{where}: bad listen description: {e}") from None
        except Exception as e:
            raise StartupError(f"{where}: {_reason(e)}") from None
        outcome: list[Any] = []
        endpoint.listen(self.factory).addBoth(outcome.append)
        if not outcome:
            raise StartupError(f"{where}: the endpoint did not listen at once")
        result = outcome[0]
        if isinstance(result, Failure):
            raise StartupError(f"{where}: cannot listen: {_reason(result.value)}")
        self.port = result
        log.emit(
            LogLevel.info if self.announce else LogLevel.debug,
            "{service} listening on {kind} {address}",
            service=self.serviceName,
            kind=self.transportName,  # the listener's kind (ssl, haproxy...): the field transport is tcp or unix
            transport=socketTransport(self.description),
            address=formatAddress(self.port.getHost()),
            description=self.description,
        )

    def _adopt(self) -> None:
        """A worker: serve the socket the parent bound, wrapped (TLS) as the description says."""
        from sockd.runtime.adopt import AdoptingReactor, socketFamily

        fd = self.inheritedFd
        assert fd is not None
        adopting = AdoptingReactor(self.reactor, fd)
        kind = split(self.description)[0]
        try:
            if kind in ("ssl", "tls"):
                outcome: list[Any] = []
                serverFromString(adopting, self.description).listen(self.factory).addBoth(outcome.append)
                if not outcome or isinstance(outcome[0], Failure):
                    raise StartupError(f"{self.serviceName} {self.description}: cannot adopt descriptor {fd}")
                self.port = outcome[0]
            else:
                self.port = adopting.adoptStreamPort(fd, socketFamily(fd), self.factory)
        finally:
            # The port serves a duplicate: the inherited descriptor would keep the socket listening after the
            # port closes (a reload that removes this listener must close the socket for good).
            os.close(fd)
            self.inheritedFd = None
        log.debug("{service} serving inherited {kind} {address}", service=self.serviceName, kind=self.transportName,
                  transport=socketTransport(self.description), address=formatAddress(self.port.getHost()))


    def abandon(self) -> None:
        """Start-up failed elsewhere: close now and remove our socket file before the process exits.

        Twisted removes it only on the reactor's next turn, which a failed start never reaches.
        """
        self.stopService()
        path = unixPath(self.description)
        if path is not None:
            for leftover in (path, path + ".lock"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass


@implementer(IDatagramListener)
class DatagramListener(_Listener):
    """Listen on UDP (or adopt an inherited datagram socket) for one service."""


    def __init__(self, reactor: Any, serviceName: str, description: str, protocol: DatagramProtocol,
                 inheritedFd: int | None = None) -> None:
        self.reactor = reactor
        self.serviceName = serviceName
        self.description = description
        self.protocol = protocol
        self.name = f"{serviceName} {description}"
        try:
            self.address: DatagramAddress = parseDatagram(description)
        except DescriptionError as e:
            raise StartupError(f"{serviceName}: {e}") from None
        self.inheritedFd = inheritedFd
        if inheritedFd is not None:
            from sockd.runtime.adopt import socketFamily

            self.address = DatagramAddress(fd=inheritedFd, family=socketFamily(inheritedFd))

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        address = self.address
        inherited = self.inheritedFd is not None
        try:
            if address.fd is not None:
                # systemd passes blocking sockets unless NonBlocking=yes: the reactor would block in recvfrom().
                os.set_blocking(address.fd, False)
                self.port = self.reactor.adoptDatagramPort(address.fd, address.family, self.protocol, MAX_DATAGRAM)
            else:
                self.port = self.reactor.listenUDP(
                    address.port, self.protocol, interface=address.interface, maxPacketSize=MAX_DATAGRAM
                )
        except Exception as e:
            raise StartupError(f"{self.serviceName} {self.description}: cannot listen: {_reason(e)}") from None
        finally:
            if self.inheritedFd is not None:  # the port reads a duplicate: see StreamListener._adopt
                os.close(self.inheritedFd)
                self.inheritedFd = None
        log.emit(
            LogLevel.debug if inherited else LogLevel.info,
            "{service} listening on {transport} {address}" if not inherited
            else "{service} serving inherited {transport} {address}",
            service=self.serviceName,
            transport="udp",
            address=formatAddress(self.port.getHost()),
            description=self.description,
        )

    def abandon(self) -> None:
        """Start-up failed elsewhere: close now."""
        self.stopService()


    @property
    def boundPort(self) -> int:
        """The UDP port actually bound (0 before binding)."""
        return self.port.getHost().port if self.port is not None else 0
