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


def bind(listeners: list[tuple[str, str]], ports: list[int] | None = None,
         inherited: list[socket.socket] | None = None) -> list[socket.socket]:
    """Bind every listener (TCP and UDP with SO_REUSEPORT, so sibling processes can bind the same port).

    With C{ports} (a sibling process): bind those ports again; Unix sockets are the C{inherited} ones.
    """
    socks: list[socket.socket] = []
    for index, (_name, description) in enumerate(listeners):
        kind, where, interface = parse(description)
        port = ports[index] if ports is not None else int(where) if kind != "unix" else 0
        if kind in ("tcp", "udp"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface, port))
            if kind == "tcp":
                sock.listen(4096)
        elif kind == "unix":
            if inherited is not None:
                sock = inherited[index]
            else:
                if os.path.exists(where):
                    os.unlink(where)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(where)
                sock.listen(4096)
        else:
            raise SystemExit(f"unknown listen description {description}")
        sock.setblocking(False)
        socks.append(sock)
    return socks


async def serve(listeners: list[tuple[str, str]], socks: list[socket.socket], announce: bool) -> None:
    """Serve the bound sockets, announce them (the first process only), and run until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    closers: list[Any] = []
    for (name, description), sock in zip(listeners, socks, strict=True):
        kind, where, interface = parse(description)
        if kind == "tcp":
            server = await loop.create_server(STREAM[name], sock=sock, backlog=4096)
            closers.append(server)
            line = f"{name} listening on tcp {interface}:{sock.getsockname()[1]}"
        elif kind == "unix":
            server = await loop.create_unix_server(STREAM[name], sock=sock, backlog=4096)
            closers.append(server)
            line = f"{name} listening on unix {where}"
        else:
            transport, _ = await loop.create_datagram_endpoint(DATAGRAM[name], sock=sock)
            closers.append(transport)
            line = f"{name} listening on udp {interface}:{sock.getsockname()[1]}"
        if announce:
            print(line, flush=True)
    await stop
    for closer in closers:
        closer.close()


def run(listeners: list[tuple[str, str]], socks: list[socket.socket], announce: bool, useUvloop: bool) -> None:
    if useUvloop:
        import uvloop

        uvloop.run(serve(listeners, socks, announce))
    else:
        asyncio.run(serve(listeners, socks, announce))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument("--ack", action="append", default=[], metavar="DESC")
    parser.add_argument("--echo", action="append", default=[], metavar="DESC")
    parser.add_argument("--processes", type=int, default=1,
                        help="serve from N processes: TCP and UDP ports bound by each with SO_REUSEPORT "
                             "(the kernel spreads the load), Unix sockets shared")
    args = parser.parse_args(argv)
    listeners = [("ack", d) for d in args.ack] + [("echo", d) for d in args.echo]
    socks = bind(listeners)
    ports = [s.getsockname()[1] if s.family != socket.AF_UNIX else 0 for s in socks]
    children = []
    for _ in range(args.processes - 1):
        pid = os.fork()
        if pid == 0:  # a sibling: its own TCP/UDP sockets on the same ports, the shared Unix sockets
            mine = bind(listeners, ports, socks)
            for theirs, own in zip(socks, mine, strict=True):
                if theirs is not own:
                    theirs.close()
            run(listeners, mine, False, args.uvloop)
            os._exit(0)
        children.append(pid)
    run(listeners, socks, True, args.uvloop)
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except OSError:
            pass
    sys.exit(0)


if __name__ == "__main__":
    main()
