"""sockd's own I/O core: an epoll reactor with its own listening ports and transports (the default)."""

__all__ = ["datagram", "reactor", "stream"]
