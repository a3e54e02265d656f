"""sockd-client: the tutorial's clients in one command.

C{sockd-client HOST PORT} (TCP), C{--udp HOST PORT} and C{--unix PATH} do what
the tutorial's client.c, its datagram client and its Unix-domain client do:
prompt for a message (when standard input is a terminal), send it, print the
answer.  The message ends with a newline, as fgets() leaves it.  On a stream the
client then half-closes, so it can read the whole answer to end of stream.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from typing import BinaryIO, TextIO

PROMPT = "Please enter the message: "
MAX_ANSWER = 1 << 20


class ClientError(Exception):
    """One line for stderr."""


def readMessage(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> bytes:
    if args.message is not None:
        text = args.message
    else:
        if stdin.isatty():
            stdout.write(PROMPT)
            stdout.flush()
        text = stdin.readline()
        if not text:
            raise ClientError("no message: standard input is empty")
    data = text.encode("utf-8")
    if not data.endswith(b"\n"):
        data += b"\n"
    return data


def _readStream(sock: socket.socket, deadline: float, what: str) -> bytes:
    chunks: list[bytes] = []
    received = 0
    closed = False
    while received < MAX_ANSWER:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            closed = True
            break
        chunks.append(chunk)
        received += len(chunk)
    if not chunks:
        if closed:
            raise ClientError(f"{what} closed the connection without answering")
        raise ClientError(f"no answer from {what} within the timeout")
    return b"".join(chunks)


def streamExchange(family: int, address: object, message: bytes, timeout: float, what: str) -> bytes:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except ConnectionRefusedError:
            raise ClientError(f"connection refused by {what}") from None
        except FileNotFoundError:
            raise ClientError(f"no such socket: {what}") from None
        except TimeoutError:
            raise ClientError(f"timed out connecting to {what}") from None
        except OSError as e:
            raise ClientError(f"cannot connect to {what}: {e.strerror or e}") from None
        deadline = time.monotonic() + timeout
        try:
            sock.sendall(message)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            # A service that speaks first may have answered and closed already; its answer is still readable.
            try:
                return _readStream(sock, deadline, what)
            except ClientError:
                raise ClientError(f"cannot send to {what}: {e.strerror or e}") from None
        return _readStream(sock, deadline, what)


def datagramExchange(host: str, port: int, message: bytes, timeout: float) -> bytes:
    what = f"{host} port {port}/udp"
    info = resolve(host, port, socket.SOCK_DGRAM)
    with socket.socket(info[0], socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(info[1])
            sock.send(message)
            return sock.recv(65535)
        except TimeoutError:
            raise ClientError(f"no answer from {what} within {timeout:g}s") from None
        except ConnectionRefusedError:
            raise ClientError(f"nothing is listening at {what}") from None
        except OSError as e:
            raise ClientError(f"cannot reach {what}: {e.strerror or e}") from None


def resolveAll(host: str, port: int, kind: int) -> list[tuple[int, tuple]]:
    """Every address of C{host}, in the resolver's order (localhost may be ::1 first, then 127.0.0.1)."""
    try:
        infos = socket.getaddrinfo(host, port, type=kind)
    except socket.gaierror:
        raise ClientError(f"unknown host {host}") from None
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def resolve(host: str, port: int, kind: int) -> tuple[int, tuple]:
    return resolveAll(host, port, kind)[0]


def streamToHost(host: str, port: int, message: bytes, timeout: float) -> bytes:
    """Like the tutorial's client, but trying each address of the host until one accepts."""
    what = f"{host} port {port}"
    addresses = resolveAll(host, port, socket.SOCK_STREAM)
    for index, (family, sockaddr) in enumerate(addresses):
        try:
            return streamExchange(family, sockaddr, message, timeout, what)
        except ClientError as e:
            if index == len(addresses) - 1 or not str(e).startswith("connection refused"):
                raise
    raise ClientError(f"no address for {host}")


def parseArgs(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sockd-client",
        description="Send one message to a sockd service (or any stream/datagram server) and print the answer.",
    )
    parser.add_argument("host", nargs="?", help="server host name or address (TCP, or UDP with --udp)")
    parser.add_argument("port", nargs="?", help="server port")
    parser.add_argument("--udp", action="store_true", help="use a datagram (UDP) socket")
    parser.add_argument("--unix", metavar="PATH", help="connect to a Unix-domain stream socket")
    parser.add_argument("-m", "--message", metavar="TEXT", help="send TEXT instead of reading a line")
    parser.add_argument("-t", "--timeout", type=float, default=5.0, help="seconds to wait for an answer (5)")
    args = parser.parse_args(argv)
    if args.unix:
        if args.host or args.port or args.udp:
            parser.error("--unix PATH takes no host, port or --udp")
    elif not (args.host and args.port):
        parser.error("give HOST PORT, or --unix PATH")
    else:
        try:
            args.port = int(args.port)
            if not 0 < args.port < 65536:
                raise ValueError
        except ValueError:
            parser.error(f"port {args.port!r} is not a number from 1 to 65535")
    return args


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    args = parseArgs(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        message = readMessage(args, stdin, stdout)
        if args.unix:
            answer = streamExchange(socket.AF_UNIX, args.unix, message, args.timeout, args.unix)
        elif args.udp:
            answer = datagramExchange(args.host, args.port, message, args.timeout)
        else:
            answer = streamToHost(args.host, args.port, message, args.timeout)
    except ClientError as e:
        sys.stderr.write(f"sockd-client: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    stdout.flush()
    out: BinaryIO = getattr(stdout, "buffer", None) or sys.stdout.buffer
    out.write(answer if answer.endswith(b"\n") else answer + b"\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
