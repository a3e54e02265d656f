"""sockd's I/O core (sockd/core): the reactor's descriptor set, and the transports' fast paths.

The fast paths must behave exactly as Twisted's slow paths they replace, and
the core must touch no private attribute of Twisted.  Transport tests run on
whichever reactor the suite runs (sockd's ports need only the public
IReactorFDSet), so they pass on both; the reactor's own tests build their own.
"""

from __future__ import annotations

import ast
import inspect
import os
import re
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import abstract, defer, error, reactor, task, threads
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol
from twisted.internet.testing import MemoryReactor, MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd.config.settings import Settings
from sockd.core import reactor as corereactor
from sockd.core.datagram import UDPPort
from sockd.core.reactor import SockdReactor
from sockd.core.stream import TCPConnection, TCPPort, UNIXPort
from sockd.defences.admission import Admission
from sockd.defences.stream import ConnectionRegistry, PolicyFactory
from sockd.interfaces import IReadPausingTransport
from sockd.protocols.echo import EchoFactory
from sockd.protocols.flow import ReadPauser, pauseReadingWhileBlocked

ROOT = Path(__file__).resolve().parents[2]

# -- the reactor's descriptor set -------------------------------------------------------------------------------


class Selectable:
    """A reader over one end of a socket pair that records what the reactor tells it."""

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock = sock
        self.fail = fail
        self.calls: list[Any] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        from twisted.python import context, log

        self.calls.append(("read", context.get(log.ILogContext)["system"]))
        self.sock.recv(100)
        if self.fail:
            raise RuntimeError("protocol bug")

    def doWrite(self) -> None:
        self.calls.append(("write", None))

    def connectionLost(self, reason: Failure) -> None:
        self.calls.append(("lost", reason.type))

    def logPrefix(self) -> str:
        return "Selectable"


@pytest.fixture
def own() -> Any:
    """A SockdReactor of the test's own (never run), its waker closed afterwards."""
    made = SockdReactor()
    yield made
    made.removeAll()
    made.waker.connectionLost(None)


@pytest.fixture
def pair() -> Any:
    left, right = socket.socketpair()
    yield left, right
    left.close()
    right.close()


def test_the_logging_context_names_the_dispatched_selectable_and_errors_disconnect(own, pair, caplog):
    from twisted.python import context, log

    left, right = pair
    reader = Selectable(left, fail=True)
    own.addReader(reader)
    right.send(b"x")
    own.doIteration(1.0)
    # Twisted's reactors push a context per event; sockd's core pushes nothing, and finds it when asked.
    assert reader.calls == [("read", "Selectable"), ("lost", RuntimeError)]
    assert reader not in own.getReaders()
    assert context.get(log.ILogContext)["system"] == "-"  # outside a dispatch, as on Twisted's reactors
    assert context.get(log.ILogContext).copy() == {"system": "-"}


def test_a_legacy_log_message_inside_a_protocol_names_its_connection(own, pair):
    from twisted.python import log

    class Logging(Selectable):
        def doRead(self) -> None:
            self.sock.recv(100)
            log.msg("inside")

    seen: list[dict[str, Any]] = []
    log.addObserver(seen.append)
    try:
        left, right = pair
        own.addReader(Logging(left))
        right.send(b"x")
        own.doIteration(1.0)
        own.callLater(0, lambda: log.msg("timed"))
        own.runUntilCurrent()
    finally:
        log.removeObserver(seen.append)
        own.removeAll()
    systems = {e["message"][0]: e["system"] for e in seen if e.get("message") in (("inside",), ("timed",))}
    assert systems == {"inside": "Selectable", "timed": "-"}


def test_reader_and_writer_share_one_registration(own, pair):
    left, right = pair
    both = Selectable(left)
    own.addReader(both)
    own.addWriter(both)
    assert own.getReaders() == [both] or both in own.getReaders()
    own.removeReader(both)
    assert both not in own.getReaders() and both in own.getWriters()
    own.doIteration(0.1)
    assert both.calls[:1] == [("write", None)]  # still registered for writing
    own.removeWriter(both)
    assert both not in own.getWriters()


