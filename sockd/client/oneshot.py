"""The tutorial's clients: send one message, print the answer.

C{sockd-client HOST PORT} (TCP), C{--udp HOST PORT} and C{--unix PATH} do what
the tutorial's client.c, its datagram client and its Unix-domain client do:
prompt for a message (when standard input is a terminal), send it, print the
answer.  The message ends with a newline, as fgets() leaves it.  On a stream the
client then half-closes, so it can read the whole answer to end of stream.
"""

from __future__ import annotations

import socket
import time
from typing import TextIO

from sockd.client.errors import ClientError
from sockd.client.target import Target, reason

PROMPT = "Please enter the message: "
#: The most of an answer that is read and printed.
MAX_ANSWER = 1 << 20
_READ = 65536


def readMessage(message: str | None, stdin: TextIO, stdout: TextIO) -> bytes:
    """The one-shot message: -m, or one line of standard input (prompting a person at a terminal)."""
    if message is not None:
        text = message
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
            chunk = sock.recv(_READ)
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


def streamExchange(target: Target, message: bytes, timeout: float) -> bytes:
    """Send C{message}, half-close, and read the answer to end of stream (or the timeout).

    The connection goes to the first of the host's addresses that accepts it, as L{Target.connectStream} tries
    them.
    """
    target.resolve()
    with target.connectStream(timeout) as sock:
        deadline = time.monotonic() + timeout
        try:
            sock.sendall(message)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            # A service that speaks first may have answered and closed already; its answer is still readable.
            try:
                return _readStream(sock, deadline, target.label)
            except ClientError:
                raise ClientError(f"cannot send to {target.label}: {reason(e)}") from None
        return _readStream(sock, deadline, target.label)


def datagramExchange(target: Target, message: bytes, timeout: float) -> bytes:
    """Send one datagram and return the first one that comes back."""
    target.resolve()
    return target.datagramExchange(message, timeout)


def exchange(target: Target, message: bytes, timeout: float) -> bytes:
    """The one-shot exchange over C{target}'s transport: the server's answer."""
    if target.stream:
        return streamExchange(target, message, timeout)
    return datagramExchange(target, message, timeout)
