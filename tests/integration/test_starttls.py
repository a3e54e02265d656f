"""ITLSTransport.startTLS on server connections: clear text first, then TLS on the same connection.

Real loopback connections (TCP and Unix), a stdlib C{ssl} client in a thread.
Each exchange runs on sockd's own ports, and on the suite's reactor's
C{listenTCP}/C{listenUNIX}: on Twisted's reactor (SOCKD_TEST_REACTOR=epoll)
those are Twisted's own connections, the behaviour sockd's must match.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import twisted.test
from twisted.internet import defer, error, reactor, threads
from twisted.internet import ssl as tssl
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from sockd.core.stream import StreamConnection, TCPPort, UNIXPort

PEM = Path(twisted.test.__file__).parent / "server.pem"
#: Written in clear just before startTLS: more than the (shrunk) socket buffers take, so part of it is queued.
BIG = 1 << 20


def serverOptions() -> Any:
    return tssl.PrivateCertificate.loadPEM(PEM.read_bytes()).options()


class StartTLSServer(LineReceiver):
    """Answers lines in clear until STARTTLS, then in TLS; C{bye} closes (with TLS's close alert)."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self.transport)
        self.events: list[Any] = []

    def lineReceived(self, line: bytes) -> None:
        secure = ISSLTransport.providedBy(self.transport)
        if line == b"STARTTLS":
            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            self.transport.write(b"OK " + b"x" * BIG + b"\r\n")  # queued in clear, to go out before any TLS
            self.transport.startTLS(self.factory.tlsOptions, self.factory.normal)
        elif line == b"bye":
            self.sendLine(b"bye")
            self.transport.loseConnection()
        else:
            self.transport.writeSequence([b"secure:" if secure else b"clear:", line, b"\r\n"])

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.events.append(reason.type if reason is not None else None)
        self.factory.done.callback(self.events)


def _listen(kind: str, factory: Any, tmp_path: Path, name: str = "s") -> tuple[Any, Callable[[], socket.socket]]:
    path = str(tmp_path / name)
    if kind == "sockd-tcp":
        port: Any = TCPPort(0, factory, 50, "127.0.0.1", reactor)
        port.startListening()
    elif kind == "sockd-unix":
        port = UNIXPort(path, factory, reactor=reactor)
        port.startListening()
    elif kind == "reactor-tcp":
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    else:
        port = reactor.listenUNIX(path, factory)
    if kind.endswith("tcp"):
        where = port.getHost().port
        return port, lambda: socket.create_connection(("127.0.0.1", where), timeout=20)

    def connectUnix() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(path)
        return sock
    return port, connectUnix


def _readClear(sock: socket.socket, want: int) -> bytes:
    """Exactly C{want} bytes of clear text, and not one byte of what follows (the TLS handshake's)."""
    got = b""
    while len(got) < want:
        chunk = sock.recv(min(1 << 16, want - len(got)))
        if not chunk:
            break
        got += chunk
    return got


def _client(connect: Callable[[], socket.socket], serverSide: bool) -> list[bytes]:
    """The peer: two lines in clear, STARTTLS, then TLS (as the client, or the server if C{serverSide})."""
    seen: list[bytes] = []
    with connect() as sock:
        sock.sendall(b"before\r\nSTARTTLS\r\n")
        seen.append(_readClear(sock, len(b"clear:before\r\n")))
        okLine = _readClear(sock, len(b"OK ") + BIG + 2)
        seen.append(okLine[:3] + str(len(okLine) - 5).encode() + okLine[-2:])
        if serverSide:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(PEM)
            tls = context.wrap_socket(sock, server_side=True, suppress_ragged_eofs=False)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.load_verify_locations(PEM)  # the server's own certificate: verified
            tls = context.wrap_socket(sock, suppress_ragged_eofs=False)
        with tls:
            tls.sendall(b"hello\r\n")
            seen.append(_readTLSLine(tls))
            tls.sendall(b"bye\r\n")
            rest = b""
            while chunk := tls.recv(1 << 16):  # b"" only at TLS's close alert (else SSLEOFError)
                rest += chunk
            seen.append(rest)
            tls.unwrap()  # the close alert in answer: the server's TLS shutdown completes, then it closes
    return seen


def _readTLSLine(tls: ssl.SSLSocket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = tls.recv(1)
        if not chunk:
            break
        line += chunk
    return line


def _factory(tlsOptions: Any, normal: bool) -> Any:
    factory = Factory.forProtocol(StartTLSServer)
    factory.tlsOptions, factory.normal = tlsOptions, normal
    factory.connections, factory.done = [], defer.Deferred()
    return factory


KINDS = ["sockd-tcp", "sockd-unix", "reactor-tcp", "reactor-unix"]


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.inlineCallbacks
def test_starttls_after_clear_text_as_the_tls_server(kind, tmp_path):
    factory = _factory(serverOptions(), True)
    port, connect = _listen(kind, factory, tmp_path)
    try:
        seen, events = yield defer.gatherResults([threads.deferToThread(_client, connect, False), factory.done])
    finally:
        yield port.stopListening()
    assert seen == [b"clear:before\r\n", b"OK " + str(BIG).encode() + b"\r\n", b"secure:hello\r\n", b"bye\r\n"]
    transport = factory.connections[0]
    assert ITLSTransport.providedBy(transport) and ISSLTransport.providedBy(transport)
    # Closed (the client saw TLS's close alert): ConnectionDone, or ConnectionLost when the peer's close races
    # the server's, as on Twisted's own Unix connections.
    assert len(events) == 1 and issubclass(events[0], error.ConnectionClosed)


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.inlineCallbacks
def test_starttls_not_normal_makes_the_server_connection_the_tls_client(kind, tmp_path):
    factory = _factory(tssl.CertificateOptions(), False)
    port, connect = _listen(kind, factory, tmp_path)
    try:
        seen, _ = yield defer.gatherResults([threads.deferToThread(_client, connect, True), factory.done])
    finally:
        yield port.stopListening()
    assert seen[2:] == [b"secure:hello\r\n", b"bye\r\n"]


class Counter(Protocol):
    """Echoes, and remembers its transport."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.mark.parametrize("kind", ["sockd-tcp", "sockd-unix"])
@pytest_twisted.inlineCallbacks
def test_a_connection_that_never_starts_tls_keeps_its_class_methods(kind, tmp_path):
    """The hot path: startTLS changes one connection's methods, never its class's nor another connection's."""
    tls = _factory(serverOptions(), True)
    port, connect = _listen(kind, tls, tmp_path)
    plainFactory = Factory.forProtocol(Counter)
    plainFactory.connections = []
    plainPort, plainConnect = _listen(kind, plainFactory, tmp_path, "plain")
    try:
        with plainConnect() as plain:
            seen, _ = yield defer.gatherResults([threads.deferToThread(_client, connect, False), tls.done])
            plain.sendall(b"ping")
            echoed = yield threads.deferToThread(plain.recv, 4)
    finally:
        yield port.stopListening()
        yield plainPort.stopListening()
    assert echoed == b"ping"
    started, untouched = tls.connections[0], plainFactory.connections[0]
    assert isinstance(started, StreamConnection) and started.TLS
    assert "write" in vars(started) and "write" not in vars(untouched) and not untouched.TLS
    assert not ISSLTransport.providedBy(untouched)
    for name in ("write", "writeSequence", "loseConnection", "registerProducer", "unregisterProducer"):
        assert getattr(type(untouched), name) is getattr(StreamConnection, name)


@pytest.mark.parametrize("kind", ["sockd-tcp", "sockd-unix"])
@pytest_twisted.inlineCallbacks
def test_a_failing_context_raises_from_starttls_and_leaves_the_connection_in_clear(kind, tmp_path):
    class Broken:
        def getContext(self) -> Any:
            raise ValueError("no context")

    class Asker(Protocol):
        def dataReceived(self, data: bytes) -> None:
            try:
                self.transport.startTLS(Broken())
            except ValueError as e:
                self.transport.write(f"refused: {e}".encode())
            self.transport.loseConnection()

        def connectionLost(self, reason: Failure | None = None) -> None:
            self.factory.done.callback(self.transport)

    factory = Factory.forProtocol(Asker)
    factory.done = defer.Deferred()
    port, connect = _listen(kind, factory, tmp_path)

    def talk() -> bytes:
        with connect() as sock:
            sock.sendall(b"go")
            got = b""
            while chunk := sock.recv(100):
                got += chunk
            return got

    try:
        got, transport = yield defer.gatherResults([threads.deferToThread(talk), factory.done])
    finally:
        yield port.stopListening()
    assert got == b"refused: no context"
    assert not transport.TLS and not ISSLTransport.providedBy(transport) and "write" not in vars(transport)


def test_unix_connections_offer_what_twisteds_offer_starttls_included():
    from twisted.internet import unix
    from zope.interface import implementedBy

    from sockd.core.stream import UNIXConnection

    assert ITLSTransport.implementedBy(unix.Server) and ITLSTransport.implementedBy(UNIXConnection)
    # Every interface of Twisted's Unix server connection, ITCPTransport (ITLSTransport's base) included.
    assert set(implementedBy(UNIXConnection).flattened()) >= set(implementedBy(unix.Server).flattened())
