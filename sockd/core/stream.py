"""sockd's stream transports and listening ports: TCP, TCP over IPv6, and Unix sockets.

Written for the request/response hot path, with the semantics of Twisted's
C{tcp.Server} / C{unix.Server} (and their conformance tests), less three costs:

  - Send at once.  Twisted queues every C{write()} until the reactor's next
    turn (twisted#5303); here a write with nothing queued before it goes
    straight to C{send()}, and only what the kernel did not take is queued.
    Order is kept: nothing is ever sent around queued data.
  - Close without an extra turn.  A C{loseConnection()} made while the protocol
    handles a read or the peer's half-close, with nothing queued and no
    producer, closes as soon as that handler returns; Twisted registers for
    writability and closes a turn later (two C{epoll_ctl} calls, a wakeup and
    an empty C{send()}).  The protocol never sees C{connectionLost} inside its
    own call.
  - Nothing per connection that nobody reads: the log prefix and C{repr} are
    made when asked for, the peer address is the kernel's (not re-validated).

They need only the public C{IReactorFDSet} and C{IReactorTime} of their
reactor, so they work on Twisted's reactors too (adopted Unix sockets use them
there, to keep the socket file).  They provide L{IReadPausingTransport}:
asked to pause reading while the peer does not read, they register nothing and
stop reading only when the queue passes the buffer size, so a connection that
never queues costs no C{epoll_ctl} for it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from typing import Any

from twisted.internet import address, base, error, main
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableDescriptor,
    IHalfCloseableProtocol,
    IListeningPort,
    ILoggingContext,
    IPushProducer,
    IReadWriteDescriptor,
    ISystemHandle,
    ITCPTransport,
    ITLSTransport,
    IUNIXTransport,
)
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python import lockfile, log, reflect
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd.interfaces import IReadPausingTransport

_DONE = Failure(error.ConnectionDone())
_ACCEPT_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)
_ACCEPT_ERRORS = (errno.EMFILE, errno.ENOBUFS, errno.ENFILE, errno.ENOMEM, errno.ECONNABORTED)
_SEND_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS)


def _prefixOf(thing: object) -> str:
    """What Twisted logs an object as: its C{logPrefix()}, or its class name."""
    if ILoggingContext.providedBy(thing):
        return thing.logPrefix()
    return thing.__class__.__name__


def _mustBeBytes(data: Any) -> None:
    if not isinstance(data, bytes):
        raise TypeError("Data must be bytes")


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@implementer(IPushProducer, IConsumer, IReadWriteDescriptor, IHalfCloseableDescriptor, ISystemHandle,
             ILoggingContext, IReadPausingTransport)
# The reactor calls only readConnectionLost of an IHalfCloseableDescriptor (the peer's half-close): a
# connection is never told its own write side closed, so there is no writeConnectionLost to have.
class StreamConnection:  # type: ignore[misc]
    """One accepted stream socket: what C{tcp.Server} does, written for the request/response path."""

    #: Read at most this much per C{recv()}; also the queued bytes above which a streaming producer pauses.
    bufferSize = 65536
    #: At most this much per C{send()} from the queue (a huge queue is not copied at each turn).
    SEND_LIMIT = 128 * 1024

    connected = 0
    disconnected = 0
    disconnecting = 0
    producer: Any = None
    streamingProducer = False
    producerPaused = False

    _abortCalled = False
    _writeClosing = False  # loseWriteConnection() asked; shutdown(SHUT_WR) once the queue is flushed
    _writeClosed = False
    _inHandler = False  # the protocol is handling a read or the peer's half-close
    _closeAfterHandler = False
    _readPausing = False  # pauseReadingWhileBlocked() asked, and no producer of the protocol's own since
    _readPaused = False  # reading stopped by that, until the queue drains
    _logstr: str | None = None
    #: Descriptors to pass (Unix sockets), each sent with one byte of the queued data.
    _fds: Any = ()
    #: Whether to shutdown() before close(): not for a socket some other process may hold (adopted).
    shutdownOnClose = True
    #: Whether startTLS() was called (Twisted's connections say it here too; ISSLTransport is the better test).
    TLS = False

    def __init__(self, sock: socket.socket, protocol: Any, peer: Any, port: Any, sessionno: int,
                 reactor: Any) -> None:
        self.socket = sock
        self.fileno = sock.fileno
        self.protocol = protocol
        self.peer = peer
        self.server = port
        self.sessionno = sessionno
        self.reactor = reactor
        #: What the kernel has not taken yet: C{_head[_offset:]}, then the chunks of C{_queue}.
        self._head = b""
        self._offset = 0
        self._queue: list[bytes] = []
        self._queued = 0
        self.connected = 1
        reactor.addReader(self)

    # What the connection looks like

    def getHandle(self) -> socket.socket:
        return self.socket

    def getPeer(self) -> Any:
        return self.peer

    def logPrefix(self) -> str:
        if self._logstr is None:
            self._logstr = f"{_prefixOf(self.protocol)},{self.sessionno},{self._peerText()}"
        return self._logstr

    @property
    def logstr(self) -> str:
        """Twisted's transports keep their log prefix here; made when first asked for."""
        return self.logPrefix()

    def _peerText(self) -> str:
        return str(getattr(self.peer, "host", None) or getattr(self.peer, "name", None))

    def __repr__(self) -> str:
        port = self.server.realPortNumber if self.server is not None else "?"
        return f"<{self.protocol.__class__.__name__} #{self.sessionno} on {port}>"

    # Reading

    def doRead(self) -> Any:
        try:
            data = self.socket.recv(self.bufferSize)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self._inHandler = True
        try:
            self.protocol.dataReceived(data)
        finally:
            self._inHandler = False
        if self._closeAfterHandler:
            self._closeNow()
        return None

    def readConnectionLost(self, reason: Failure) -> None:
        """The peer half-closed: tell a half-closeable protocol, or close."""
        halfCloseable: IHalfCloseableProtocol | None = IHalfCloseableProtocol(self.protocol, None)
        if halfCloseable is None:
            self.connectionLost(reason)
            return
        self._inHandler = True
        try:
            halfCloseable.readConnectionLost()
        except BaseException:
            self._inHandler = False
            log.err()
            self.connectionLost(Failure())
            return
        self._inHandler = False
        if self._closeAfterHandler:
            self._closeNow()

    def _closeNow(self) -> None:
        """A loseConnection() from inside a handler, once it has returned: close now if nothing was written since."""
        self._closeAfterHandler = False
        if not self.connected or self._abortCalled:
            return
        if self._queued or self.producer is not None:
            self.reactor.addWriter(self)  # written or registered after loseConnection(): flush, then close
            return
        self.connectionLost(_DONE)

    # Writing

    def write(self, data: bytes) -> None:
        if data.__class__ is not bytes:
            _mustBeBytes(data)
        if not self.connected or self._writeClosed or not data:
            return
        if not self._queued and not self.disconnecting and not self._writeClosing and not self._fds and (
                self.producer is None or self.streamingProducer):
            # Nothing queued: send now.  (A pull producer is asked for more only as the queue drains.)
            try:
                sent = self.socket.send(data)
            except OSError:
                # Would block: queue it.  Any other error: queue it too, and the next doWrite reports the loss
                # from the reactor, as Twisted does, rather than inside the protocol's write().
                sent = 0
            if sent == len(data):
                return
            if sent:
                data = data[sent:]
        self._enqueue(data)

    def _enqueue(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self.bufferSize:
            if self.producer is not None and self.streamingProducer:
                self.producerPaused = True
                self.producer.pauseProducing()
            elif self._readPausing and not self._readPaused:
                self._readPaused = True  # what a registered read-pausing producer would do, without one
                self.reactor.removeReader(self)
        self.reactor.addWriter(self)

    def writeSequence(self, iovec: Any) -> None:
        for chunk in iovec:
            _mustBeBytes(chunk)
        if not self.connected or not iovec or self._writeClosed:
            return
        self.write(b"".join(iovec))

    def doWrite(self) -> Any:
        if not self.connected:
            return None
        if self._queued:
            remaining = len(self._head) - self._offset
            if remaining < self.SEND_LIMIT and self._queue:
                self._head = b"".join([memoryview(self._head)[self._offset:], *self._queue] if remaining
                                      else self._queue)
                self._offset = 0
                self._queue = []
            try:
                sent = self.socket.send(memoryview(self._head)[self._offset:self._offset + self.SEND_LIMIT])
            except OSError as e:
                if e.errno in _SEND_AGAIN:
                    return None
                return main.CONNECTION_LOST
            self._offset += sent
            self._queued -= sent
        if self._queued:
            return None
        self._head = b""
        self._offset = 0
        self.reactor.removeWriter(self)
        if self._readPaused:
            self._readPaused = False
            self.resumeProducing()
        if self.producer is not None and (not self.streamingProducer or self.producerPaused):
            self.producerPaused = False
            self.producer.resumeProducing()
        elif self.disconnecting:
            return main.CONNECTION_DONE
        elif self._writeClosing:
            self._writeClosed = True
            self._shutdownWrite()
        return None

    def _shutdownWrite(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        halfCloseable: IHalfCloseableProtocol | None = IHalfCloseableProtocol(self.protocol, None)
        if halfCloseable is not None:
            try:
                halfCloseable.writeConnectionLost()
            except BaseException:
                failure = Failure()
                log.err()
                self.connectionLost(failure)

    # Producers and consumers

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._readPausing = False  # a producer of the protocol's own replaces the read pausing
        if self.producer is not None:
            raise RuntimeError(f"Cannot register producer {producer}, because producer {self.producer} "
                               "was never unregistered.")
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        """Unregister the producer, and stop pausing reading while blocked (as unregistering its producer would)."""
        self._readPausing = False
        self.producer = None
        if self.connected and self.disconnecting:
            self.reactor.addWriter(self)

    def pauseReadingWhileBlocked(self) -> None:
        """L{IReadPausingTransport}: stop reading once the queue passes the buffer size; no producer is registered."""
        if self.producer is not None:
            raise RuntimeError(f"Cannot pause reading while blocked, because producer {self.producer} "
                               "was never unregistered.")  # as registering a read-pausing producer would
        self._readPausing = True

    def pauseProducing(self) -> None:
        self.reactor.removeReader(self)

    def resumeProducing(self) -> None:
        if self.connected and not self.disconnecting:
            self.reactor.addReader(self)

    def stopProducing(self) -> None:
        self.loseConnection()

    def stopConsuming(self) -> None:
        self.unregisterProducer()
        self.loseConnection()

    def startReading(self) -> None:
        self.reactor.addReader(self)

    def stopReading(self) -> None:
        self.reactor.removeReader(self)

    # TLS

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        """L{ITLSTransport}: speak TLS from now on, as the TLS server (C{normal}) or as the client.

        What was written before is sent in clear first.  See L{sockd.core.starttls}:
        only this connection's methods change, none of its class's.
        """
        from sockd.core.starttls import startTLS

        startTLS(self, contextFactory, client=not normal)

    # Socket options, as Twisted's connections give them (its Unix ones too)

    def getTcpKeepAlive(self) -> bool:
        return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    def startWriting(self) -> None:
        self.reactor.addWriter(self)

    def stopWriting(self) -> None:
        self.reactor.removeWriter(self)

    # Closing

    def loseConnection(self) -> None:
        if not self.connected or self.disconnecting:
            return
        if self._writeClosed:
            self.reactor.removeReader(self)
            self.reactor.removeWriter(self)
            self.connectionLost(_DONE)
            return
        self.reactor.removeReader(self)
        self.disconnecting = 1
        if self._inHandler and not self._queued and self.producer is None:
            self._closeAfterHandler = True  # closed as soon as the protocol's handler returns
        else:
            self.reactor.addWriter(self)

    def loseWriteConnection(self) -> None:
        self._writeClosing = True
        self.reactor.addWriter(self)

    def abortConnection(self) -> None:
        if self.disconnected or self._abortCalled:
            return
        self._abortCalled = True
        self.reactor.removeReader(self)
        self.reactor.removeWriter(self)
        self.doRead = _noop  # type: ignore[method-assign]
        self.doWrite = _noop  # type: ignore[method-assign]
        self.reactor.callLater(0, self.connectionLost, Failure(error.ConnectionAborted()))

    def connectionLost(self, reason: Failure) -> None:
        if self.disconnected:
            return
        self.disconnected = 1
        self.connected = 0
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()
        reactor = self.reactor
        removeSelectable = getattr(reactor, "removeSelectable", None)  # sockd's reactor: both in one call
        if removeSelectable is not None:
            removeSelectable(self)
        else:
            reactor.removeReader(self)
            reactor.removeWriter(self)
        sock = self.socket
        try:
            if reason.type is error.ConnectionAborted:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            elif self.shutdownOnClose:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        self.fileno = _minusOne
        self._head = b""
        self._queue = []
        self._queued = 0
        protocol, self.protocol = self.protocol, None
        protocol.connectionLost(reason)


def _minusOne() -> int:
    return -1


@implementer(ITLSTransport, ITCPTransport)
class TCPConnection(StreamConnection):
    """An accepted TCP (or TCP over IPv6) connection."""

    def getHost(self) -> Any:
        return _hostAddress(self.socket)

    def getTcpNoDelay(self) -> bool:
        return bool(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)


# ITLSTransport (and so ITCPTransport, its base) as Twisted's Unix connections provide it: startTLS works there too.
@implementer(IUNIXTransport, ITLSTransport)
class UNIXConnection(StreamConnection):
    """An accepted Unix stream connection.  Receiving passed descriptors is not offered."""

    def getHost(self) -> Any:
        return address.UNIXAddress(self.socket.getsockname())

    def _peerText(self) -> str:
        name = self.peer.name
        return "" if name is None else name.decode(errors="replace") if isinstance(name, bytes) else str(name)

    #: Pause a streaming producer when more descriptors than this wait to be sent.
    fileDescriptorBufferSize = 64

    def sendFileDescriptor(self, descriptor: int) -> None:
        """Pass C{descriptor} to the peer, with the next byte written (C{SCM_RIGHTS}).

        Received descriptors are not offered: a peer's are closed by the kernel.
        """
        if not self._fds:
            self._fds = []
        self._fds.append(descriptor)
        if self.producer is not None and self.streamingProducer and len(self._fds) > self.fileDescriptorBufferSize:
            self.producerPaused = True
            self.producer.pauseProducing()
        self.reactor.addWriter(self)

    def doWrite(self) -> Any:
        if self._fds and self.connected:
            if len(self._fds) > self._queued:
                return error.FileDescriptorOverrun()
            self._head = b"".join([memoryview(self._head)[self._offset:], *self._queue])
            self._offset = 0
            self._queue = []
            while self._fds:
                try:
                    self.socket.sendmsg([self._head[self._offset:self._offset + 1]],
                                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", self._fds[0]))])
                except OSError as e:
                    if e.errno in _SEND_AGAIN:
                        return None
                    return main.CONNECTION_LOST
                del self._fds[0]
                self._offset += 1
                self._queued -= 1
        return super().doWrite()

    # A Unix transport answers the TCP-only questions as Twisted's does (twisted#12369), for code that asks any.
    def getTcpNoDelay(self) -> bool:
        return False

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


# getHost() is each family's own (TCPPort, UNIXPort): this base is never a port by itself.
@implementer(IListeningPort, ILoggingContext)
class StreamPort(base.BasePort):
    """What a listening stream socket shares, whatever its family: accepting, stopping, adoption.

    It derives from Twisted's public C{base.BasePort}, as Twisted's own ports
    do, for one method: C{createInternetSocket()}, which makes the listening
    socket (non-blocking, of the port's family and type).  Code that changes how
    Twisted's ports make their sockets changes sockd's too, and a failure to
    make one is a C{CannotListenError}, as on Twisted's ports.  Everything else
    (accepting, stopping, adoption) is this class's own.
    """

    transport: type[StreamConnection] = StreamConnection
    socketType = socket.SOCK_STREAM
    addressFamily: socket.AddressFamily = socket.AF_INET
    kind = "TCP"
    #: Its reactor: IReactorFDSet for reading, IReactorTime for closing a turn later.
    reactor: Any

    connected = False
    disconnected = 0
    disconnecting = False
    #: The port (or path) actually bound, once listening; None before and after.
    realPortNumber: Any = None
    #: How many connections one readable event may accept; adapts to the load, as Twisted's does.
    numberAccepts = 100
    sessionno = 0
    deferred: Any = None

    def __init__(self, factory: Any, backlog: int, reactor: Any) -> None:
        super().__init__(reactor)
        self.factory = factory
        self.backlog = backlog
        #: A socket someone else bound (adoption), used instead of binding one.
        self.preexistingSocket: socket.socket | None = None

    def fileno(self) -> int:
        return -1

    def logPrefix(self) -> str:
        return reflect.qual(self.factory.__class__)

    def bind(self) -> socket.socket:
        raise NotImplementedError

    def startedText(self) -> str:
        """How the start-up log line names what is bound (Twisted's wording: its tests read it)."""
        return str(self.realPortNumber)

    def closedText(self) -> str:
        return str(self.realPortNumber)

    def startListening(self) -> None:
        _reserved.reserve()
        if self.preexistingSocket is not None:
            sock, self.preexistingSocket = self.preexistingSocket, None
            self.shutdownOnClose = False  # shared: shutdown() would stop every other holder accepting
        else:
            sock = self.bind()
            sock.listen(self.backlog)
        self.socket = sock
        #: What an accepted socket is made with: the listening socket's family, type and protocol, as plain ints.
        self._socketKind = (int(sock.family), int(sock.type), sock.proto)
        self.realPortNumber = self.boundName(sock)
        log.msg(f"{_prefixOf(self.factory)} starting on {self.startedText()}")
        self.factory.doStart()
        self.connected = True
        self.fileno = sock.fileno  # type: ignore[method-assign]
        self.numberAccepts = 100
        self.reactor.addReader(self)

    shutdownOnClose = True

    def boundName(self, sock: socket.socket) -> Any:
        return sock.getsockname()[1]

    def peerAddress(self, addr: Any) -> Any:
        raise NotImplementedError

    def doRead(self) -> None:
        try:
            accepted = 0
            sock = self.socket
            factory = self.factory
            transport = self.transport
            reactor = self.reactor
            # socket.accept() is _accept() and a socket made of its descriptor, less two enum conversions a call.
            accept = sock._accept  # type: ignore[attr-defined]  # the C method socket.accept() wraps
            family, kind, proto = self._socketKind
            for _ in range(self.numberAccepts):
                try:
                    fd, addr = accept()
                except OSError as e:
                    if e.errno in _ACCEPT_AGAIN:
                        break
                    if e.errno == errno.EPERM:
                        continue
                    if e.errno == errno.EMFILE and _reserved.available():
                        _reserved.recover(sock)
                        break
                    if e.errno in _ACCEPT_ERRORS:
                        _acceptLog.info("Could not accept new connection ({acceptError})",
                                        acceptError=errno.errorcode[e.errno])
                        break
                    raise
                accepted += 1
                try:
                    client = socket.socket(family, kind, proto, fd)
                except OSError:  # CPython's check of the descriptor failed: nothing to serve, nothing to leak
                    os.close(fd)
                    continue
                peer = self.peerAddress(addr)
                protocol = factory.buildProtocol(peer)
                if protocol is None:
                    client.close()
                    continue
                client.setblocking(False)
                s = self.sessionno
                self.sessionno = s + 1
                protocol.makeConnection(transport(client, protocol, peer, self, s, reactor))
            if accepted == self.numberAccepts:
                self.numberAccepts += 20
            else:
                self.numberAccepts = max(1, accepted)
        except BaseException:
            log.deferr()

    def doWrite(self) -> None:
        raise RuntimeError(f"doWrite called on a {reflect.qual(self.__class__)}")

    def startReading(self) -> None:
        self.reactor.addReader(self)

    def stopReading(self) -> None:
        """Stop accepting but keep the socket (a C{--workers} parent leaves accepting to its workers)."""
        self.reactor.removeReader(self)

    def stopWriting(self) -> None:
        self.reactor.removeWriter(self)

    def loseConnection(self, connDone: Failure | None = None) -> Any:
        if connDone is None:
            connDone = _DONE
        self.disconnecting = True
        self.reactor.removeReader(self)
        if self.connected:
            self.deferred = deferLater(self.reactor, 0, self.connectionLost, connDone)
            return self.deferred
        return None

    stopListening = loseConnection

    def connectionLost(self, reason: Failure) -> None:
        log.msg(f"({self.kind} Port {self.closedText()} Closed)")
        self.realPortNumber = None
        self.disconnected = 1
        self.connected = False
        self.reactor.removeReader(self)
        self.reactor.removeWriter(self)
        sock = self.socket
        try:
            if self.shutdownOnClose:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        self.fileno = _minusOne  # type: ignore[method-assign]
        try:
            self.cleanUp()
            self.factory.doStop()
        finally:
            self.disconnecting = False

    def cleanUp(self) -> None:
        """After the socket is closed: what a subclass must undo (a Unix socket's file)."""

    def __repr__(self) -> str:
        where = f"on {self.realPortNumber}" if self.realPortNumber is not None else "(not listening)"
        return f"<{self.__class__} of {self.factory.__class__} {where}>"


class TCPPort(StreamPort):
    """A listening TCP socket (IPv4, or IPv6 when the interface is an IPv6 address)."""

    transport = TCPConnection

    def __init__(self, port: int | None, factory: Any, backlog: int = 50, interface: str = "",
                 reactor: Any = None) -> None:
        super().__init__(factory, backlog, reactor)
        self.port = port
        self.interface = interface
        if _isIPv6(interface):
            self.addressFamily = socket.AF_INET6

    @classmethod
    def fromListeningDescriptor(cls, reactor: Any, fd: int, addressFamily: Any, factory: Any) -> TCPPort:
        """A port serving a listening socket someone else bound (systemd, or a C{--workers} parent)."""
        sock = socket.socket(addressFamily, socket.SOCK_STREAM, fileno=os.dup(fd))
        sock.setblocking(False)
        self = cls(None, factory, 50, sock.getsockname()[0], reactor)
        self.addressFamily = addressFamily
        self.preexistingSocket = sock
        return self

    def createInternetSocket(self) -> socket.socket:
        """Twisted's listening TCP socket: the base's, with C{SO_REUSEADDR} (as C{tcp.Port} makes it)."""
        sock = super().createInternetSocket()
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        except OSError:
            sock.close()
            raise
        return sock

    def bind(self) -> socket.socket:
        try:
            sock = self.createInternetSocket()
        except OSError as e:
            raise error.CannotListenError(self.interface, self.port, e) from None
        try:
            if self.addressFamily == socket.AF_INET6:
                where = socket.getaddrinfo(self.interface, self.port or 0, socket.AF_INET6, 0, 0,
                                           socket.AI_NUMERICHOST)[0][4]
            else:
                where = (self.interface, self.port or 0)
            sock.bind(where)
        except OSError as e:
            sock.close()
            raise error.CannotListenError(self.interface, self.port, e) from None
        return sock

    def peerAddress(self, addr: Any) -> Any:
        if len(addr) == 4:  # a link-local peer's scope is named in the host, as Twisted does
            return address.IPv6Address("TCP", _scoped(addr), addr[1], addr[2], addr[3])
        return address.IPv4Address("TCP", addr[0], addr[1])

    def getHost(self) -> Any:
        return _hostAddress(self.socket)


class UNIXPort(StreamPort):
    """A listening Unix stream socket.

    C{ownsFile}: whether this port created the socket file, and so sets its
    mode at start and removes it at stop.  An adopted socket's file belongs to
    whoever bound it (systemd.socket(5): a daemon "must not unlink the socket").
    """

    transport = UNIXConnection
    addressFamily = socket.AF_UNIX
    kind = "UNIX"
    lockFile: Any = None

    def __init__(self, path: Any, factory: Any, backlog: int = 50, mode: int = 0o666, reactor: Any = None,
                 wantPID: int = 0) -> None:
        super().__init__(factory, backlog, reactor)
        self.path = path
        self.mode = mode
        self.wantPID = wantPID
        self.ownsFile = True

    @classmethod
    def fromListeningDescriptor(cls, reactor: Any, fd: int, factory: Any) -> UNIXPort:
        """A port serving a listening Unix socket someone else bound: its file is left alone."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(fd))
        sock.setblocking(False)
        self = cls(sock.getsockname(), factory, reactor=reactor)
        self.ownsFile = False
        self.preexistingSocket = sock
        return self

    def _inFilesystem(self) -> bool:
        return bool(self.path) and self.path[:1] not in (b"\0", "\0")

    def _pathText(self) -> str:
        return self.path.decode(errors="surrogateescape") if isinstance(self.path, bytes) else self.path

    def startedText(self) -> str:
        return repr(self._pathText())

    def closedText(self) -> str:
        return self._pathText()

    def startListening(self) -> None:
        if self.wantPID and self.preexistingSocket is None:
            lockPath = (self.path + b".lock") if isinstance(self.path, bytes) else self.path + ".lock"
            self.lockFile = lockfile.FilesystemLock(lockPath)
            if not self.lockFile.lock():
                raise error.CannotListenError(None, self.path, "Cannot acquire lock")
            if not self.lockFile.clean:
                try:
                    if stat.S_ISSOCK(os.stat(self.path).st_mode):
                        os.remove(self.path)
                except OSError:
                    pass
        super().startListening()

    def bind(self) -> socket.socket:
        try:
            sock = self.createInternetSocket()
        except OSError as e:
            raise error.CannotListenError(None, self.path, e) from None
        try:
            sock.bind(self.path)
        except OSError as e:
            sock.close()
            raise error.CannotListenError(None, self.path, e) from None
        if self._inFilesystem():
            os.chmod(self.path, self.mode)
        return sock

    def boundName(self, sock: socket.socket) -> Any:
        return self.path

    def peerAddress(self, addr: Any) -> Any:
        return address.UNIXAddress(addr or None)

    def cleanUp(self) -> None:
        if self.ownsFile and self._inFilesystem():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self.lockFile is not None:
            self.lockFile.unlock()

    def getHost(self) -> Any:
        return address.UNIXAddress(self.socket.getsockname())

    def __repr__(self) -> str:
        factoryName = reflect.qual(self.factory.__class__)
        if self.connected:
            return f"<{factoryName} on {self.startedText()}>"
        return f"<{factoryName} (not listening)>"


def _scoped(addr: Any) -> Any:
    """An IPv6 socket address with its scope named in the host (C{fe80::1%eth0}), as Twisted reports it."""
    host = addr[0]
    if addr[3] and "%" not in host:
        host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
    return host


def _hostAddress(sock: socket.socket) -> Any:
    addr = sock.getsockname()
    if len(addr) == 4:
        return address.IPv6Address("TCP", _scoped(addr), *addr[1:])
    return address.IPv4Address("TCP", *addr)


def _isIPv6(interface: str) -> bool:
    if not interface or ":" not in interface:
        return False
    try:
        socket.inet_pton(socket.AF_INET6, interface.split("%", 1)[0])
    except (OSError, ValueError):
        return False
    return True


#: The accept loop's warnings, in the words (log formats) of Twisted's own ports, so that the log filter
#: that sums them up per interval treats both cores alike.
_acceptLog = Logger(namespace="twisted.internet.tcp")


class _Reservation:
    """One descriptor held in reserve: when accept() fails with EMFILE, free it to accept and close the backlog.

    Without it a full descriptor table makes the listening socket readable
    forever and the reactor spins; with it the waiting clients are refused and
    the reserve is taken again.  What Twisted's ports do, with their own reserve.
    """

    def __init__(self) -> None:
        self.file: Any = None

    def available(self) -> bool:
        return self.file is not None

    def reserve(self) -> None:
        if self.file is None:
            try:
                self.file = open(os.devnull)  # noqa: SIM115 -- held open on purpose
            except OSError as e:
                if e.errno != errno.EMFILE:
                    raise

    def recover(self, listening: socket.socket) -> None:
        _acceptLog.info("EMFILE encountered; releasing reserved file descriptor.")
        self.file.close()
        self.file = None
        try:
            for _ in range(10000):
                try:
                    client, where = listening.accept()
                except OSError:
                    break
                client.close()
                _acceptLog.info("EMFILE recovery: Closed socket from {address}", address=where)
        finally:
            _acceptLog.info("Re-reserving EMFILE recovery file descriptor.")
            self.reserve()


_reserved = _Reservation()

__all__ = ["StreamConnection", "StreamPort", "TCPConnection", "TCPPort", "UNIXConnection", "UNIXPort"]
