"""What the client puts on the wire and what it expects back: probes, load requests, ack and chargen.

A probe is one line of printable ASCII ending in its only newline, so that the
ack service (which answers each newline-terminated message) answers it exactly
once, and so that a server's log shows it legibly.  C{sockd SEQ TIME pad...\\n}:
the sequence number lets an echoed datagram be matched to its probe (loss,
duplicates and reordering are counted, not guessed), the send time lets a late
reply still be timed.
"""

from __future__ import annotations

import re

#: The ack service's answer to each message of a stream (18 bytes, no newline).
ACK_STREAM = b"I got your message"
#: The ack service's answer to a datagram.
ACK_DATAGRAM = b"Got your message\n"
#: The ack service answers every this many bytes of a message separately (its default --max-message).
ACK_MESSAGE_LIMIT = 255
#: The largest UDP payload over IPv4.
MAX_DATAGRAM = 65507

HEADER = b"sockd %010d %016x "
#: The header's length; a probe is at least this plus its newline.
HEADER_SIZE = len(HEADER % (0, 0))
MIN_PROBE = HEADER_SIZE + 1
_ALPHABET = bytes(range(ord("a"), ord("z") + 1))
_PARSE = re.compile(rb"sockd (\d{10}) ([0-9a-f]{16}) ")

_PRINTABLE = bytes(range(32, 127))
#: RFC 864: 95 lines of 72 characters and CR LF, then the pattern repeats.
CHARGEN_CYCLE = b"".join((_PRINTABLE * 2)[i : i + 72] + b"\r\n" for i in range(95))


def filler(size: int) -> bytes:
    """C{size} printable bytes without a newline (a to z, over and over)."""
    return (_ALPHABET * (size // len(_ALPHABET) + 1))[:size]


def makeProbe(seq: int, sentNs: int, size: int) -> bytes:
    """Probe C{seq}, C{size} bytes long (size >= MIN_PROBE)."""
    head = HEADER % (seq % 10**10, sentNs & 0xFFFFFFFFFFFFFFFF)
    return head + filler(size - HEADER_SIZE - 1) + b"\n"


def parseProbe(data: bytes) -> tuple[int, int] | None:
    """(sequence number, send time in ns) of an echoed probe, or None if it does not start like one."""
    found = _PARSE.match(data)
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2), 16)


def loadRequest(size: int) -> bytes:
    """A C{size}-byte message: printable, one newline at its end (one ack answer per request)."""
    return (b"sockd-client load " + filler(size))[: size - 1] + b"\n"


def preview(data: bytes, limit: int = 40) -> str:
    """The start of an unexpected answer, for a one-line report."""
    text = repr(data[:limit])
    return text + ("..." if len(data) > limit else "")
