"""sockd's reactor: epoll, its own descriptor bookkeeping, and sockd's own listening ports.

It subclasses Twisted's public C{PosixReactorBase} (timers, threads,
processes, signals, client connections, name resolution) and implements
C{IReactorFDSet} itself over its own C{select.epoll}, with the semantics of
Twisted's C{EPollReactor} -- copied, not inherited, so nothing here reads or
sets a private attribute of Twisted.  Three things differ, on purpose:

  - Events are dispatched directly, not through C{log.callWithLogger}: that
    per-event logging context (for legacy C{log.msg} calls inside protocols)
    cost about half of sockd's CPU under a request/response load.  The context
    is made when asked for instead (L{DispatchLogContext}): a legacy C{log.msg}
    from inside a protocol still names its connection, as on Twisted's reactors.
  - The descriptor a selectable was registered with is remembered, so removing
    it never asks a descriptor that was closed behind the reactor's back for its
    number (Twisted's epoll reactor raises C{KeyError} there), and once a second
    registered selectables are asked whether their descriptor changed: one that
    was closed (C{fileno()} now -1 or raising) is disconnected, as Twisted's
    poll and select reactors do, instead of waiting forever for an event epoll
    can no longer deliver.
  - C{listenTCP}, C{listenUNIX}, C{listenUDP}, C{adoptStreamPort} and
    C{adoptDatagramPort} return sockd's own ports (L{sockd.core.stream},
    L{sockd.core.datagram}), whose connections send at once and close at
    EOF without an extra turn.  Everything else (C{connectTCP}, C{connectUNIX},
    C{listenMulticast}, Unix datagram sockets, C{listenSSL}, C{adoptStreamConnection},
    processes) is Twisted's own implementation on this reactor.
"""

from __future__ import annotations

import select
import socket
import sys
import time
from types import FrameType
from typing import Any

from twisted.internet import error, main
from twisted.internet.interfaces import IHalfCloseableDescriptor, IReactorFDSet
from twisted.internet.posixbase import PosixReactorBase
from twisted.python import context, log
from twisted.python.failure import Failure
from zope.interface import implementer

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_GONE = select.EPOLLHUP | select.EPOLLERR

#: One shared failure per kind of ordinary disconnection, as Twisted's reactors share them.
_FAILURES: dict[type[BaseException], Failure] = {
    error.ConnectionDone: Failure(error.ConnectionDone()),
    error.ConnectionLost: Failure(error.ConnectionLost()),
}
_NO_FILEDESC = error.ConnectionFdescWentAway("File descriptor lost")

#: How often registered selectables are asked whether their descriptor is still theirs (seconds).
SWEEP_INTERVAL = 1.0


def _reactorOwn(selectable: Any) -> bool:
    """Whether a reader is part of the reactor itself (the waker, the SIGCHLD waker): removeAll keeps those.

    Twisted's base class registers them through its own bookkeeping; they are
    recognised by the module their classes come from, a public fact.
    """
    return type(selectable).__module__ == "twisted.internet._signals"


def _prefixOf(selectable: Any) -> str:
    """What C{log.callWithLogger} names a selectable: its C{logPrefix()}."""
    try:
        prefix: str = selectable.logPrefix()
        return prefix
    except Exception:
        return "(buggy logPrefix method)"


