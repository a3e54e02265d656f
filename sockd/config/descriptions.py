"""Listen descriptions: Twisted endpoint strings, plus C{udp:} for datagrams.

A stream description is whatever Twisted's C{serverFromString} takes.  Twisted
has no datagram endpoint strings (twisted#4471), so sockd reads C{udp:PORT},
C{udp:PORT:interface=ADDR} and, for sockets inherited from systemd or a parent
process, C{udp:fd=N[:family=inet6]} or C{udp:index=N} itself.  The splitting
rules (colons separate, backslash escapes) are Twisted's own.

Each description is parsed once, into a L{ListenSpec}: its kind, transport,
address and options, whether a PROXY protocol header comes first, and the
endpoint string Twisted gets.  The rest of sockd reads those fields.
"""

from __future__ import annotations

import grp
import ipaddress
import pwd
import re
import socket
from dataclasses import dataclass
from typing import Any

from sockd.config.faults import FAULT_KEYS, FaultError, Faults, parseFaults


class DescriptionError(ValueError):
    """A listen description that cannot be used, in words a user can act on."""


def _pieces(description: str) -> list[str]:
    """The colon-separated pieces of a description, their escapes kept (so a piece can be passed on as written)."""
    pieces: list[str] = []
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(char + next(chars, ""))
        elif char == ":":
            pieces.append("".join(current))
            current = []
        else:
            current.append(char)
    pieces.append("".join(current))
    return pieces


def _unescape(piece: str) -> tuple[str, int | None]:
    """A piece's literal text, and where its first unescaped C{=} is (None: a positional part)."""
    text: list[str] = []
    equals: int | None = None
    chars = iter(piece)
    for char in chars:
        if char == "\\":
            text.append(next(chars, "\\"))  # a trailing lone backslash is kept
        else:
            if char == "=" and equals is None:
                equals = len(text)
            text.append(char)
    return "".join(text), equals


def _fields(pieces: list[str]) -> tuple[str, list[str], dict[str, str]]:
    kind = _unescape(pieces[0])[0].lower()
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for piece in pieces[1:]:
        text, eq = _unescape(piece)
        if eq is None:
            args.append(text)
        else:
            kwargs[text[:eq]] = text[eq + 1 :]
    return kind, args, kwargs


def split(description: str) -> tuple[str, list[str], dict[str, str]]:
    """Split C{kind:arg:key=value} into its kind, positional and keyword parts.

    As in Twisted, a backslash makes the next character literal, so an escaped
    colon or equals sign belongs to the value.
    """
    return _fields(_pieces(description))


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


#: Listener kinds with a TLS handshake, and so a handshake deadline (their transport is tcp).
TLS_KINDS = ("ssl", "tls")

#: Kinds whose first positional part (or C{port=}) is a TCP port number.
_PORT_KINDS = ("tcp", "tcp6", "ssl")

#: Options sockd reads itself from a C{unix:} description; Twisted's parser never sees them.
_OWNERSHIP = ("owner", "group")


