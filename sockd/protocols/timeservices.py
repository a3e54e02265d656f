"""What Daytime (RFC 867) and Time (RFC 868) say.

Time is the seconds since 1900-01-01T00:00Z as a 32-bit unsigned big-endian
number, taken modulo 2**32 so it keeps working past the 2036 roll-over.
Twisted's C{wire.Time} counts from 1970 and packs a signed number, and its
C{wire.Daytime} fails on Python 3, so neither is used.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

#: Seconds from 1900-01-01T00:00Z (RFC 868's epoch) to 1970-01-01T00:00Z.
RFC868_OFFSET = 2_208_988_800


def daytimeLine(now: float) -> bytes:
    """RFC 867's suggested syntax: C{Weekday, Month Day, Year HH:MM:SS-UTC}, CR LF."""
    return time.strftime("%A, %B %d, %Y %H:%M:%S-UTC\r\n", time.gmtime(now)).encode("ascii")


def timeBytes(now: float) -> bytes:
    """RFC 868: seconds since 1900, unsigned 32-bit, network byte order."""
    return struct.pack("!I", (int(now) + RFC868_OFFSET) % 2**32)


def clockAnswer(render: Callable[[float], bytes], now: Callable[[], float]) -> Callable[[], bytes]:
    """A zero-argument answer that renders the current time."""
    return lambda: render(now())
