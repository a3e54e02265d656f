"""Listeners: one service each, bound in privilegedStartService.

Binding happens in C{privilegedStartService}, before twistd drops to
C{--uid/--gid}, so ports below 1024 work for an unprivileged daemon, and a
Unix socket file is given to the daemon's user and group (or those its
description names) while root still may.  Each listener logs one line naming
its service, kind and the address actually bound (port 0 becomes a real
port), and any failure becomes a L{StartupError} that names the service and
the address.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IProtocolFactory
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.log import callWithContext
from zope.interface import implementer

from sockd.config.descriptions import DatagramAddress, ListenSpec
from sockd.errors import StartupError
from sockd.interfaces import IDatagramListener, IListener, IReactor
from sockd.observe.addresses import formatAddress

if TYPE_CHECKING:
    from sockd.runtime.adopt import AdoptingReactor

log = Logger(namespace="sockd.listeners")

#: Twisted's default maxPacketSize (8192) silently truncates larger datagrams.
MAX_DATAGRAM = 65535


def _reason(error: BaseException | None) -> str:
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


def withDefaults(spec: ListenSpec, mode: int) -> str:
    """The endpoint string with the daemon's defaults: a Unix socket's mode, a deeper backlog; unless it says."""
    endpoint = spec.endpoint
    if spec.kind == "unix" and spec.option("mode") is None:
        endpoint = f"{endpoint}:mode={mode:o}"
    if spec.kind in ("tcp", "tcp6", "unix", "ssl", "tls") and spec.option("backlog") is None:
        endpoint = f"{endpoint}:backlog={BACKLOG}"
    return endpoint


_R = TypeVar("_R")


def quietly(call: Callable[..., _R], *args: object) -> _R:
    """Run C{call} with Twisted's own start-up line for a port at debug level rather than info.

    Every Twisted port logs C{"AckFactory (PolicyFactory) starting on 7001"} when it
    starts listening, whatever its factory's C{noisy}; sockd announces each listener
    in one line of its own.  (Anything else logged through C{twisted.python.log}
    during C{call}, which binds and nothing more, is at debug too.)
    """
    result: _R = callWithContext({"log_level": LogLevel.debug}, call, *args)
    return result


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


def checkCertificates(spec: ListenSpec) -> None:
    """C{tls:} endpoints read their PEM directory lazily; fail at start, clearly, if it is unusable."""
    if spec.kind != "tls":
        return
    path = spec.option("path") or (spec.args[0] if spec.args else "")
    if not os.path.isdir(path):
        raise StartupError(f"certificate directory {path!r} does not exist")
    pems = [name for name in os.listdir(path) if name.endswith(".pem")]
    if not pems:
        raise StartupError(f"certificate directory {path!r} holds no .pem files")
    for name in pems:
        if not os.access(os.path.join(path, name), os.R_OK):
            raise StartupError(f"cannot read certificate {os.path.join(path, name)}")


def _ownerName(uid: int | None, gid: int | None) -> str:
    """C{nobody:nogroup} for an error message (an id without a name as its number, one left alone as -)."""
    import grp
    import pwd

    user = group = "-"
    if uid is not None:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
    if gid is not None:
        try:
            group = grp.getgrgid(gid).gr_name
        except KeyError:
            group = str(gid)
    return f"{user}:{group}"


class _Port(Protocol):
    """A bound port as a listener uses it: Twisted's and sockd's ports are file descriptors as well."""

    def getHost(self) -> IAddress: ...

    def stopListening(self) -> defer.Deferred[None]: ...

    def stopReading(self) -> None: ...

    def doRead(self) -> object: ...

    def fileno(self) -> int: ...


class _DatagramPort(_Port, Protocol):
    """A bound UDP port: its address has a port number."""

    def getHost(self) -> IPv4Address | IPv6Address: ...


#: A listener with fault options says so in its start-up line: C{"... (faults: delay=100ms jitter=20ms)"}.
_IMPAIRED = " (faults: {faults})"


def _impaired(spec: ListenSpec) -> dict[str, str]:
    """The start-up event's C{faults} field: only a listener with fault options has one."""
    return {"faults": spec.faults.text} if spec.faults is not None else {}


