"""C{ITLSTransport.startTLS} for sockd's server connections: TLS layered over a connection already speaking.

A protocol that talks in clear first (a STARTTLS command) asks its transport to
start TLS; from then on what it writes is encrypted and what it reads is
decrypted.  Twisted's connections do it with its memory-BIO TLS protocol
(C{twisted.protocols.tls}), inserted between the connection and the protocol;
so does this module, with Twisted's public classes only:

  - a L{TLSMemoryBIOProtocol} wraps the connection's protocol (already
    connected: it is not told of a new connection) and becomes the protocol
    the connection reads into;
  - the TLS layer writes through L{ClearTransport}, which reaches the
    connection's own (clear) methods;
  - the connection's C{write}, C{writeSequence}, C{loseConnection},
    C{registerProducer} and C{unregisterProducer} are replaced, on that one
    connection only, by L{TLSMethods}' (into the TLS layer).  A connection
    that never starts TLS pays nothing for it: its methods are its class's.

Anything written before C{startTLS} is sent (or queued) in clear first, in
order: the TLS bytes follow it on the same queue.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import alsoProvides, noLongerProvides

#: The connection's methods that go through the TLS layer once it is started.
LAYERED = ("write", "writeSequence", "loseConnection", "registerProducer", "unregisterProducer")


class ClearTransport:
    """The TLS layer's transport: the connection itself, but its layered methods are its class's (clear) ones.

    Anything else (C{getHost}, C{abortConnection}, C{connected}, ...) is the
    connection's, read through.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.plain = type(connection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)

    def write(self, data: bytes) -> None:
        self.plain.write(self.connection, data)

    def writeSequence(self, iovec: Any) -> None:
        # Not the class's writeSequence: it ends in self.write, which is the TLS layer's now.
        self.plain.write(self.connection, b"".join(iovec))

    def loseConnection(self) -> None:
        self.plain.loseConnection(self.connection)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.plain.registerProducer(self.connection, producer, streaming)

    def unregisterProducer(self) -> None:
        self.plain.unregisterProducer(self.connection)


class TLSMethods:
    """The layered methods of a connection that started TLS: into its TLS protocol (Twisted's, in the same cases)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def write(self, data: bytes) -> None:
        """Encrypt and send; dropped once the connection is lost."""
        if self.connection.connected:
            self.connection.protocol.write(data)

    def writeSequence(self, iovec: Any) -> None:
        if self.connection.connected:
            self.connection.protocol.writeSequence(iovec)

    def loseConnection(self) -> None:
        """Send TLS's close alert, then close."""
        if self.connection.connected and not self.connection.disconnecting:
            self.connection.protocol.loseConnection()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """The TLS layer registers it (wrapped) with the connection: it may pause it while the handshake waits."""
        self.connection.protocol.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.connection.protocol.unregisterProducer()


def startTLS(connection: Any, contextFactory: Any, client: bool) -> None:
    """Layer TLS over C{connection}: as the TLS client if C{client}, else as the server.

    A registered producer is registered again through the TLS layer.  If the
    context factory fails (it raises from the TLS protocol's start), the
    connection is left as it was, in clear, and the error raised.
    """
    producer, streaming = connection.producer, connection.streamingProducer
    if producer is not None:
        connection.unregisterProducer()
    # No wrapped factory (as in Twisted's startTLS): the protocol exists already.  The clock: this connection's.
    tlsFactory = TLSMemoryBIOFactory(contextFactory, client, None, connection.reactor)  # type: ignore[arg-type]
    # The third argument (False): do not call the wrapped protocol's makeConnection; it is connected already.
    # TLSMemoryBIOProtocol documents it for exactly this, a transport's startTLS.
    tlsProtocol = tlsFactory.protocol(tlsFactory, connection.protocol, False)
    wrapped = connection.protocol
    connection.protocol = tlsProtocol
    methods = TLSMethods(connection)
    for name in LAYERED:
        setattr(connection, name, getattr(methods, name))
    connection.getHandle = tlsProtocol.getHandle
    connection.getPeerCertificate = tlsProtocol.getPeerCertificate
    alsoProvides(connection, ISSLTransport)
    connection.TLS = True
    try:
        tlsProtocol.makeConnection(ClearTransport(connection))
    except BaseException:
        connection.protocol = wrapped
        for name in (*LAYERED, "getHandle", "getPeerCertificate", "TLS"):
            vars(connection).pop(name, None)
        noLongerProvides(connection, ISSLTransport)
        if producer is not None:
            connection.registerProducer(producer, streaming)
        raise
    if producer is not None:
        connection.registerProducer(producer, streaming)


__all__ = ["LAYERED", "ClearTransport", "TLSMethods", "startTLS"]