def test_remove_selectable_drops_reading_and_writing_in_one_call(own, pair, tmp_path):
    left, right = pair
    both = Selectable(left)
    own.addReader(both)
    own.addWriter(both)
    regular = Selectable(open(tmp_path / "file", "w"))  # epoll refuses regular files: polled every turn
    own.addReader(regular)
    own.addWriter(regular)
    own.removeSelectable(both)
    own.removeSelectable(regular)
    own.removeSelectable(both)  # again: nothing left to remove, no error
    assert both not in own.getReaders() + own.getWriters() and regular not in own.getReaders() + own.getWriters()
    right.send(b"x")
    own.doIteration(0.1)
    assert both.calls == [] and regular.calls == []  # epoll no longer reports it
    own.addReader(both)  # and it can be registered afresh
    own.doIteration(0.1)
    assert [call[0] for call in both.calls] == ["read"]
    own.removeSelectable(both)
    regular.sock.close()


def test_remove_all_keeps_the_reactors_own_descriptors(own, pair):
    left, right = pair
    reader, writer = Selectable(left), Selectable(right)
    own.addReader(reader)
    own.addWriter(writer)
    removed = own.removeAll()
    assert set(removed) == {reader, writer}
    assert own.getReaders() == [own.waker] and own.getWriters() == []


def test_a_descriptor_closed_behind_the_reactors_back_is_removed_without_error(own):
    left, right = socket.socketpair()
    reader = Selectable(left)
    own.addReader(reader)
    left.close()  # fileno() is now -1; Twisted's epoll reactor raises KeyError removing it
    own.removeReader(reader)
    own.removeAll()
    right.close()
    assert reader not in own.getReaders()


def test_the_sweep_disconnects_a_selectable_whose_descriptor_went_away(own, monkeypatch):
    left, right = socket.socketpair()
    reader = Selectable(left)
    own.addReader(reader)
    left.close()
    right.close()
    own._nextSweep = 0.0  # due now (a second after the previous sweep otherwise)
    own.doIteration(0)
    assert reader.calls == [("lost", error.ConnectionFdescWentAway)]
    assert reader not in own.getReaders()


def test_a_reused_descriptor_number_belongs_to_its_new_selectable(own, pair):
    left, right = pair
    old = Selectable(left)
    own.addReader(old)
    number = left.fileno()
    replacementLeft, replacementRight = socket.socketpair()
    try:
        os.dup2(replacementLeft.fileno(), number)  # the number now names another socket, never told
        new = Selectable(socket.socket(fileno=os.dup(number)))
        new.fileno = lambda: number  # type: ignore[method-assign]
        own.addReader(new)
        replacementRight.send(b"x")
        own.doIteration(1.0)
        assert old.calls == [] and new.calls[:1] == [("read", "Selectable")]
        assert old not in own.getReaders()
        new.sock.close()
    finally:
        replacementLeft.close()
        replacementRight.close()


def test_a_descriptor_epoll_refuses_is_polled_every_turn(own, tmp_path):
    path = tmp_path / "plain"
    path.write_bytes(b"data")
    class FileReader:
        def __init__(self, f: Any) -> None:
            self.fileno = f.fileno
            self.calls: list[str] = []

        def doRead(self) -> None:
            self.calls.append("read")

    with open(path, "rb") as f:
        reader = FileReader(f)
        own.addReader(reader)  # EPERM from epoll_ctl: a regular file
        start = time.monotonic()
        own.doIteration(5.0)
        assert reader.calls == ["read"] and time.monotonic() - start < 1.0
        assert reader in own.getReaders()
        own.removeReader(reader)
        assert reader not in own.getReaders()


def test_an_idle_reactor_still_wakes_for_the_sweep(own):
    start = time.monotonic()
    own.doIteration(None)
    assert time.monotonic() - start <= corereactor.SWEEP_INTERVAL + 0.5


# -- transports: on the suite's reactor --------------------------------------------------------------------------


def _listen(factory: Any) -> TCPPort:
    port = TCPPort(0, factory, 50, "127.0.0.1", reactor)
    port.startListening()
    return port