def _user(text: str, description: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise DescriptionError(f"{description}: owner {text!r}: no such user") from None


def _group(text: str, description: str) -> int:
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise DescriptionError(f"{description}: group {text!r}: no such group") from None


@dataclass(frozen=True)
class ListenSpec:
    """One listen description of one service, parsed once: everything else reads these fields.

    C{kind} is what the listener is (tcp, tcp6, unix, ssl, tls, systemd, udp,
    or another Twisted endpoint plugin's prefix); C{transport} is what carries
    its bytes (tcp, udp or unix), as logs and metrics name it.  A C{haproxy:}
    description is its inner listener with C{proxy} set.  C{endpoint} is what
    Twisted's C{serverFromString} gets: the inner description, an IPv6
    interface escaped, sockd's own options (C{owner=}, C{group=}, the fault
    options) removed.  C{faults} is what the listener does wrong on purpose
    (L{sockd.config.faults}), None for an honest one.  C{str(spec)} is the
    description as written, which parses back to an equal spec.
    """

    service: str
    description: str
    kind: str
    endpoint: str
    proxy: bool = False
    #: Positional and keyword parts of the inner description, unescaped, in order.
    args: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()
    #: The address: an interface and port, a Unix socket path, or (udp:) the datagram address.
    host: str = ""
    port: int | None = None
    path: str | None = None
    datagram: DatagramAddress | None = None
    #: A Unix socket file's owner and group (numeric ids) when the description names them.
    owner: int | None = None
    group: int | None = None
    faults: Faults | None = None

    @classmethod
    def parse(cls, service: str, description: str) -> ListenSpec:
        """Parse C{description}; raise L{DescriptionError} naming what is wrong."""
        pieces = _pieces(escapeInterface(description))
        proxy = _fields(pieces[:1])[0] == "haproxy" and len(pieces) > 1
        if proxy:
            pieces = pieces[1:]
        kind, args, kwargs = _fields(pieces)
        if proxy and kind in TLS_KINDS:
            raise DescriptionError(
                f"{description}: PROXY protocol over TLS is not supported (the balancer sends the header"
                " before the TLS handshake); terminate TLS at the balancer, or use haproxy:tcp:..."
            )
        if proxy and kind == "udp":
            raise DescriptionError(f"{description}: the PROXY protocol (haproxy:) is for stream listeners")
        fields: dict[str, Any] = {}
        honest = [p for p in pieces if _ownKey(p) not in FAULT_KEYS]
        if len(honest) < len(pieces):
            unix = kind == "unix" or (kind == "systemd" and kwargs.get("domain", "").upper() == "UNIX")
            transport = "udp" if kind == "udp" else "unix" if unix else "tcp"
            try:
                fields["faults"] = parseFaults(kwargs, transport, tls=kind in TLS_KINDS)
            except FaultError as e:
                raise DescriptionError(f"{description}: {e}") from None
            pieces = honest
            kind, args, kwargs = _fields(pieces)
        if kind == "udp":
            datagram = parseDatagram(":".join(pieces))
            inherited = datagram.fd is not None
            fields.update(datagram=datagram, host=datagram.interface, port=None if inherited else datagram.port)
        elif kind in _PORT_KINDS:
            port = kwargs.get("port", args[0] if args else None)
            if port is None or not port.isdigit() or int(port) > 65535:
                raise DescriptionError(f"{description}: port {port!r} is not a number from 0 to 65535")
            fields.update(port=int(port), host=kwargs.get("interface", ""))
        elif kind == "unix":
            fields.update(path=kwargs.get("address") or (args[0] if args else None))
        given = [key for key in _OWNERSHIP if key in kwargs]
        if given and kind != "unix":
            raise DescriptionError(f"{description}: {given[0]}= is for unix: sockets only")
        if "owner" in kwargs:
            fields["owner"] = _user(kwargs["owner"], description)
        if "group" in kwargs:
            fields["group"] = _group(kwargs["group"], description)
        endpoint = ":".join(p for p in pieces if _ownKey(p) not in _OWNERSHIP)
        return cls(service=service, description=description, kind=kind, endpoint=endpoint, proxy=proxy,
                   args=tuple(args), options=tuple(kwargs.items()), **fields)

    def __str__(self) -> str:
        return self.description

    @property
    def identity(self) -> ListenSpec:
        """The same listener without its fault options: what a reload compares to keep a socket open.

        Switching faults on, off or to others changes only C{faults}, never what is bound.
        """
        if self.faults is None:
            return self
        honest = [p for p in _pieces(self.description) if _ownKey(p) not in FAULT_KEYS]
        return ListenSpec.parse(self.service, ":".join(honest))

    def option(self, key: str, default: str | None = None) -> str | None:
        """A keyword part of the description (C{mode}, C{interface}, C{backlog} ...), or C{default}."""
        return dict(self.options).get(key, default)

    @property
    def transport(self) -> str:
        """What carries the bytes, as logs and metrics name it: tcp, udp or unix.

        TLS, the PROXY protocol and systemd's sockets are carried by one of those three.
        """
        if self.kind in ("udp", "unix"):
            return self.kind
        if self.kind == "systemd":
            return "unix" if (self.option("domain") or "").upper() == "UNIX" else "tcp"
        return "tcp"

    @property
    def label(self) -> str:
        """The listener's kind as its start-up line names it: C{haproxy} for a PROXY protocol listener."""
        return "haproxy" if self.proxy else self.kind

    @property
    def tls(self) -> bool:
        """Whether connections begin with a TLS handshake (and so get a handshake deadline)."""
        return self.kind in TLS_KINDS


def _ownKey(piece: str) -> str | None:
    text, eq = _unescape(piece)
    return None if eq is None else text[:eq]
