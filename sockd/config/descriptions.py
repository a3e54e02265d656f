"""Listen descriptions: Twisted endpoint strings, plus C{udp:} for datagrams.

A stream description is whatever Twisted's C{serverFromString} takes.  Twisted
has no datagram endpoint strings (twisted#4471), so sockd reads C{udp:PORT},
C{udp:PORT:interface=ADDR} and, for sockets inherited from systemd or a parent
process, C{udp:fd=N[:family=inet6]} or C{udp:index=N} itself.  The splitting
rules (colons separate, backslash escapes) are Twisted's own.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass


class DescriptionError(ValueError):
    """A listen description that cannot be used, in words a user can act on."""


def split(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split C{kind:arg:key=value} into its kind, positional and keyword parts.

    As in Twisted, a backslash makes the next character literal, so an escaped
    colon or equals sign belongs to the value.
    """
    parts: list[tuple[str, int | None]] = []  # (text, index of the first unescaped "=")
    current: list[str] = []
    equals: int | None = None
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
        elif char == ":":
            parts.append(("".join(current), equals))
            current, equals = [], None
        else:
            if char == "=" and equals is None:
                equals = len(current)
            current.append(char)
    parts.append(("".join(current), equals))
    kind = parts[0][0].lower()
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for text, eq in parts[1:]:
        if eq is None:
            args.append(text)
        else:
            kwargs[text[:eq]] = text[eq + 1 :]
    return kind, args, kwargs


@dataclass(frozen=True)
class DatagramAddress:
    """Where a datagram listener binds, or which inherited socket it adopts."""

    port: int = 0
    interface: str = ""
    fd: int | None = None
    family: socket.AddressFamily = socket.AF_INET


def _port(text: str, description: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise DescriptionError(f"{description!r}: port {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise DescriptionError(f"{description!r}: port {port} is out of range 0-65535")
    return port


def _fd(text: str, description: str) -> int:
    try:
        fd = int(text)
    except ValueError:
        raise DescriptionError(f"{description!r}: {text!r} is not a file descriptor number") from None
    if fd < 0:
        raise DescriptionError(f"{description!r}: file descriptor {fd} is negative")
    return fd


#: systemd passes inherited sockets from this descriptor on (sd_listen_fds).
SD_LISTEN_FDS_START = 3

_FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


#: An IPv6 literal written without Twisted's escapes, up to the next C{:key=} or the end.
_BARE_IPV6 = re.compile(r"interface=([0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:%\w+)?)(?=:[A-Za-z]\w*=|$)")


def escapeInterface(description: str) -> str:
    """Accept C{interface=::1} as well as Twisted's C{interface=\\:\\:1}, in stream and datagram descriptions."""
    return _BARE_IPV6.sub(lambda m: "interface=" + m.group(1).replace(":", "\\:"), description)


def parseDatagram(description: str) -> DatagramAddress:
    """Parse a C{udp:} description; raise L{DescriptionError} naming what is wrong.

    C{udp:} takes one port and nothing else positional, so an IPv6 interface may
    be written with or without Twisted's escaped colons (C{interface=::1}).
    """
    kind, args, kwargs = split(escapeInterface(description))
    if kind != "udp":
        raise DescriptionError(f"{description!r} is not a udp: description")
    unknown = set(kwargs) - {"interface", "fd", "index", "family"}
    if unknown:
        raise DescriptionError(f"{description!r}: unknown parameter {sorted(unknown)[0]!r}")
    family = None
    if "family" in kwargs:
        family = _FAMILIES.get(kwargs["family"].lower())
        if family is None:
            raise DescriptionError(f"{description!r}: family must be inet or inet6")
    if "fd" in kwargs or "index" in kwargs:
        if args or "interface" in kwargs:
            raise DescriptionError(f"{description!r}: an inherited socket takes no port or interface")
        if "fd" in kwargs:
            fd = _fd(kwargs["fd"], description)
        else:
            fd = SD_LISTEN_FDS_START + _fd(kwargs["index"], description)
        if family is None:
            family = _socketFamily(fd, description)
        return DatagramAddress(fd=fd, family=family)
    if len(args) != 1:
        raise DescriptionError(f"{description!r}: expected udp:PORT[:interface=ADDRESS]")
    port = _port(args[0], description)
    interface = kwargs.get("interface", "")
    if interface:
        try:
            address = ipaddress.ip_address(interface.split("%")[0])
        except ValueError:
            raise DescriptionError(f"{description!r}: interface {interface!r} is not an IP address") from None
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return DatagramAddress(port=port, interface=interface, family=family or socket.AF_INET)


def _socketFamily(fd: int, description: str) -> socket.AddressFamily:
    """The address family of an inherited socket, which adoptDatagramPort needs told."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise DescriptionError(f"{description!r}: descriptor {fd} is not an open socket ({e.strerror})") from None
    try:
        if sock.type != socket.SOCK_DGRAM:
            raise DescriptionError(f"{description!r}: descriptor {fd} is not a datagram socket")
        return sock.family
    finally:
        sock.detach()


def isDatagram(description: str) -> bool:
    """Whether a description is sockd's own C{udp:} rather than a Twisted stream endpoint."""
    return split(description)[0] == "udp"


def transportName(description: str) -> str:
    """The kind of listener a description makes: tcp, tcp6, unix, ssl, udp, ..."""
    return split(description)[0]


def socketTransport(description: str) -> str:
    """The transport a description's sockets use, as logs and metrics name it: tcp, udp or unix.

    TLS, PROXY protocol and systemd's sockets are carried by one of those three
    (a listener's kind, such as ssl, stays in its description).
    """
    kind, args, kwargs = split(description)
    if kind == "haproxy" and ":" in description:
        return socketTransport(description.split(":", 1)[1])
    if kind in ("udp", "unix"):
        return kind
    if kind == "systemd":
        return "unix" if kwargs.get("domain", "").upper() == "UNIX" else "tcp"
    return "tcp"