class DispatchLogContext(dict):  # type: ignore[type-arg]
    """The default legacy logging context, C{{"system": ...}}: the selectable being dispatched, found when asked.

    Twisted's reactors push C{{"system": selectable.logPrefix()}} around every
    event, for the few C{log.msg} calls that read it.  sockd's reactor pushes
    nothing: this mapping, installed as the default of C{ILogContext} (with
    C{context.setDefault}), looks up the stack for the reactor's dispatching
    frame only when something reads it, and names that frame's selectable.
    Outside a dispatch (a timed call, another thread) it is Twisted's C{"-"}.
    """

    def __init__(self) -> None:
        super().__init__(system="-")

    @staticmethod
    def system() -> str:
        """The log prefix of the selectable the reactor is dispatching on this thread, or C{"-"}."""
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            if frame.f_code in _DISPATCHING:
                selectable = frame.f_locals.get("selectable")
                return "-" if selectable is None else _prefixOf(selectable)
            frame = frame.f_back
        return "-"

    def __getitem__(self, key: Any) -> Any:
        return self.system() if key == "system" else super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self.system() if key == "system" else super().get(key, default)

    def copy(self) -> dict[str, Any]:
        """What C{log.msg} and C{log.callWithContext} start from: a plain dict, the system resolved."""
        return {**self, "system": self.system()}


