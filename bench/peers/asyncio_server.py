"""A stdlib asyncio peer for sockd's benchmark: ack and echo over TCP, UDP and Unix sockets.

The straightforward Protocol-based version: ack frames a stream at "\\n" (or 255
bytes) and answers each message with the 18 bytes C{I got your message}; each
datagram gets the 17 bytes C{Got your message\\n}; echo returns what it reads.
Reading pauses while the transport's write buffer is full.  C{--uvloop} runs the
same code on uvloop's event loop.

    python asyncio_server.py [--uvloop] --ack tcp:0 --ack udp:0 --ack unix:/tmp/a.sock --echo tcp:0 ...

Prints C{SERVICE listening on TRANSPORT ADDR} for each listener, like sockd.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from typing import Any

STREAM_ANSWER = b"I got your message"
DATAGRAM_ANSWER = b"Got your message\n"
MAX_MESSAGE = 255


class _Stream(asyncio.Protocol):
    """Shared flow control: stop reading while the peer is not reading our answers."""

    transport: asyncio.Transport

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class AckProtocol(_Stream):
    """Answer every newline-terminated (or 255-byte) message with the 18-byte acknowledgement."""

    def __init__(self) -> None:
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        buffer = self.pending + data if self.pending else data
        start, end = 0, len(buffer)
        while start < end:
            newline = buffer.find(b"\n", start, start + MAX_MESSAGE)
            if newline >= 0:
                stop = newline + 1
            elif end - start >= MAX_MESSAGE:
                stop = start + MAX_MESSAGE
            else:
                break
            self.transport.write(STREAM_ANSWER)
            start = stop
        self.pending = buffer[start:]

    def eof_received(self) -> bool:
        if self.pending:
            self.transport.write(STREAM_ANSWER)
        return False


class EchoProtocol(_Stream):
    """Return every byte."""

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class AckDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(DATAGRAM_ANSWER, addr)


class EchoDatagram(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


STREAM = {"ack": AckProtocol, "echo": EchoProtocol}
DATAGRAM = {"ack": AckDatagram, "echo": EchoDatagram}


def parse(description: str) -> tuple[str, str, str]:
    """C{tcp:PORT[:interface=ADDR]}, C{udp:...} or C{unix:PATH} as (kind, port-or-path, interface)."""
    kind, _, rest = description.partition(":")
    parts = rest.split(":")
    interface = "127.0.0.1"
    for extra in parts[1:]:
        key, _, value = extra.partition("=")
        if key == "interface":
            interface = value
    return kind, parts[0], interface


async def serve(listeners: list[tuple[str, str]]) -> None:
    """Bind every listener, announce it, and run until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    closers: list[Any] = []
    for name, description in listeners:
        kind, where, interface = parse(description)
        if kind == "tcp":
            server = await loop.create_server(STREAM[name], interface, int(where), backlog=4096)
            port = server.sockets[0].getsockname()[1]
            closers.append(server)
            print(f"{name} listening on tcp {interface}:{port}", flush=True)
        elif kind == "unix":
            if os.path.exists(where):
                os.unlink(where)
            server = await loop.create_unix_server(STREAM[name], where, backlog=4096)
            closers.append(server)
            print(f"{name} listening on unix {where}", flush=True)
        elif kind == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((interface, int(where)))
            transport, _ = await loop.create_datagram_endpoint(DATAGRAM[name], sock=sock)
            closers.append(transport)
            print(f"{name} listening on udp {interface}:{sock.getsockname()[1]}", flush=True)
        else:
            raise SystemExit(f"unknown listen description {description}")
    await stop
    for closer in closers:
        closer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument("--ack", action="append", default=[], metavar="DESC")
    parser.add_argument("--echo", action="append", default=[], metavar="DESC")
    args = parser.parse_args(argv)
    listeners = [("ack", d) for d in args.ack] + [("echo", d) for d in args.echo]
    if args.uvloop:
        import uvloop

        uvloop.run(serve(listeners))
    else:
        asyncio.run(serve(listeners))
    sys.exit(0)


if __name__ == "__main__":
    main()
