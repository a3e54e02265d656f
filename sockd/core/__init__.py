"""sockd's own I/O core: an epoll reactor with its own listening ports and transports (the default).

The ground floor: it imports nothing of sockd but L{sockd.errors} and
L{sockd.interfaces}, so every layer above may use it and none of its hot paths
depends on how sockd is assembled.  Protocols reach it only through Twisted's
transport interfaces and L{sockd.interfaces.IReadPausingTransport}.
"""

__all__ = ["datagram", "reactor", "starttls", "stream"]