@implementer(IReactorFDSet)
class SockdReactor(PosixReactorBase):
    """An epoll reactor with sockd's own listening ports and transports; see the module docstring."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        #: fd -> the selectable registered on it; selectable -> the fd it was registered with.
        self._selectableOf: dict[int, Any] = {}
        self._fdOf: dict[Any, int] = {}
        self._readFds: set[int] = set()
        self._writeFds: set[int] = set()
        #: Descriptors epoll refuses (regular files: EPERM): always ready, polled every turn.
        self._alwaysReaders: set[Any] = set()
        self._alwaysWriters: set[Any] = set()
        self._nextSweep = time.monotonic() + SWEEP_INTERVAL
        context.setDefault(log.ILogContext, _LOG_CONTEXT)  # process-wide; other reactors push their own
        super().__init__()

    # IReactorFDSet

    def _control(self, fd: int, mask: int, selectable: Any) -> None:
        """Register or modify C{fd} in epoll: a number reused after a close behind our back is registered anew."""
        if fd in self._selectableOf:
            try:
                self._epoll.modify(fd, mask)
                return
            except FileNotFoundError:
                pass  # closed and reopened under the same number: the kernel dropped the old entry
        self._epoll.register(fd, mask)

    def _register(self, selectable: Any, primary: set[int], other: set[int], event: int, always: set[Any]) -> None:
        fd = self._fdOf.get(selectable)
        if fd is None:
            fd = selectable.fileno()
            previous = self._selectableOf.get(fd)
            if previous is not None and previous is not selectable:
                # Its descriptor was closed without telling us, and the number reused.
                self._forget(previous)
            try:
                self._control(fd, event, selectable)
            except PermissionError:
                always.add(selectable)
                return
            self._selectableOf[fd] = selectable
            self._fdOf[selectable] = fd
            primary.add(fd)
        elif fd not in primary:
            self._control(fd, event | (_OUT if event == _IN else _IN) if fd in other else event, selectable)
            primary.add(fd)

    def addReader(self, reader: Any) -> None:
        self._register(reader, self._readFds, self._writeFds, _IN, self._alwaysReaders)

    def addWriter(self, writer: Any) -> None:
        self._register(writer, self._writeFds, self._readFds, _OUT, self._alwaysWriters)

    def _forget(self, selectable: Any) -> None:
        """Drop every trace of C{selectable}; a descriptor already closed is no error."""
        fd = self._fdOf.pop(selectable, None)
        if fd is None:
            return
        self._readFds.discard(fd)
        self._writeFds.discard(fd)
        if self._selectableOf.get(fd) is selectable:
            del self._selectableOf[fd]
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # EBADF / ENOENT: closed behind our back; the kernel already dropped it

    def _unregister(self, selectable: Any, primary: set[int], other: set[int], keep: int, always: set[Any]) -> None:
        fd = self._fdOf.get(selectable)
        if fd is None:
            always.discard(selectable)
            return
        if fd not in primary:
            return
        if fd in other:
            primary.discard(fd)
            try:
                self._epoll.modify(fd, keep)
            except OSError:
                self._forget(selectable)
        else:
            self._forget(selectable)

    def removeReader(self, reader: Any) -> None:
        self._unregister(reader, self._readFds, self._writeFds, _OUT, self._alwaysReaders)

    def removeWriter(self, writer: Any) -> None:
        self._unregister(writer, self._writeFds, self._readFds, _IN, self._alwaysWriters)

    def removeSelectable(self, selectable: Any) -> None:
        """C{removeReader} and C{removeWriter} in one call: what sockd's transports do as they close."""
        if selectable in self._fdOf:
            self._forget(selectable)
        else:
            self._alwaysReaders.discard(selectable)
            self._alwaysWriters.discard(selectable)

    def getReaders(self) -> list[Any]:
        return [self._selectableOf[fd] for fd in self._readFds] + list(self._alwaysReaders)

    def getWriters(self) -> list[Any]:
        return [self._selectableOf[fd] for fd in self._writeFds] + list(self._alwaysWriters)

    def removeAll(self) -> list[Any]:
        readers = {r for r in self.getReaders() if r is not self.waker and not _reactorOwn(r)}
        writers = set(self.getWriters())
        for reader in readers:
            self.removeReader(reader)
        for writer in writers:
            self.removeWriter(writer)
        return list(readers | writers)

    # The loop

    def _disconnect(self, selectable: Any, why: BaseException, isRead: bool) -> None:
        """What Twisted's reactors do with a selectable whose doRead/doWrite said it is done (or raised)."""
        self.removeReader(selectable)
        shared = _FAILURES.get(why.__class__)
        if shared is not None:
            if isRead and why.__class__ is error.ConnectionDone and IHalfCloseableDescriptor.providedBy(selectable):
                selectable.readConnectionLost(shared)
                return
            self.removeWriter(selectable)
            selectable.connectionLost(shared)
        else:
            self.removeWriter(selectable)
            selectable.connectionLost(Failure(why))

    def _dispatch(self, selectable: Any, event: int, reading: bool) -> None:
        why: Any = None
        inRead = False
        if event & _GONE and not event & _IN:
            # Disconnected, and no input left to read: a clean end if we were reading (maybe a half-close).
            if reading:
                inRead = True
                why = main.CONNECTION_DONE
            else:
                why = main.CONNECTION_LOST
        else:
            try:
                if selectable.fileno() == -1:
                    why = _NO_FILEDESC
                else:
                    if event & _IN:
                        why = selectable.doRead()
                        inRead = True
                    if not why and event & _OUT:
                        why = selectable.doWrite()
                        inRead = False
            except BaseException:
                why = sys.exc_info()[1]
                log.err()
        if why:
            self._disconnect(selectable, why, inRead)

    def _sweep(self) -> None:
        """Disconnect selectables whose descriptor is no longer the one they were registered with."""
        for selectable, fd in list(self._fdOf.items()):
            try:
                now = selectable.fileno()
            except Exception:
                now = -1
            if now != fd and self._fdOf.get(selectable) == fd:
                self._forget(selectable)
                try:
                    selectable.connectionLost(Failure(_NO_FILEDESC))
                except Exception:
                    log.err()

    def doPoll(self, timeout: float | None) -> None:
        """Wait for events (at most C{timeout} seconds) and dispatch them."""
        now = time.monotonic()
        if now >= self._nextSweep:
            self._nextSweep = now + SWEEP_INTERVAL
            self._sweep()
        if self._alwaysReaders or self._alwaysWriters:
            timeout = 0
        elif timeout is None or timeout > SWEEP_INTERVAL:
            timeout = SWEEP_INTERVAL
        try:
            events = self._epoll.poll(timeout, len(self._selectableOf) or 1)
        except InterruptedError:
            return
        selectableOf = self._selectableOf
        readFds = self._readFds
        dispatch = self._dispatch
        for fd, event in events:
            selectable = selectableOf.get(fd)
            if selectable is None:
                continue
            if event != _IN:
                dispatch(selectable, event, fd in readFds)
                continue
            # The hot case, readable and nothing else: _dispatch inlined (one call frame less per event).
            try:
                why = _NO_FILEDESC if selectable.fileno() == -1 else selectable.doRead()
            except BaseException:
                why = sys.exc_info()[1]
                log.err()
            if why:
                self._disconnect(selectable, why, True)
        if self._alwaysReaders or self._alwaysWriters:
            for selectable in list(self._alwaysReaders):
                if selectable in self._alwaysReaders:
                    dispatch(selectable, _IN, True)
            for selectable in list(self._alwaysWriters):
                if selectable in self._alwaysWriters:
                    dispatch(selectable, _OUT, False)

    # The loop calls it positionally (ReactorBase names its argument delay, this loop timeout).
    doIteration = doPoll  # type: ignore[assignment]


    # Listening: sockd's own ports

    def listenTCP(self, port: Any, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if not isinstance(port, int):  # a tcp.makeBinding() Binding: Twisted's own port understands it
            return super().listenTCP(port, factory, backlog, interface)  # type: ignore[no-untyped-call]  # Twisted's
        from sockd.core.stream import TCPPort

        listening = TCPPort(port, factory, backlog, interface, self)
        listening.startListening()
        return listening

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        """TLS over sockd's TCP port: Twisted's memory-BIO TLS protocol wrapped around the factory."""
        from twisted.protocols.tls import TLSMemoryBIOFactory

        listening = self.listenTCP(port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface)
        listening.kind = "TLS"
        return listening

    def listenUNIX(self, address: Any, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0) -> Any:
        from sockd.core.stream import UNIXPort

        listening = UNIXPort(address, factory, backlog, mode, self, wantPID)
        listening.startListening()
        return listening

    def listenUDP(self, port: int, protocol: Any, interface: str = "", maxPacketSize: int = 8192) -> Any:
        from sockd.core.datagram import UDPPort

        listening = UDPPort(port, protocol, interface, maxPacketSize, self)
        listening.startListening()
        return listening

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: Any, factory: Any) -> Any:
        from sockd.core.stream import TCPPort, UNIXPort

        if addressFamily == socket.AF_UNIX:
            listening: Any = UNIXPort.fromListeningDescriptor(self, fileDescriptor, factory)
        elif addressFamily in (socket.AF_INET, socket.AF_INET6):
            listening = TCPPort.fromListeningDescriptor(self, fileDescriptor, addressFamily, factory)
        else:
            raise error.UnsupportedAddressFamily(addressFamily)
        listening.startListening()
        return listening

    def adoptDatagramPort(self, fileDescriptor: int, addressFamily: Any, protocol: Any,
                          maxPacketSize: int = 8192) -> Any:
        from sockd.core.datagram import UDPPort

        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            raise error.UnsupportedAddressFamily(addressFamily)
        listening = UDPPort.fromListeningDescriptor(self, fileDescriptor, addressFamily, protocol, maxPacketSize)
        listening.startListening()
        return listening



#: The frames whose local C{selectable} is the one being dispatched (or disconnected).
_DISPATCHING = frozenset(f.__code__ for f in (SockdReactor.doPoll, SockdReactor._dispatch, SockdReactor._sweep))
_LOG_CONTEXT = DispatchLogContext()


def install() -> SockdReactor:
    """Install L{SockdReactor} as the global reactor (C{twistd -r sockd}, and sockd's default)."""
    from twisted.internet.main import installReactor

    reactor = SockdReactor()
    installReactor(reactor)
    return reactor


def installDefault() -> bool:
    """Install sockd's reactor unless a reactor is installed already (the user named one); say whether it did."""
    if "twisted.internet.reactor" in sys.modules:
        return False
    try:
        install()
    except error.ReactorAlreadyInstalledError:
        return False
    return True


__all__ = ["SWEEP_INTERVAL", "DispatchLogContext", "SockdReactor", "install", "installDefault"]
