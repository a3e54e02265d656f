"""Where the client talks to: an address, a transport, TLS or not, and how to open a socket to it.

Connecting, and turning a failure to connect into one line, is written here once
for every mode: the one-shot exchange, ping, load and the clock checks.  Whether
to try the resolver's next address is decided on the exception (a refused
connection), never on the words of a message.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeAlias

from sockd.client.errors import ClientError, FatalError, RefusedError, UsageError

#: The most a datagram exchange reads: any UDP payload.
DATAGRAM_READ = 65536


def reason(e: BaseException) -> str:
    """The words of an OS or TLS error, without its errno prefix."""
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e)
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


#: A socket address as getaddrinfo gives it (IPv4, IPv6), or a Unix socket's path.
SockAddr: TypeAlias = str | tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]


@dataclass
class Target:
    """One server: where it is, over what, and with which TLS settings."""
    transport: str  # "tcp", "udp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""
    tls: ssl.SSLContext | None = None
    servername: str | None = None
    family: int = socket.AF_UNSPEC
    sockaddr: SockAddr | None = None
    #: The resolver's other addresses, tried in turn while connections are refused (streams only).
    others: list[tuple[int, SockAddr]] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        """HOST:PORT ([::1]:PORT for IPv6), or the Unix socket's path."""
        if self.transport == "unix":
            return self.path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def stream(self) -> bool:
        """True for TCP and Unix (with or without TLS), False for UDP."""
        return self.transport != "udp"

    @property
    def transportName(self) -> str:
        """tcp, udp or unix, with +tls when it speaks TLS."""
        return f"{self.transport}+tls" if self.tls else self.transport

    def resolve(self) -> None:
        """Look the host up once: every socket of a run goes to the same address.

        That is the resolver's first, or for a stream the first that accepts a connection (localhost may be
        ::1 first, with the server only on 127.0.0.1).
        """
        if self.transport == "unix":
            self.family, self.sockaddr = socket.AF_UNIX, self.path
            return
        kind = socket.SOCK_DGRAM if self.transport == "udp" else socket.SOCK_STREAM
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=kind)
        except socket.gaierror:
            raise ClientError(f"unknown host {self.host}") from None
        self.family, self.sockaddr = infos[0][0], infos[0][4]
        self.others = [(info[0], info[4]) for info in infos[1:]] if kind == socket.SOCK_STREAM else []

    def connectStream(self, timeout: float) -> socket.socket:
        """A connected (and, with TLS, handshaken) blocking stream socket with C{timeout}; ClientError if not."""
        while True:
            try:
                sock = self._connectStream(timeout)
            except RefusedError:
                if not self.others:
                    raise
                self.family, self.sockaddr = self.others.pop(0)
                continue
            self.others = []  # settled: from now on only this address
            return sock

    def _connectStream(self, timeout: float) -> socket.socket:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        if self.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            assert self.sockaddr is not None  # resolved first
            sock.connect(self.sockaddr)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.servername)
        except ConnectionRefusedError:
            sock.close()
            raise RefusedError(f"connection refused by {self.label}") from None
        except FileNotFoundError:
            sock.close()
            raise ClientError(f"no such socket: {self.label}") from None
        except TimeoutError:
            sock.close()
            raise ClientError(f"timed out connecting to {self.label}") from None
        except ssl.SSLCertVerificationError as e:
            sock.close()
            raise FatalError(f"TLS: cannot verify {self.label}: {e.verify_message} "
                             "(--cafile FILE, or --insecure for a test certificate)") from None
        except ssl.SSLError as e:
            sock.close()
            raise ClientError(f"TLS handshake with {self.label} failed: {e.reason or e}") from None
        except OSError as e:
            sock.close()
            raise ClientError(f"cannot connect to {self.label}: {reason(e)}") from None
        return sock

    def datagramSocket(self) -> socket.socket:
        """A non-blocking UDP socket connected to the target (so ICMP port-unreachable is seen, and only its
        replies are received)."""
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            assert self.sockaddr is not None  # resolved first
            sock.connect(self.sockaddr)
        except OSError as e:
            sock.close()
            raise ClientError(f"cannot reach {self.label}: {reason(e)}") from None
        sock.setblocking(False)
        return sock

    @contextmanager
    def datagramErrors(self, timeout: float) -> Iterator[None]:
        """Turn the failures of one blocking datagram exchange into one line each."""
        try:
            yield
        except TimeoutError:
            raise ClientError(f"no answer from {self.label} within {timeout:g} s") from None
        except ConnectionRefusedError:
            raise ClientError(f"nothing is listening at {self.label}") from None
        except OSError as e:
            raise ClientError(f"cannot reach {self.label}: {reason(e)}") from None

    def datagramExchange(self, payload: bytes, timeout: float) -> bytes:
        """Send one datagram and return the first one that comes back (within C{timeout})."""
        with self.datagramSocket() as sock, self.datagramErrors(timeout):
            sock.settimeout(timeout)
            sock.send(payload)
            return sock.recv(DATAGRAM_READ)


def tlsContext(cafile: str | None, insecure: bool) -> ssl.SSLContext:
    """A client context: verified against the system store (or C{cafile}), or not verified at all."""
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"cannot read --cafile {cafile}: {getattr(e, 'strerror', None) or e}") from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