class _Listener(Service):
    """What every listener shares: one listening port, closed when the service stops."""

    port: _Port | None = None
    _paused = False

    def pauseAccepting(self) -> None:
        """The parent of workers keeps the socket open but leaves accepting (or reading) to them."""
        self._paused = True
        assert self.port is not None
        self.port.stopReading()

    def fileno(self) -> int:
        assert self.port is not None
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
    """Listen with a Twisted server endpoint for one service's stream flavour.

    C{socketOwner} is the user and group (numeric ids, None: leave it) a Unix
    socket file gets unless its description names its own: the daemon's, after
    twistd's C{--uid/--gid}, so that the daemon's group can connect.
    """

    def __init__(self, reactor: IReactor, spec: ListenSpec, factory: IProtocolFactory, inheritedFd: int | None = None,
                 announce: bool = True, unixMode: int = 0o660,
                 socketOwner: tuple[int | None, int | None] = (None, None)) -> None:
        self.reactor = reactor
        self.spec = spec
        self.serviceName = spec.service
        self.description = str(spec)
        self.factory = factory
        #: What the listener is (tcp, ssl, haproxy ...); its transport (tcp or unix) is C{spec.transport}.
        self.kind = spec.label
        self.inheritedFd = inheritedFd
        self.announce = announce
        self.unixMode = unixMode
        self.socketOwner = socketOwner
        self.name = f"{spec.service} {spec}"

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self.port is not None:
            return
        if self.inheritedFd is not None:
            self._adopt()
            return
        spec = self.spec
        where = f"{spec.service} {spec}"
        try:
            if spec.kind == "unix" and spec.path is not None:
                clearStaleSocket(spec.path)
            checkCertificates(spec)
        except StartupError as e:
            raise StartupError(f"{where}: {e}") from None
        reactor: IReactor | AdoptingReactor = self.reactor
        if spec.kind == "systemd":
            from sockd.runtime.adopt import AdoptingReactor

            reactor = AdoptingReactor(self.reactor)  # keeps systemd's Unix socket files, checks the family
        try:
            endpoint = serverFromString(reactor, withDefaults(spec, self.unixMode))
        except (ValueError, TypeError, KeyError) as e:
            raise StartupError(f"{where}: bad listen description: {e}") from None
        except Exception as e:
            raise StartupError(f"{where}: {_reason(e)}") from None
        outcome: list[_Port | Failure] = []
        quietly(endpoint.listen, self.factory).addBoth(outcome.append)
        if not outcome:
            raise StartupError(f"{where}: the endpoint did not listen at once")
        result = outcome[0]
        if isinstance(result, Failure):
            raise StartupError(f"{where}: cannot listen: {_reason(result.value)}")
        self.port = result
        if spec.kind == "unix":
            self._own(where)
        log.emit(
            LogLevel.info if self.announce else LogLevel.debug,
            "{service} listening on {kind} {address}" + _IMPAIRED if spec.faults else
            "{service} listening on {kind} {address}",
            service=self.serviceName,
            kind=self.kind,
            transport=spec.transport,
            address=formatAddress(self.port.getHost()),
            description=self.description,
            **_impaired(spec),
        )

    def _own(self, where: str) -> None:
        """Give the socket file its owner and group, while the daemon may still (before twistd drops root)."""
        path = self.spec.path
        uid = self.spec.owner if self.spec.owner is not None else self.socketOwner[0]
        gid = self.spec.group if self.spec.group is not None else self.socketOwner[1]
        if path is None or (uid is None and gid is None):
            return
        try:
            st = os.lstat(path)
            want = (st.st_uid if uid is None else uid, st.st_gid if gid is None else gid)
            if (st.st_uid, st.st_gid) == want:
                return
            os.chown(path, *want)
            if os.path.islink(path + ".lock"):  # Twisted's lock: the daemon removes it at stop, as its user
                os.lchown(path + ".lock", *want)
        except OSError as e:
            self.abandon()
            raise StartupError(f"{where}: cannot give {path} to {_ownerName(uid, gid)}: {e.strerror}") from None

    def _adopt(self) -> None:
        """A worker: serve the socket the parent bound, wrapped (TLS) as the description says."""
        from sockd.runtime.adopt import AdoptingReactor, socketFamily

        fd = self.inheritedFd
        assert fd is not None
        adopting = AdoptingReactor(self.reactor, fd)
        try:
            if self.spec.tls:
                outcome: list[_Port | Failure] = []
                quietly(serverFromString(adopting, self.spec.endpoint).listen, self.factory).addBoth(outcome.append)
                if not outcome or isinstance(outcome[0], Failure):
                    raise StartupError(f"{self.name}: cannot adopt descriptor {fd}")
                self.port = outcome[0]
            else:
                # Every reactor's listening ports are file descriptors too (IListeningPort says less).
                self.port = cast(_Port, quietly(adopting.adoptStreamPort, fd, socketFamily(fd), self.factory))
        finally:
            # The port serves a duplicate: the inherited descriptor would keep the socket listening after the
            # port closes (a reload that removes this listener must close the socket for good).
            os.close(fd)
            self.inheritedFd = None
        log.debug("{service} serving inherited {kind} {address}", service=self.serviceName, kind=self.kind,
                  transport=self.spec.transport, address=formatAddress(self.port.getHost()))

    def abandon(self) -> None:
        """Start-up failed elsewhere: close now and remove our socket file before the process exits.

        Twisted removes it only on the reactor's next turn, which a failed start never reaches.
        """
        self.stopService()
        path = self.spec.path if self.spec.kind == "unix" else None
        if path is not None:
            for leftover in (path, path + ".lock"):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass


