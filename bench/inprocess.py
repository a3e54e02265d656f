"""sockd's Python cost per request, in-process: one real connection through the real layers, no event loop.

    .venv/bin/python bench/inprocess.py [--mode ack|echo] [--log] [--requests N]

Drives one sockd C{StreamConnection} over a Unix socketpair through the policy
layer (L{sockd.defences.stream.PolicyFactory}) and the service protocol: the
client end sends a request, the connection's C{doRead()} runs sockd's whole
path (recv, policy, protocol, message log, send-at-once), the client reads the
answer.  The same loop with the bare socket calls (recv then send on the
server end) gives the kernel's part; the difference is sockd's Python.
C{--log} logs every message into a sink writing to /dev/null, flushed every
2048 lines, through the per-source limiter as the daemon does (C{--log-rate},
default 0: the bucket is checked and every line passes, so the figure is that
of a logged message).  C{--bare} leaves the policy layer out.  Best of 5 runs.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

from twisted.internet.address import UNIXAddress

from sockd.config.settings import Settings
from sockd.core.reactor import SockdReactor
from sockd.core.stream import StreamConnection
from sockd.defences.admission import Admission
from sockd.defences.stream import ConnectionRegistry, PolicyFactory
from sockd.observe.log.limit import MessageLimiter
from sockd.observe.log.messages import MessageLog, MessageLogging
from sockd.observe.log.sink import FdOutput, LineSink
from sockd.protocols.ack import AckFactory
from sockd.protocols.echo import EchoFactory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("ack", "echo"), default="ack")
    parser.add_argument("--log", action="store_true", help="log every message (ack)")
    parser.add_argument("--bare", action="store_true", help="without the policy layer")
    parser.add_argument("--log-rate", type=float, default=0.0, help="the limiter's rate (0: checked, never limits)")
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()

    reactor = SockdReactor()
    logging = MessageLogging()
    if args.log:
        # A running reactor's sink would flush at the end of the turn; here it flushes when 2048 lines pile up.
        reactor.running = True
        logging = MessageLogging(LineSink(FdOutput(os.open(os.devnull, os.O_WRONLY)), reactor),
                                 limiter=MessageLimiter(args.log_rate, 1000, reactor))
    service = AckFactory(reactor, MessageLog("ack", args.log, logging)) if args.mode == "ack" else EchoFactory()
    factory = service if args.bare else PolicyFactory(
        service, serviceName=args.mode, transportName="unix", admission=Admission(Settings(), reactor.seconds),
        registry=ConnectionRegistry(reactor), clock=reactor)

    def connect() -> tuple[StreamConnection, socket.socket]:
        server, client = socket.socketpair()
        server.setblocking(False)
        protocol = factory.buildProtocol(UNIXAddress(None))
        connection = StreamConnection(server, protocol, UNIXAddress(None), None, 1, reactor)
        protocol.makeConnection(connection)
        return connection, client

    connect()  # the first connection of a kind sets up caches the others reuse
    connection, client = connect()
    server = connection.socket
    request = b"hello\n" if args.mode == "ack" else b"x" * 64
    n = args.requests

    def sockd() -> float:
        send, recv, doRead = client.send, client.recv, connection.doRead
        start = time.perf_counter()
        for _ in range(n):
            send(request)
            doRead()
            recv(256)
        return (time.perf_counter() - start) / n * 1e6

    def kernel() -> float:
        send, recv, serverRecv, serverSend = client.send, client.recv, server.recv, server.send
        start = time.perf_counter()
        for _ in range(n):
            send(request)
            serverSend(serverRecv(65536))
            recv(256)
        return (time.perf_counter() - start) / n * 1e6

    total = min(sockd() for _ in range(5))
    bare = min(kernel() for _ in range(5))
    what = args.mode + (" logged" if args.log else "") + (" without the policy layer" if args.bare else "")
    print(f"{what}: {total:.2f} µs per request, socket calls alone {bare:.2f} µs, sockd's Python {total - bare:.2f} µs")


if __name__ == "__main__":
    main()