class Answerer(Protocol):
    """Answers each read; records whether the peer could already read the answer when write() returned."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"answer:" + data)
        client = self.factory.client
        client.setblocking(False)
        try:
            self.factory.seen.append(client.recv(100))
        except BlockingIOError:
            self.factory.seen.append(None)
        if self.factory.closeAfter:
            self.transport.loseConnection()
            self.factory.events.append("returned")
            reactor.callLater(0, self.factory.events.append, "next turn")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.events.append("lost")
        self.factory.done.callback(None)


def _answer(closeAfter: bool) -> defer.Deferred[Any]:
    factory = Factory.forProtocol(Answerer)
    factory.seen, factory.events, factory.closeAfter = [], [], closeAfter
    factory.done = defer.Deferred()
    port = _listen(factory)
    factory.client = socket.create_connection(("127.0.0.1", port.getHost().port))
    factory.client.sendall(b"hi")
    if not closeAfter:
        reactor.callLater(0.2, factory.client.close)
    factory.done.addCallback(lambda _: (factory.client.close(), factory)[1])
    factory.done.addBoth(lambda result: port.stopListening().addCallback(lambda _: result))
    return factory.done


@pytest_twisted.inlineCallbacks
def test_an_answer_reaches_the_kernel_inside_write():
    factory = yield _answer(closeAfter=False)
    assert factory.seen == [b"answer:hi"]  # Twisted's transport would still hold it: None


@pytest_twisted.inlineCallbacks
def test_lose_connection_inside_a_read_closes_as_the_handler_returns():
    factory = yield _answer(closeAfter=True)
    assert factory.events[:2] == ["returned", "lost"]  # not inside dataReceived, before the next turn


@implementer(IHalfCloseableProtocol)
class HalfCloser(Protocol):
    """At EOF: write C{factory.last} (if any), then loseConnection(); records when connectionLost comes."""

    def connectionMade(self) -> None:
        self.events: list[str] = []
        if self.factory.producer:
            self.transport.registerProducer(ReadPauser(self.transport), True)
        if self.factory.lazyPauser:
            pauseReadingWhileBlocked(self.transport)

    def readConnectionLost(self) -> None:
        self.events.append("eof")
        reactor.callLater(0, self.events.append, "next turn")
        if self.factory.last:
            # A small send buffer, so the kernel surely cannot take it all at once (autotuning otherwise might).
            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            self.transport.write(self.factory.last)
        self.transport.loseConnection()
        self.events.append("returned")

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.events.append("lost")
        self.factory.lost.callback(self.events)


def _eofExchange(last: bytes = b"", producer: bool = False, lazyPauser: bool = False) -> defer.Deferred[Any]:
    factory = Factory.forProtocol(HalfCloser)
    factory.last, factory.producer, factory.lazyPauser = last, producer, lazyPauser
    factory.lost = defer.Deferred()
    port = _listen(factory)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.settimeout(10)
    client.shutdown(socket.SHUT_WR)

    def read() -> int:
        got = 0
        while chunk := client.recv(1 << 20):
            got += len(chunk)
        client.close()
        return got

    reading = threads.deferToThread(read)  # the client reads meanwhile: queued answers drain as it reads
    both = defer.gatherResults([factory.lost, reading])
    both.addBoth(lambda result: port.stopListening().addCallback(lambda _: result))
    return both


@pytest_twisted.inlineCallbacks
def test_close_at_eof_closes_once_the_protocol_has_returned():
    events, got = yield _eofExchange(last=b"bye")
    assert events[:3] == ["eof", "returned", "lost"]
    assert got == 3


@pytest_twisted.inlineCallbacks
def test_close_at_eof_flushes_queued_data_first():
    big = b"x" * (8 << 20)  # more than the socket buffers take at once: some of it is queued
    events, got = yield _eofExchange(last=big, lazyPauser=True)
    assert got == len(big)
    assert events.index("next turn") < events.index("lost")


@pytest_twisted.inlineCallbacks
def test_close_at_eof_waits_for_a_registered_producer():
    events, _ = yield _eofExchange(producer=True)
    assert events[:4] == ["eof", "returned", "next turn", "lost"]


class _Port:
    realPortNumber = 1


def _socketTransport() -> tuple[TCPConnection, socket.socket]:
    mine, peer = socket.socketpair()
    mine.setblocking(False)
    transport = TCPConnection(mine, Protocol(), None, _Port(), 1, MemoryReactor())
    transport.protocol.makeConnection(transport)
    return transport, peer


def test_read_pausing_registers_nothing_and_pauses_only_past_the_buffer_size():
    transport, peer = _socketTransport()
    readers = transport.reactor.readers
    try:
        assert IReadPausingTransport.implementedBy(type(transport))
        pauseReadingWhileBlocked(transport)
        assert transport.producer is None and transport in readers
        transport.write(b"sent at once")
        transport.write(b"x" * (transport.bufferSize // 2))  # may queue, but not past the buffer size
        assert transport.producer is None and transport in readers  # no epoll_ctl for it so far
        transport.write(b"x" * (16 << 20))  # the peer reads nothing: most of it is queued
        assert transport.producer is None  # still nothing registered: no producer holds a close
        assert transport not in readers  # past the buffer size: reading paused, as an eager pauser would
        peer.setblocking(False)
        for _ in range(10000):  # the peer reads it all: the queue drains and reading resumes
            if transport not in transport.reactor.writers:
                break
            try:
                while peer.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass
            transport.doWrite()
        assert transport in readers
        transport.loseConnection()
        assert transport not in readers and transport.disconnecting
    finally:
        peer.close()


def test_read_pausing_ends_with_unregister_producer():
    transport, peer = _socketTransport()
    try:
        pauseReadingWhileBlocked(transport)
        transport.unregisterProducer()  # what the policy layer's drain does: read all the peer sent
        transport.write(b"x" * (16 << 20))
        assert transport in transport.reactor.readers
    finally:
        peer.close()


def test_a_producer_of_the_protocols_own_replaces_the_waiting_pauser():
    transport, peer = _socketTransport()
    try:
        pauseReadingWhileBlocked(transport)
        mine = ReadPauser(transport)
        transport.registerProducer(mine, True)
        assert transport.producer is mine
        transport.write(b"x" * (16 << 20))
        assert transport.producer is mine
        with pytest.raises(RuntimeError):
            pauseReadingWhileBlocked(transport)  # as registerProducer always refused a second producer
    finally:
        transport.unregisterProducer()
        peer.close()


def test_write_refuses_text_and_ignores_writes_after_close():
    transport, peer = _socketTransport()
    try:
        with pytest.raises(TypeError):
            transport.write("text")  # type: ignore[arg-type]
        transport.writeSequence([b"a", b"b"])
        assert peer.recv(10) == b"ab"
        transport.connectionLost(Failure(error.ConnectionDone()))
        transport.write(b"after")  # no error, nothing sent
        assert peer.recv(10) == b""
    finally:
        peer.close()


@pytest_twisted.inlineCallbacks
def test_the_policy_layer_leaves_the_pauser_to_sockds_transport():
    registry = ConnectionRegistry(reactor)
    settings = Settings(max_connections=0, max_per_source=0, connection_rate=0.0, exempt=[])
    factory = PolicyFactory(EchoFactory(), serviceName="core-test", transportName="tcp",
                            admission=Admission(settings, time.time), registry=registry, clock=reactor)
    port = _listen(factory)
    try:
        client = socket.create_connection(("127.0.0.1", port.getHost().port))
        client.sendall(b"echo me")
        for _ in range(200):
            yield task.deferLater(reactor, 0.01, lambda: None)
            if registry.connections:
                break
        (policy,) = registry.connections
        assert isinstance(policy.transport, TCPConnection)
        assert policy.transport.producer is None  # not registered: nothing has queued
        client.settimeout(5)
        assert client.recv(100) == b"echo me"
        client.close()
    finally:
        yield port.stopListening()


@implementer(IHalfCloseableProtocol)
class WriteCloser(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"all of it")
        self.transport.loseWriteConnection()

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.factory.events.append("write closed")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.events.append(reason.type)
        self.factory.done.callback(None)


@pytest_twisted.inlineCallbacks
def test_half_close_from_the_server_side():
    factory = Factory.forProtocol(WriteCloser)
    factory.events, factory.done = [], defer.Deferred()
    port = _listen(factory)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.settimeout(5)
    try:
        received = yield threads.deferToThread(lambda: client.recv(100) + client.recv(100))
        assert received == b"all of it"  # then EOF: the server's write side is shut
        client.sendall(b"still open for reading")
        client.shutdown(socket.SHUT_WR)
        yield factory.done
        assert factory.events == ["write closed", error.ConnectionDone]
    finally:
        client.close()
        yield port.stopListening()


class Aborter(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(b"never sent" * 100000)
        self.transport.abortConnection()
        self.transport.abortConnection()  # twice is harmless

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.done.callback(reason.type)


@pytest_twisted.inlineCallbacks
def test_abort_drops_queued_data_and_resets():
    factory = Factory.forProtocol(Aborter)
    factory.done = defer.Deferred()
    port = _listen(factory)
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    try:
        client.sendall(b"go")
        assert (yield factory.done) is error.ConnectionAborted
        client.settimeout(5)
        with pytest.raises(ConnectionResetError):
            while client.recv(1 << 20):
                pass
    finally:
        client.close()
        yield port.stopListening()


# -- UDP: replies to the kernel's own address are not re-validated ------------------------------------------------


class Replier(DatagramProtocol):
    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.transport.write(b"re:" + data, addr)
        with pytest.raises(error.InvalidAddressError):
            self.transport.write(b"x", ("localhost", addr[1]))  # any other address is checked, as Twisted does
        self.done.callback(None)


@pytest_twisted.inlineCallbacks
def test_udp_replies_to_the_kernels_address_without_checking_it_again(monkeypatch):
    checked: list[str] = []
    real = abstract.isIPAddress
    monkeypatch.setattr(abstract, "isIPAddress", lambda a, *f: (checked.append(a), real(a, *f))[1])
    proto = Replier()
    proto.done = defer.Deferred()
    port = UDPPort(0, proto, "127.0.0.1", 65535, reactor)
    port.startListening()
    checked.clear()  # the interface, checked once at start
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.sendto(b"ping", ("127.0.0.1", port.getHost().port))
        yield proto.done
        client.settimeout(5)
        assert client.recv(100) == b"re:ping"
        assert set(checked) == {"localhost"}  # only the address the protocol made up
    finally:
        client.close()
        yield port.stopListening()


# -- Unix ports: a file made is removed, an adopted one is left alone ---------------------------------------------


@pytest_twisted.inlineCallbacks
def test_unix_port_sets_the_mode_of_its_file_and_removes_it(tmp_path):
    path = str(tmp_path / "s.sock")
    port = UNIXPort(path, Factory.forProtocol(Protocol), 50, 0o640, reactor)
    port.startListening()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    yield port.stopListening()
    assert not os.path.exists(path)


@pytest_twisted.inlineCallbacks
def test_an_adopted_unix_socket_keeps_its_file_and_mode(tmp_path):
    path = str(tmp_path / "adopted.sock")
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(path)
    bound.listen()
    os.chmod(path, 0o600)
    bound.setblocking(False)
    try:
        port = UNIXPort.fromListeningDescriptor(reactor, bound.fileno(), Factory.forProtocol(Protocol))
        port.startListening()
        assert not port.ownsFile
        yield port.stopListening()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        bound.close()


# -- no private attribute of Twisted ------------------------------------------------------------------------------

#: What sockd once read or set on Twisted's objects, before it had its own I/O core.
FORMERLY_USED = {"_tempDataBuffer", "_tempDataLen", "_writeDisconnected", "_aborting", "_postLoseConnection",
                 "_poller", "_selectables", "_doReadOrWrite", "_bindPath", "_realPortNumber", "_internalReaders",
                 "_preexistingSocket", "_fromListeningDescriptor", "_disconnectSelectable", "_removeAll"}


def _twistedPrivates(cls: type) -> set[str]:
    """The private names a Twisted class and its Twisted bases define or set on self."""
    names: set[str] = set()
    for base in cls.__mro__:
        if not base.__module__.startswith("twisted."):
            continue
        names.update(n for n in vars(base) if n.startswith("_") and not n.startswith("__"))
        try:
            names.update(re.findall(r"\bself\.(_[A-Za-z]\w*)", inspect.getsource(base)))
        except (OSError, TypeError):
            pass
    return names


def test_sockd_touches_no_private_attribute_of_twisted():
    import importlib

    problems = []
    for path in sorted((ROOT / "sockd").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in FORMERLY_USED:
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.attr}")
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts).replace(
            ".__init__", ""))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            cls = getattr(module, node.name, None)
            if not isinstance(cls, type):
                continue
            privates = _twistedPrivates(cls)
            for inner in ast.walk(node):
                name = None
                if isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name) and inner.value.id == "self":
                    name = inner.attr
                elif isinstance(inner, ast.FunctionDef):
                    name = inner.name
                if name in privates:
                    problems.append(f"{path.relative_to(ROOT)}:{inner.lineno} {node.name}.{name}")
    assert problems == []


def test_an_accepted_descriptor_python_refuses_is_closed_not_served(monkeypatch):
    """If CPython's check of an accepted descriptor fails, the port closes it and goes on accepting."""
    from twisted.python import log

    from sockd.core import stream

    built: list[Any] = []
    factory = Factory.forProtocol(Protocol)
    factory.buildProtocol = lambda addr: built.append(addr)  # type: ignore[method-assign]
    port = stream.TCPPort(0, factory, 5, "127.0.0.1", MemoryReactorClock())
    port.startListening()
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.settimeout(5)
    real = socket.socket

    def refusing(*args: Any, **kwargs: Any) -> socket.socket:
        if len(args) == 4:  # (family, type, proto, fileno): the accepted descriptor
            raise OSError(88, "Socket operation on non-socket")
        return real(*args, **kwargs)

    monkeypatch.setattr(stream.socket, "socket", refusing)
    errors: list[Any] = []
    log.addObserver(errors.append)
    try:
        port.doRead()
    finally:
        log.removeObserver(errors.append)
        monkeypatch.undo()
    assert built == [] and not [e for e in errors if e.get("isError")]  # no traceback logged either
    assert client.recv(10) == b""  # closed by the server, not left open
    client.close()
    port.loseConnection()