@implementer(IDatagramListener)
class DatagramListener(_Listener):
    """Listen on UDP (or adopt an inherited datagram socket) for one service."""

    port: _DatagramPort | None = None

    def __init__(self, reactor: IReactor, spec: ListenSpec, protocol: DatagramProtocol,
                 inheritedFd: int | None = None) -> None:
        assert spec.datagram is not None, spec
        self.reactor = reactor
        self.spec = spec
        self.serviceName = spec.service
        self.description = str(spec)
        self.protocol = protocol
        self.name = f"{spec.service} {spec}"
        self.address: DatagramAddress = spec.datagram
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
                self.port = cast(_DatagramPort, quietly(self.reactor.adoptDatagramPort, address.fd, address.family,
                                                        self.protocol, MAX_DATAGRAM))
            else:
                self.port = cast(_DatagramPort, quietly(lambda: self.reactor.listenUDP(
                    address.port, self.protocol, interface=address.interface, maxPacketSize=MAX_DATAGRAM)))
        except Exception as e:
            raise StartupError(f"{self.serviceName} {self.description}: cannot listen: {_reason(e)}") from None
        finally:
            if self.inheritedFd is not None:  # the port reads a duplicate: see StreamListener._adopt
                os.close(self.inheritedFd)
                self.inheritedFd = None
        log.emit(
            LogLevel.debug if inherited else LogLevel.info,
            ("{service} listening on {transport} {address}" if not inherited
             else "{service} serving inherited {transport} {address}") + (_IMPAIRED if self.spec.faults else ""),
            service=self.serviceName,
            transport="udp",
            address=formatAddress(self.port.getHost()),
            description=self.description,
            **_impaired(self.spec),
        )

    def abandon(self) -> None:
        """Start-up failed elsewhere: close now."""
        self.stopService()


    @property
    def boundPort(self) -> int:
        """The UDP port actually bound (0 before binding)."""
        return self.port.getHost().port if self.port is not None else 0
