"""A plain Twisted peer for sockd's benchmark: what a Twisted user writes first.

LineReceiver for ack (each line answered with the 18 bytes C{I got your message}),
a Protocol that writes back what it reads for echo, DatagramProtocols for UDP, on
the epoll reactor.  No policies, no logging, no flow control beyond Twisted's own.

    python twisted_plain.py --ack tcp:0 --ack udp:0 --ack unix:/tmp/t.sock --echo tcp:0 ...

Prints C{SERVICE listening on TRANSPORT ADDR} for each listener, like sockd.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor  # noqa: E402
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol  # noqa: E402
from twisted.protocols.basic import LineReceiver  # noqa: E402

STREAM_ANSWER = b"I got your message"
DATAGRAM_ANSWER = b"Got your message\n"


class Ack(LineReceiver):
    """Answer each newline-terminated line."""

    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        self.transport.write(STREAM_ANSWER)


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class AckDatagram(DatagramProtocol):
    noisy = False

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(DATAGRAM_ANSWER, addr)


class EchoDatagram(DatagramProtocol):
    noisy = False

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.transport.write(datagram, addr)


def listen(name: str, description: str) -> None:
    """Bind one C{tcp:PORT[:interface=ADDR]}, C{udp:...} or C{unix:PATH} listener and announce it."""
    kind, _, rest = description.partition(":")
    parts = rest.split(":")
    interface = "127.0.0.1"
    for extra in parts[1:]:
        key, _, value = extra.partition("=")
        if key == "interface":
            interface = value
    stream = Factory.forProtocol(Ack if name == "ack" else Echo)
    stream.noisy = False
    if kind == "tcp":
        port = reactor.listenTCP(int(parts[0]), stream, backlog=4096, interface=interface)
        print(f"{name} listening on tcp {interface}:{port.getHost().port}", flush=True)
    elif kind == "unix":
        if os.path.exists(parts[0]):
            os.unlink(parts[0])
        reactor.listenUNIX(parts[0], stream, backlog=4096)
        print(f"{name} listening on unix {parts[0]}", flush=True)
    elif kind == "udp":
        proto = AckDatagram() if name == "ack" else EchoDatagram()
        port = reactor.listenUDP(int(parts[0]), proto, interface=interface, maxPacketSize=65535)
        print(f"{name} listening on udp {interface}:{port.getHost().port}", flush=True)
    else:
        raise SystemExit(f"unknown listen description {description}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ack", action="append", default=[], metavar="DESC")
    parser.add_argument("--echo", action="append", default=[], metavar="DESC")
    args = parser.parse_args(argv)
    for description in args.ack:
        listen("ack", description)
    for description in args.echo:
        listen("echo", description)
    reactor.run()


if __name__ == "__main__":
    main()
