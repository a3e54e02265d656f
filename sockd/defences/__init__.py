"""The policies in front of the services: access lists, limits, rates, timeouts, PROXY protocol.

Each wraps a factory or a datagram protocol (as L{twisted.protocols.policies}
does), so the services in L{sockd.protocols} stay unaware of them.
"""

__all__ = ["access", "admission", "datagram", "proxyprotocol", "ratelimit", "stream"]
