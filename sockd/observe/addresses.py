"""Short, readable forms of the addresses Twisted hands us, for logs and errors."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress


def formatAddress(address: object) -> str:
    """Return C{host:port}, C{[v6]:port} or the Unix path for an address object or tuple."""
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, UNIXAddress):
        name = address.name
        if isinstance(name, bytes):
            return name.decode("utf-8", "backslashreplace") or "unix:(unnamed)"
        return name or "unix:(unnamed)"
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    hostOf = getattr(address, "host", None)
    if hostOf is not None:
        return f"{hostOf}:{getattr(address, 'port', '?')}"
    return str(address)


def transportOf(address: object) -> str:
    """The transport a stream peer came over, as logs and metrics name it: C{unix} or C{tcp}."""
    return "unix" if isinstance(address, UNIXAddress) else "tcp"


def hostOf(address: object) -> str | None:
    """The IP address of a peer, or None for peers without one (Unix sockets)."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        return address.host
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None
