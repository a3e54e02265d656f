"""Time service checks: what an RFC 868 (time) or RFC 867 (daytime) server says, and how far off it is.

Both protocols count whole seconds, so the server's reading is taken as the
middle of its second and compared with the local clock at the middle of the
round trip: the offset is good to about half a second plus half the round trip,
which is what these protocols can tell (C{rdate -p} prints only the time).
"""

from __future__ import annotations

import calendar
import datetime
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_tz

from sockd.client.errors import ClientError
from sockd.client.target import DATAGRAM_READ, Target, reason

#: Seconds from 1900-01-01 (RFC 868's epoch) to 1970-01-01.
EPOCH_1900 = 2208988800


@dataclass
class ClockReading:
    """One reading of a time or daytime server, and the local clock at the middle of the round trip."""
    target: str
    transport: str
    protocol: str  # "time" or "daytime"
    answer: bytes
    serverUnix: float | None  # the middle of the server's second, Unix time; None if it could not be read
    localUnix: float  # the local clock at the middle of the round trip
    rttNs: int

    @property
    def offset(self) -> float | None:
        """Server minus local, seconds (positive: the server is ahead)."""
        return None if self.serverUnix is None else self.serverUnix - self.localUnix


def rfc868ToUnix(value: int, near: float) -> float:
    """The Unix time of a 32-bit RFC 868 count, in the 2**32-second era nearest C{near} (so it works after 2036)."""
    base = value - EPOCH_1900
    era = round((near - base) / 2**32)
    return float(base + era * 2**32)


_MONTHS = {m: i for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                        "dec"), 1)}
_SOCKD = re.compile(r"(?:\w+, )?(\w+) (\d{1,2}), (\d{4}) (\d{1,2}):(\d{2}):(\d{2})-?(UTC|GMT)?", re.I)
_DMY = re.compile(r"(\d{1,2}) (\w{3}) (\d{4}) (\d{1,2}):(\d{2}):(\d{2}) ?(UTC|GMT)?", re.I)


def parseDaytime(text: str) -> float | None:
    """Unix time of a daytime answer, for the shapes servers use; None if it is none of them.

    sockd: C{Tuesday, November 24, 2026 22:04:29-UTC}; xinetd: C{24 NOV 2026 22:04:29 UTC};
    inetd and most others: ctime(3), C{Tue Nov 24 22:04:29 2026} (local time); RFC 2822 dates.
    """
    text = text.strip()
    found = _SOCKD.fullmatch(text)
    if found and found.group(1)[:3].lower() in _MONTHS:
        month, day, year, hh, mm, ss, zone = found.groups()
        return _fields(int(year), _MONTHS[month[:3].lower()], int(day), int(hh), int(mm), int(ss), zone)
    found = _DMY.fullmatch(text)
    if found and found.group(2).lower() in _MONTHS:
        day, month, year, hh, mm, ss, zone = found.groups()
        return _fields(int(year), _MONTHS[month.lower()], int(day), int(hh), int(mm), int(ss), zone)
    try:
        parsed = time.strptime(text, "%a %b %d %H:%M:%S %Y")
        return time.mktime(parsed)
    except ValueError:
        pass
    dated = parsedate_tz(text)
    if dated is not None and dated[9] is not None:
        return calendar.timegm(dated[:9]) - dated[9]
    return None


def _fields(year: int, month: int, day: int, hh: int, mm: int, ss: int, zone: str | None) -> float | None:
    try:
        datetime.datetime(year, month, day, hh, mm, ss)  # calendar.timegm takes 31 February without a word
        fields = (year, month, day, hh, mm, ss, 0, 0, -1)
        return float(calendar.timegm(fields)) if zone else time.mktime(fields)
    except (OverflowError, ValueError):
        return None


def readClock(target: Target, protocol: str, timeout: float) -> ClockReading:
    """Ask once: over a stream read to the end of the answer, over UDP send an empty datagram."""
    target.resolve()
    t0 = time.perf_counter_ns()
    wall0 = time.time()
    if target.stream:
        with target.connectStream(timeout) as sock:
            t0 = time.perf_counter_ns()
            wall0 = time.time()
            answer = b""
            try:
                while len(answer) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                    if protocol == "time" and len(answer) >= 4:
                        break
                    if protocol == "daytime" and answer.endswith(b"\n"):
                        break
            except TimeoutError:
                if not answer:
                    raise ClientError(f"no answer from {target.label} within {timeout:g} s") from None
            except OSError as e:
                raise ClientError(f"{target.label}: {reason(e)}") from None
    else:
        with target.datagramSocket() as sock, target.datagramErrors(timeout):
            sock.settimeout(timeout)
            t0 = time.perf_counter_ns()
            wall0 = time.time()
            sock.send(b"")
            answer = sock.recv(DATAGRAM_READ)
    rtt = time.perf_counter_ns() - t0
    local = wall0 + rtt / 2e9
    if protocol == "time":
        if len(answer) != 4:
            raise ClientError(f"{target.label} answered {len(answer)} bytes, not RFC 868's 4: {answer[:40]!r}")
        server: float | None = rfc868ToUnix(int.from_bytes(answer, "big"), local) + 0.5
    else:
        parsed = parseDaytime(answer.decode("ascii", "replace"))
        server = None if parsed is None else parsed + 0.5
    return ClockReading(target.label, target.transportName, protocol, answer, server, local, rtt)
