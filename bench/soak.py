#!/usr/bin/env python3
"""Bounded soak: good clients checked byte for byte while hostile traffic attacks every defence.

    .venv/bin/python bench/soak.py                 # about 60 s of traffic, then the report
    .venv/bin/python bench/soak.py --seconds 20    # shorter

Starts its own sockd (every service on 127.0.0.1, port 0, TCP and UDP, plus a
Unix ack socket), with --exempt none and per-source limits that the good
traffic fits under: good clients come from eight addresses (127.0.1.1-8) at a
paced rate; each hostile kind has an address of its own (127.0.0.x).  Then,
concurrently for --seconds:

  good:    ack (TCP and Unix), echo, daytime, time, qotd, chargen over TCP and
           ack, echo, daytime, time, qotd, chargen over UDP; every answer is
           checked byte-exactly (daytime/time against the clock, qotd against the
           quotes file written here, chargen against RFC 864's pattern);
  hostile: random garbage, resets mid-message, huge lines (2 MB without a
           newline), slow readers on echo and chargen, idle connections, a
           connection flood from one address over the per-source limits, UDP from
           ports 7 and 19 and from sockd's own port, a UDP flood over the rate.

The report also gives sockd's own counters (its /metrics endpoint), the
kernel's loss counters (listen-queue overflows, UDP receive-buffer drops), and
the daemon's RSS and descriptors from /proc.  A good UDP client whose ephemeral
port happens to equal one of sockd's UDP ports is dropped by sockd's own-port
loop guard by design; such sockets are re-bound and counted, not hidden.

It prints a markdown report (also written to bench/results/soak.md) and exits
non-zero if any well-formed request went unanswered or was answered wrongly, if
a datagram from a blocked port was answered, if a limit was exceeded, if the
daemon died, or if its descriptors did not return to their starting count.
Everything is bounded: each phase has a deadline, the daemon is stopped in a
finally clause, and all traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from tests.daemon import Daemon  # noqa: E402  (the test harness that runs the installed twistd sockd)

RESULTS = BENCH / "results"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
MB = 1 << 20

ACK_STREAM = b"I got your message"
ACK_DATAGRAM = b"Got your message\n"
RFC868_OFFSET = 2_208_988_800
DAYTIME = re.compile(rb"^(Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, [A-Z][a-z]+ \d\d, \d{4} \d\d:\d\d:\d\d-UTC\r\n$")
PRINTABLE = bytes(range(32, 127))
QUOTES = [
    "Soak testing: the art of waiting for the rare thing.",
    "Every well-formed request deserves its answer.",
    "Hostile traffic is just traffic with ambitions.",
    "A limit that is not tested is a wish.",
]
QUOTE_ANSWERS = {q.encode() + b"\r\n" for q in QUOTES}

# Settings: per-source limits well above one good source's share, well below a flood's.
LIMITS = {
    "--max-connections": "3000",
    "--max-per-source": "100",
    "--connection-rate": "300",
    "--connection-burst": "600",
    "--udp-rate": "300",
    "--udp-burst": "600",
    "--udp-budget": "20000",
    "--idle-timeout": "5",
    "--refusal-log-interval": "10",
    "--grace": "5",
}
GOOD_SOURCES = [f"127.0.1.{i}" for i in range(1, 9)]
HOSTILE = {
    "garbage": "127.0.0.2",
    "reset": "127.0.0.3",
    "huge": "127.0.0.4",
    "slow": "127.0.0.5",
    "idle": "127.0.0.6",
    "flood": "127.0.0.9",
    "udp-blocked": "127.0.0.10",
    "udp-flood": "127.0.0.11",
}


def chargenCycle() -> bytes:
    """One period of RFC 864's pattern (95 lines of 72 characters and CR LF), built from the RFC."""
    doubled = PRINTABLE * 2
    return b"".join(doubled[i : i + 72] + b"\r\n" for i in range(95))


CYCLE = chargenCycle()
CYCLE2 = CYCLE * 2
SLOW_ECHO_BYTES = b"s" * (16 * MB)  # more than the kernel buffers hold, shared by every slow echo reader


# --------------------------------------------------------------------------------------------------- bookkeeping


@dataclass
class Tally:
    """Everything counted during the soak."""

    good: Counter[str] = field(default_factory=Counter)  # well-formed requests sent, by kind
    answered: Counter[str] = field(default_factory=Counter)  # answered byte-exactly
    unanswered: Counter[str] = field(default_factory=Counter)
    wrong: Counter[str] = field(default_factory=Counter)
    udpRetries: int = 0
    portCollisions: int = 0  # good UDP sockets whose ephemeral port equalled a sockd UDP port
    problems: list[str] = field(default_factory=list)  # first few failures, for the report
    faults: Counter[str] = field(default_factory=Counter)  # hostile attempts, by kind
    outcomes: Counter[str] = field(default_factory=Counter)  # what the defences did to them
    badBytes: int = 0
    connections: int = 0  # stream connections opened, good and hostile
    datagrams: int = 0  # datagrams sent, good and hostile
    floodHeldPeak: int = 0
    slowestConnect: float = 0.0  # seconds, good stream connections
    slowConnects: int = 0  # good stream connections that took over 0.9 s (a SYN retransmission)
    rssSamples: list[int] = field(default_factory=list)
    fdSamples: list[int] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


class Wrong(Exception):
    """An answer arrived but was not the one owed."""


class ConnectTimeout(OSError):
    """The connection itself was not established in time (so no request was even sent)."""


# --------------------------------------------------------------------------------------------------- sockets


def release(sock: socket.socket) -> None:
    """Close a socket the running loop may still watch, unregistering it first.

    A cancelled C{sock_connect}/C{sock_sendall}/C{sock_recvfrom} leaves its descriptor registered until a
    callback in a later loop step.  Closed before that, a new socket that reuses the descriptor number in the
    same step is never registered with epoll and its connect waits forever.  Removing the reader and writer
    here cancels those callbacks' handles, so nothing of the old socket outlives it.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None and sock.fileno() >= 0:
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
    sock.close()


async def connectSocket(address: tuple[str, int], source: str, rcvbuf: int | None = None) -> socket.socket:
    """A connected non-blocking TCP socket from C{source}; its port is chosen at connect time, so no source
    address runs out of ports."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, address)
    except BaseException:
        release(sock)
        raise
    return sock


async def openTCP(address: tuple[str, int], source: str, rcvbuf: int | None = None
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(sock=await connectSocket(address, source, rcvbuf), limit=4 * MB)


def established(sock: socket.socket) -> bool:
    """Whether the kernel still has this connection ESTABLISHED (the first byte of TCP_INFO is the state)."""
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == 1
    except OSError:
        return False


def resetClose(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    release(sock)


def abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), as a crashing or hostile client does."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


def udpSocket(source: str, port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 * MB)
    sock.bind((source, port))
    sock.setblocking(False)
    return sock


def drain(sock: socket.socket) -> int:
    """Read every datagram waiting on a non-blocking socket; return how many."""
    count = 0
    while True:
        try:
            sock.recvfrom(65535)
        except (BlockingIOError, InterruptedError):
            return count
        except OSError:
            return count
        count += 1


# --------------------------------------------------------------------------------------------------- good clients


class Good:
    """Well-formed requests, each checked byte for byte against what the RFC or the tutorial says."""

    def __init__(self, d: Daemon, tally: Tally, rng: random.Random) -> None:
        self.d = d
        self.tally = tally
        self.rng = rng
        self.sourceIndex = 0
        self.udpPorts = {int(a.rsplit(":", 1)[1]) for (_, transport), bound in d.listeners.items()
                         if transport == "udp" for a in bound}

    def source(self) -> str:
        self.sourceIndex = (self.sourceIndex + 1) % len(GOOD_SOURCES)
        return GOOD_SOURCES[self.sourceIndex]

    async def stream(self, service: str, unix: bool = False
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.tally.connections += 1
        started = time.monotonic()
        try:
            if unix:
                opened = await asyncio.wait_for(asyncio.open_unix_connection(self.d.path(service), limit=4 * MB), 10)
            else:
                opened = await asyncio.wait_for(openTCP(self.d.address(service, "tcp"), self.source()), 10)
        except TimeoutError:
            raise ConnectTimeout("connect took over 10 s") from None
        took = time.monotonic() - started
        self.tally.slowestConnect = max(self.tally.slowestConnect, took)
        if took > 0.9:  # a dropped SYN costs the client a 1 s retransmission
            self.tally.slowConnects += 1
        return opened

    def line(self) -> bytes:
        return bytes(self.rng.choice(PRINTABLE) for _ in range(self.rng.randint(1, 200)))

    async def ack(self, unix: bool = False) -> None:
        lines = [self.line() for _ in range(self.rng.randint(1, 4))]
        reader, writer = await self.stream("ack", unix)
        try:
            writer.write(b"".join(line + b"\n" for line in lines))
            got = await reader.readexactly(len(ACK_STREAM) * len(lines))
            if got != ACK_STREAM * len(lines):
                raise Wrong(f"ack answered {got[:60]!r}")
            writer.write_eof()
            rest = await reader.read()
            if rest:
                raise Wrong(f"ack sent {len(rest)} extra bytes")
        finally:
            writer.close()

    async def echo(self) -> None:
        payload = self.rng.randbytes(self.rng.randint(1, 16384))
        reader, writer = await self.stream("echo")
        try:
            writer.write(payload)
            got = await reader.readexactly(len(payload))
            if got != payload:
                raise Wrong("echo returned different bytes")
            writer.write_eof()
            if await reader.read():
                raise Wrong("echo sent extra bytes")
        finally:
            writer.close()

    async def speaker(self, service: str) -> bytes:
        reader, writer = await self.stream(service)
        try:
            return await reader.read()
        finally:
            writer.close()

    async def daytime(self) -> None:
        checkDaytime(await self.speaker("daytime"))

    async def time(self) -> None:
        checkTime(await self.speaker("time"))

    async def qotd(self) -> None:
        checkQuote(await self.speaker("qotd"))

    async def chargen(self) -> None:
        reader, writer = await self.stream("chargen")
        try:
            got = await reader.readexactly(7400)
            if got != CYCLE2[:7400]:
                raise Wrong("chargen pattern differs from RFC 864")
        finally:
            abort(writer)

    async def datagram(self, service: str) -> None:
        """One request, retried twice as UDP clients do (a flood can overflow a socket buffer)."""
        loop = asyncio.get_running_loop()
        payload = self.line() if service != "echo" else self.rng.randbytes(self.rng.randint(1, 1400))
        address = self.d.address(service, "udp")
        sock = udpSocket(self.source())
        while sock.getsockname()[1] in self.udpPorts:
            # sockd drops datagrams from its own UDP port numbers (the loop guard), whatever the address:
            # an ephemeral port that happens to equal one is never answered.  Counted, and re-bound.
            self.tally.portCollisions += 1
            release(sock)
            sock = udpSocket(self.source())
        try:
            for attempt in range(3):
                if attempt:
                    self.tally.udpRetries += 1
                await loop.sock_sendto(sock, payload, address)
                self.tally.datagrams += 1
                try:
                    answer, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), 1.0)
                except TimeoutError:
                    continue
                checkDatagram(service, payload, answer)
                return
            raise TimeoutError(f"no answer after 3 tries from {sock.getsockname()}")
        finally:
            release(sock)

    KINDS: tuple[tuple[str, int], ...] = (
        ("ack/tcp", 22), ("ack/unix", 10), ("echo/tcp", 18), ("daytime/tcp", 6), ("time/tcp", 6),
        ("qotd/tcp", 6), ("chargen/tcp", 4), ("ack/udp", 8), ("echo/udp", 8), ("daytime/udp", 3),
        ("time/udp", 3), ("qotd/udp", 3), ("chargen/udp", 3),
    )

    def request(self, kind: str) -> Awaitable[None]:
        service, transport = kind.split("/")
        if transport == "udp":
            return self.datagram(service)
        if transport == "unix":
            return self.ack(unix=True)
        return {"ack": self.ack, "echo": self.echo, "daytime": self.daytime, "time": self.time,
                "qotd": self.qotd, "chargen": self.chargen}[service]()

    async def one(self, kind: str) -> None:
        self.tally.good[kind] += 1
        try:
            await asyncio.wait_for(self.request(kind), 15.0)
        except Wrong as e:
            self.tally.wrong[kind] += 1
            self.tally.problem(f"wrong {kind}: {e}")
        except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError) as e:
            self.tally.unanswered[kind] += 1
            self.tally.problem(f"unanswered {kind}: {type(e).__name__} {e}")
        else:
            self.tally.answered[kind] += 1

    async def run(self, rate: float, until: float, inFlight: int = 300) -> None:
        """Launch requests at C{rate} a second (a random mix), at most C{inFlight} at once."""
        kinds = [k for k, _ in self.KINDS]
        weights = [w for _, w in self.KINDS]
        gate = asyncio.Semaphore(inFlight)
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        sent = 0

        async def guarded(kind: str) -> None:
            try:
                await self.one(kind)
            finally:
                gate.release()

        while time.monotonic() < until:
            due = int((time.monotonic() - start) * rate) - sent
            for _ in range(min(due, 200)):
                await gate.acquire()
                task = asyncio.create_task(guarded(self.rng.choices(kinds, weights)[0]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=30)


def checkDaytime(answer: bytes) -> None:
    if not DAYTIME.match(answer):
        raise Wrong(f"daytime {answer!r}")
    stamp = datetime.strptime(answer.decode()[:-6].split(", ", 1)[1], "%B %d, %Y %H:%M:%S").replace(tzinfo=UTC)
    if abs(stamp.timestamp() - time.time()) > 3:
        raise Wrong(f"daytime {answer!r} is not now")


def checkTime(answer: bytes) -> None:
    if len(answer) != 4:
        raise Wrong(f"time answer of {len(answer)} bytes")
    seconds = struct.unpack("!I", answer)[0]
    if abs(seconds - (int(time.time()) + RFC868_OFFSET) % 2**32) > 3:
        raise Wrong(f"time {seconds} is not now")


def checkQuote(answer: bytes) -> None:
    if answer not in QUOTE_ANSWERS:
        raise Wrong(f"qotd {answer[:60]!r} is not one of the quotes")


def checkDatagram(service: str, payload: bytes, answer: bytes) -> None:
    if service == "ack" and answer != ACK_DATAGRAM:
        raise Wrong(f"ack/udp answered {answer!r}")
    if service == "echo" and answer != payload:
        raise Wrong("echo/udp returned different bytes")
    if service == "daytime":
        checkDaytime(answer)
    if service == "time":
        checkTime(answer)
    if service == "qotd":
        checkQuote(answer)
    if service == "chargen":
        # RFC 864 over UDP: 0 to 512 characters of the pattern, starting at the beginning of a line.
        if len(answer) > 512 or not any(CYCLE2[i * 74 : i * 74 + len(answer)] == answer for i in range(95)):
            raise Wrong(f"chargen/udp {answer[:40]!r} is not the pattern")


# --------------------------------------------------------------------------------------------------- hostile clients


class Hostile:
    """Every kind of abuse, each from an address of its own, each paced and bounded."""

    def __init__(self, d: Daemon, tally: Tally, rng: random.Random, until: float) -> None:
        self.d = d
        self.tally = tally
        self.rng = rng
        self.until = until
        self.streamServices = ["ack", "echo", "discard", "chargen", "daytime", "time", "qotd"]
        self.udpServices = ["ack", "echo", "daytime", "time", "qotd", "chargen", "discard"]

    def running(self) -> bool:
        return time.monotonic() < self.until

    async def connect(self, service: str, kind: str, rcvbuf: int | None = None
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.tally.connections += 1
        self.tally.faults[kind] += 1
        return await openTCP(self.d.address(service, "tcp"), HOSTILE[kind.split(":")[0]], rcvbuf)

    async def paced(self, rate: float, action: Callable[[], Awaitable[None]], parallel: int = 1,
                    timeout: float = 10.0) -> None:
        """Run C{action} about C{rate} times a second until the end; errors are the point, not failures."""

        async def worker() -> None:
            while self.running():
                started = time.monotonic()
                try:
                    await asyncio.wait_for(action(), timeout)
                except (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError):
                    pass
                await asyncio.sleep(max(0.0, parallel / rate - (time.monotonic() - started)))

        await asyncio.gather(*(worker() for _ in range(parallel)))

    async def garbage(self) -> None:
        reader, writer = await self.connect(self.rng.choice(self.streamServices), "garbage")
        junk = self.rng.randbytes(self.rng.randint(1, 16384))
        self.tally.badBytes += len(junk)
        writer.write(junk)
        try:
            await asyncio.wait_for(reader.read(65536), 0.05)
        except TimeoutError:
            pass
        abort(writer) if self.rng.random() < 0.5 else writer.close()

    async def resetMidMessage(self) -> None:
        service = self.rng.choice(["ack", "echo"])
        reader, writer = await self.connect(service, "reset")
        partial = b"half a message that never ends " * self.rng.randint(1, 30)
        self.tally.badBytes += len(partial)
        writer.write(partial)
        await writer.drain()
        await asyncio.sleep(self.rng.random() * 0.05)
        abort(writer)

    async def hugeLine(self) -> None:
        """2 MB without a newline to ack: it must come back as 255-byte messages, all answered."""
        reader, writer = await self.connect("ack", "huge")
        size = 2 * MB
        owed = -(-size // 255)
        self.tally.badBytes += size

        async def send() -> None:
            block = b"h" * 65536
            for _ in range(size // 65536):
                writer.write(block)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            got = await asyncio.wait_for(reader.readexactly(owed * len(ACK_STREAM)), 20.0)
            ok = got == ACK_STREAM * owed
            self.tally.outcomes["huge line: answered in 255-byte messages" if ok else "huge line: WRONG answers"] += 1
        finally:
            sender.cancel()
            abort(writer)

    async def rawConnect(self, service: str, kind: str, rcvbuf: int | None = None) -> socket.socket:
        """A plain socket, so no client-side buffer hides how slowly it reads."""
        self.tally.connections += 1
        self.tally.faults[kind] += 1
        return await connectSocket(self.d.address(service, "tcp"), HOSTILE[kind.split(":")[0]], rcvbuf)

    async def waitClosed(self, sock: socket.socket, limit: float, poll: Callable[[], None] | None = None) -> bool:
        """Whether the daemon closes C{sock} within C{limit} seconds (read from the kernel's TCP state)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.running():
            if not established(sock):
                return True
            if poll is not None:
                poll()
            await asyncio.sleep(0.25)
        return not established(sock)

    async def slowEcho(self) -> None:
        """Send 16 MB to echo and never read: the daemon stops reading, then the idle timeout ends it."""
        sock = await self.rawConnect("echo", "slow:echo", rcvbuf=4096)
        self.tally.badBytes += len(SLOW_ECHO_BYTES)
        try:
            sending = asyncio.ensure_future(asyncio.get_running_loop().sock_sendall(sock, SLOW_ECHO_BYTES))
            done, _ = await asyncio.wait({sending}, timeout=1.0)
            if not done:
                self.tally.outcomes["slow echo reader: sender blocked (the daemon stopped reading)"] += 1
            if await self.waitClosed(sock, 30.0):
                self.tally.outcomes["slow echo reader: closed by the daemon (idle timeout)"] += 1
            sending.cancel()
        finally:
            resetClose(sock)

    async def slowChargen(self) -> None:
        """Read chargen one byte every half second, straight from the kernel."""
        sock = await self.rawConnect("chargen", "slow:chargen", rcvbuf=4096)

        def sip() -> None:
            try:
                sock.recv(1)
            except OSError:
                pass

        try:
            if await self.waitClosed(sock, 30.0, sip):
                self.tally.outcomes["slow chargen reader: closed by the daemon (idle timeout)"] += 1
        finally:
            resetClose(sock)

    async def idle(self) -> None:
        sock = await self.rawConnect(self.rng.choice(["ack", "echo", "discard"]), "idle")
        try:
            if await self.waitClosed(sock, 30.0):
                self.tally.outcomes["idle connection: closed by the daemon (idle timeout)"] += 1
        finally:
            resetClose(sock)

    async def flood(self, parallel: int = 40) -> None:
        """Open echo connections from one address as fast as possible and hold the admitted ones."""
        held: set[asyncio.Task[None]] = set()
        open_ = [0]

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            open_[0] += 1
            self.tally.floodHeldPeak = max(self.tally.floodHeldPeak, open_[0])
            try:
                while self.running():
                    try:
                        if not await asyncio.wait_for(reader.read(1), 0.5):
                            break
                    except TimeoutError:
                        continue
            except OSError:
                pass
            finally:
                open_[0] -= 1
                abort(writer)

        async def attempt() -> None:
            reader, writer = await self.connect("echo", "flood")
            writer.write(b"x")
            try:
                got = await asyncio.wait_for(reader.read(1), 2.0)
            except (OSError, TimeoutError):
                got = b""
            if got == b"x":
                self.tally.outcomes["flood: admitted"] += 1
                task = asyncio.create_task(hold(reader, writer))
                held.add(task)
                task.add_done_callback(held.discard)
            else:
                self.tally.outcomes["flood: refused at once"] += 1
                abort(writer)

        async def worker() -> None:
            while self.running():
                try:
                    await attempt()
                except OSError:
                    self.tally.outcomes["flood: refused at once"] += 1
                await asyncio.sleep(0)

        await asyncio.gather(*(worker() for _ in range(parallel)))
        if held:
            await asyncio.wait(held, timeout=5)

    async def udpBlocked(self, rate: float = 300.0) -> None:
        """Datagrams from ports 7 and 19 and from sockd's own echo port: not one may be answered."""
        ports = [self.d.address("echo", "udp")[1]]
        if os.geteuid() == 0:
            ports += [7, 19]
        socks = []
        for port in ports:
            try:
                socks.append((port, udpSocket(HOSTILE["udp-blocked"], port)))
            except OSError:
                self.tally.outcomes[f"udp from port {port}: could not bind, skipped"] += 1
        try:
            start = time.monotonic()
            sent = 0
            while self.running():
                due = int((time.monotonic() - start) * rate) - sent
                for _ in range(max(0, due)):
                    port, sock = socks[sent % len(socks)]
                    service = self.udpServices[sent % len(self.udpServices)]
                    junk = self.rng.randbytes(self.rng.randint(1, 512))
                    try:
                        sock.sendto(junk, self.d.address(service, "udp"))
                    except OSError:
                        pass
                    kind = "udp from port 7/19" if port in (7, 19) else "udp from sockd's own port"
                    self.tally.faults[kind] += 1
                    self.tally.datagrams += 1
                    self.tally.badBytes += len(junk)
                    sent += 1
                for port, sock in socks:
                    answered = drain(sock)
                    if answered:
                        self.tally.outcomes[f"udp from port {port}: ANSWERED (reflection)"] += answered
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            for port, sock in socks:
                answered = drain(sock)
                if answered:
                    self.tally.outcomes[f"udp from port {port}: ANSWERED (reflection)"] += answered
        finally:
            for _, sock in socks:
                release(sock)

    async def udpFlood(self, rate: float = 2000.0) -> tuple[int, float]:
        """One address floods echo over its rate; returns the answers it got and the seconds it flooded."""
        sock = udpSocket(HOSTILE["udp-flood"])
        answers = 0
        start = time.monotonic()
        sent = 0
        try:
            while self.running():
                due = int((time.monotonic() - start) * rate) - sent
                for _ in range(max(0, due)):
                    try:
                        sock.sendto(b"flood %d" % sent, self.d.address("echo", "udp"))
                    except OSError:
                        pass
                    sent += 1
                answers += drain(sock)
                await asyncio.sleep(0.01)
            elapsed = time.monotonic() - start
            await asyncio.sleep(0.5)
            answers += drain(sock)
        finally:
            release(sock)
        self.tally.faults["udp flood over the rate"] += sent
        self.tally.datagrams += sent
        self.tally.outcomes["udp flood: answered"] += answers
        self.tally.outcomes["udp flood: dropped (rate)"] += sent - answers
        return answers, elapsed

    async def run(self) -> tuple[int, float]:
        results = await asyncio.gather(
            self.paced(40, self.garbage, parallel=4),
            self.paced(40, self.resetMidMessage, parallel=4),
            self.paced(1, self.hugeLine),
            self.paced(4, self.slowEcho, parallel=20, timeout=40.0),
            self.paced(4, self.slowChargen, parallel=20, timeout=40.0),
            self.paced(10, self.idle, parallel=50, timeout=40.0),
            self.flood(),
            self.udpBlocked(),
            self.udpFlood(),
        )
        return results[-1]


# --------------------------------------------------------------------------------------------------- the run


def sampler(d: Daemon, tally: Tally, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            tally.rssSamples.append(d.rss())
            tally.fdSamples.append(d.fds())
        except (OSError, AssertionError):
            return


KERNEL_COUNTERS = (("TcpExt", "ListenOverflows"), ("TcpExt", "ListenDrops"), ("TcpExt", "TCPReqQFullDrop"),
                   ("TcpExt", "TCPSynRetrans"), ("Udp", "RcvbufErrors"))


def kernelCounters() -> dict[str, int]:
    """Loss counters of this network namespace (/proc/net/netstat and snmp): where a dropped request went."""
    values: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        try:
            rows = [line.split() for line in Path(path).read_text().splitlines()]
        except OSError:
            continue
        for names, numbers in zip(rows[::2], rows[1::2], strict=False):
            table = names[0].rstrip(":")
            for name, number in zip(names[1:], numbers[1:], strict=False):
                if (table, name) in KERNEL_COUNTERS:
                    values[f"{table} {name}"] = int(number)
    return values


def metricsText(d: Daemon) -> str:
    """sockd's own counters from its metrics endpoint, or an empty string."""
    match = re.search(r"metrics listening on tcp (\S+)", d.log())
    if not match:
        return ""
    try:
        with urllib.request.urlopen(f"http://{match.group(1)}/metrics", timeout=5) as response:
            return response.read().decode()
    except OSError:
        return ""


def metricSums(text: str, name: str, label: str) -> Counter[str]:
    sums: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            sums[labels.get(label, "?")] += int(float(line.rsplit(" ", 1)[1]))
    return sums


def freshChecks(d: Daemon) -> list[str]:
    """After the soak: every service answers a fresh client correctly (plain blocking sockets)."""
    failures = []
    for service in ("ack", "echo", "daytime", "time", "qotd", "chargen"):
        try:
            with socket.create_connection(d.address(service, "tcp"), timeout=5) as s:
                if service == "ack":
                    s.sendall(b"after the soak\n")
                    assert s.recv(64) == ACK_STREAM
                elif service == "echo":
                    s.sendall(b"after the soak")
                    assert s.recv(64) == b"after the soak"
                elif service == "chargen":
                    got = b""
                    while len(got) < 740:
                        got += s.recv(740 - len(got))
                    assert got == CYCLE[:740]
                else:
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                    {"daytime": checkDaytime, "time": checkTime, "qotd": checkQuote}[service](data)
        except (OSError, AssertionError, Wrong) as e:
            failures.append(f"fresh {service}/tcp: {type(e).__name__} {e}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
        try:
            u.settimeout(5)
            u.connect(d.path("ack"))
            u.sendall(b"after the soak\n")
            if u.recv(64) != ACK_STREAM:
                failures.append("fresh ack/unix: wrong answer")
        except OSError as e:
            failures.append(f"fresh ack/unix: {e}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        try:
            s.sendto(b"after the soak", d.address("echo", "udp"))
            if s.recvfrom(65535)[0] != b"after the soak":
                failures.append("fresh echo/udp: wrong answer")
        except OSError as e:
            failures.append(f"fresh echo/udp: {e}")
    return failures


def startDaemon(workdir: Path) -> Daemon:
    quotes = workdir / "quotes"
    quotes.write_text("\n%\n".join(QUOTES) + "\n")
    args: list[str] = []
    for service in ("ack", "echo", "discard", "daytime", "time", "qotd", "chargen"):
        args += [f"--{service}", "tcp:0:interface=127.0.0.1", f"--{service}", "udp:0:interface=127.0.0.1"]
    args += ["--ack", f"unix:{workdir / 'ack.sock'}", "--exempt", "none", "--no-log-messages",
             "--quotes", str(quotes), "--metrics", "tcp:0:interface=127.0.0.1"]
    for option, value in LIMITS.items():
        args += [option, value]
    d = Daemon(args, workdir, timeout=30)
    # Wait until every listener, the metrics one included, has been logged.
    deadline = time.monotonic() + 10
    while len(re.findall(r"listening on", d.log())) < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    return d


async def soak(d: Daemon, tally: Tally, seconds: float, goodRate: float, seed: int) -> tuple[int, float]:
    until = time.monotonic() + seconds
    good = Good(d, tally, random.Random(seed))
    hostile = Hostile(d, tally, random.Random(seed + 1), until)
    _, flood = await asyncio.gather(good.run(goodRate, until), hostile.run())
    return flood


def waitForFds(d: Daemon, baseline: int, timeout: float) -> tuple[bool, float]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if d.fds() <= baseline:
            return True, time.monotonic() - start
        time.sleep(0.1)
    return d.fds() <= baseline, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the traffic phase (default 60)")
    parser.add_argument("--good-rate", type=float, default=600.0, help="well-formed requests per second (600)")
    parser.add_argument("--seed", type=int, default=1996, help="random seed for payloads and the mix")
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.md", help="where to write the report")
    options = parser.parse_args()

    tally = Tally()
    failures: list[str] = []
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sockd-soak-") as tmp:
        workdir = Path(tmp)
        d = startDaemon(workdir)
        stop = threading.Event()
        try:
            time.sleep(0.5)
            figures["rss0"], figures["fds0"] = d.rss(), d.fds()
            threading.Thread(target=sampler, args=(d, tally, stop), daemon=True).start()
            kernelBefore = kernelCounters()
            started = time.monotonic()
            floodAnswers, floodSeconds = asyncio.run(soak(d, tally, options.seconds, options.good_rate, options.seed))
            figures["elapsed"] = time.monotonic() - started
            kernelAfter = kernelCounters()
            figures["kernel"] = {k: kernelAfter[k] - kernelBefore.get(k, 0) for k in kernelAfter}
            stop.set()
            figures["alive"] = d.process.poll() is None
            figures["rssEnd"] = d.rss() if figures["alive"] else 0
            figures["fdsEndRaw"] = d.fds() if figures["alive"] else 0
            # Connections the hostile clients left are closed by now or by the idle timeout (5 s).
            back, took = waitForFds(d, figures["fds0"], 15.0) if figures["alive"] else (False, 0.0)
            figures["fdsBack"], figures["fdsTook"], figures["fdsEnd"] = back, took, d.fds() if figures["alive"] else 0
            figures["fresh"] = freshChecks(d) if figures["alive"] else ["daemon died"]
            figures["metrics"] = metricsText(d) if figures["alive"] else ""
            stopAt = time.monotonic()
            figures["exit"] = d.stop()
            figures["stopSeconds"] = time.monotonic() - stopAt
            log = d.log()
            figures["tracebacks"] = log.count("Traceback") + log.count("Unhandled Error")
        finally:
            stop.set()
            d.stop()

    # Verdicts.
    good = sum(tally.good.values())
    answered = sum(tally.answered.values())
    unanswered = sum(tally.unanswered.values())
    wrong = sum(tally.wrong.values())
    reflected = sum(v for k, v in tally.outcomes.items() if "ANSWERED" in k)
    burst, rate = int(LIMITS["--udp-burst"]), float(LIMITS["--udp-rate"])
    floodBound = burst + rate * (floodSeconds + 0.6)
    if unanswered:
        failures.append(f"{unanswered} well-formed requests unanswered")
    if wrong:
        failures.append(f"{wrong} well-formed requests answered wrongly")
    if good != answered + unanswered + wrong:
        failures.append(f"{good - answered - unanswered - wrong} well-formed requests unaccounted for")
    if reflected:
        failures.append(f"{reflected} datagrams from blocked ports were answered")
    if floodAnswers > floodBound:
        failures.append(f"UDP flood got {floodAnswers} answers, more than burst + rate x time = {floodBound:.0f}")
    if tally.floodHeldPeak > int(LIMITS["--max-per-source"]):
        failures.append(f"flood held {tally.floodHeldPeak} connections at once, over --max-per-source")
    if tally.outcomes["huge line: WRONG answers"]:
        failures.append("a huge line was not answered as 255-byte messages")
    if not figures["alive"]:
        failures.append("sockd died during the soak")
    if not figures["fdsBack"]:
        failures.append(f"descriptors {figures['fdsEnd']} did not return to {figures['fds0']}")
    failures += figures["fresh"]
    if figures["tracebacks"]:
        failures.append(f"{figures['tracebacks']} tracebacks in sockd's log")
    if figures["exit"] != 0:  # a drain that finished exits 0
        failures.append(f"sockd exited with {figures['exit']} on SIGTERM")

    report = render(options, tally, figures, failures, floodAnswers, floodSeconds, floodBound)
    print(report)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(report)
    return 1 if failures else 0


def render(options: argparse.Namespace, tally: Tally, figures: dict[str, Any], failures: list[str],
           floodAnswers: int, floodSeconds: float, floodBound: float) -> str:
    elapsed = options.seconds
    good = sum(tally.good.values())
    lines = [
        f"# sockd soak — {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"Command: `.venv/bin/python bench/soak.py --seconds {options.seconds:g} --good-rate {options.good_rate:g}"
        f" --seed {options.seed}`; {os.cpu_count()} CPUs shared by sockd and the load (one asyncio process).",
        "sockd: every service on TCP and UDP 127.0.0.1 (port 0) plus ack on a Unix socket, "
        + " ".join(f"{k} {v}" for k, v in LIMITS.items()) + " --exempt none --no-log-messages.",
        f"Good clients from {len(GOOD_SOURCES)} addresses (127.0.1.1-8); each hostile kind from its own 127.0.0.x.",
        "",
        f"**Verdict: {'PASS' if not failures else 'FAIL'}**" + ("" if not failures else ": " + "; ".join(failures)),
        "",
        "## Load held",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| traffic phase (new requests and attacks started) | {elapsed:.0f} s,"
        f" then {figures['elapsed'] - elapsed:.1f} s to finish those in flight |",
        f"| well-formed requests | {good:,} ({good / elapsed:,.0f}/s) |",
        f"| answered byte-exactly | {sum(tally.answered.values()):,} |",
        f"| **unanswered** | **{sum(tally.unanswered.values())}** |",
        f"| **answered wrongly** | **{sum(tally.wrong.values())}** |",
        f"| UDP retries needed (a lost datagram, then answered) | {tally.udpRetries} |",
        f"| good UDP sockets re-bound: their ephemeral port equalled a sockd UDP port, which the own-port"
        f" loop guard drops by design | {tally.portCollisions} |",
        f"| good connections that took over 0.9 s to connect (a dropped SYN) | {tally.slowConnects}"
        f" (slowest {tally.slowestConnect:.2f} s) |",
        f"| stream connections opened, good and hostile | {tally.connections:,}"
        f" ({tally.connections / elapsed:,.0f}/s) |",
        f"| datagrams sent, good and hostile | {tally.datagrams:,} ({tally.datagrams / elapsed:,.0f}/s) |",
        "",
        "| good request | sent | answered | unanswered | wrong |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, _ in Good.KINDS:
        lines.append(f"| {kind} | {tally.good[kind]:,} | {tally.answered[kind]:,} | {tally.unanswered[kind]} |"
                     f" {tally.wrong[kind]} |")
    lines += [
        "",
        "## Faults injected",
        "",
        "| kind | attempts |",
        "|---|---:|",
    ]
    for kind, count in sorted(tally.faults.items()):
        lines.append(f"| {kind} | {count:,} |")
    lines += [
        f"| bad input bytes sent | {tally.badBytes:,} |",
        "",
        "## What the defences did",
        "",
        "| outcome | count |",
        "|---|---:|",
    ]
    for kind, count in sorted(tally.outcomes.items()):
        lines.append(f"| {kind} | {count:,} |")
    lines += [
        f"| flood: most connections held at once (limit {LIMITS['--max-per-source']}) | {tally.floodHeldPeak} |",
        f"| udp flood: answers vs bound burst + rate x {floodSeconds:.1f} s | {floodAnswers:,} ≤ {floodBound:,.0f} |",
    ]
    metrics = figures.get("metrics", "")
    if metrics:
        refused = metricSums(metrics, "sockd_connections_refused_total", "reason")
        dropped = metricSums(metrics, "sockd_datagrams_dropped_total", "reason")
        timedOut = metricSums(metrics, "sockd_connections_timed_out_total", "kind")
        lines += ["", "sockd's own counters (/metrics): connections refused by reason "
                  + (", ".join(f"{k} {v:,}" for k, v in sorted(refused.items())) or "none")
                  + "; datagrams dropped by reason "
                  + (", ".join(f"{k} {v:,}" for k, v in sorted(dropped.items())) or "none")
                  + "; connections timed out "
                  + (", ".join(f"{k} {v:,}" for k, v in sorted(timedOut.items())) or "none") + "."]
    if figures.get("kernel"):
        lines += ["", "Kernel loss counters during the traffic (this network namespace, so other processes' traffic"
                  " is counted too): " + ", ".join(f"{k} +{v:,}" for k, v in figures["kernel"].items()) + "."]
    rss = tally.rssSamples or [0]
    fds = tally.fdSamples or [0]
    lines += [
        "",
        "## The daemon",
        "",
        "| figure | start | peak | end |",
        "|---|---:|---:|---:|",
        f"| RSS (MB) | {figures['rss0'] / MB:.1f} | {max(rss) / MB:.1f} | {figures['rssEnd'] / MB:.1f} |",
        f"| open descriptors | {figures['fds0']} | {max(fds)} | {figures['fdsEndRaw']} at the end of traffic,"
        f" {figures['fdsEnd']} {'after' if figures['fdsBack'] else 'still, after'} {figures['fdsTook']:.1f} s |",
        "",
        f"Fresh clients after the soak: {'all answered correctly' if not figures['fresh'] else figures['fresh']}."
        f" SIGTERM: exit {figures['exit']} after {figures['stopSeconds']:.2f} s"
        " (0: the drain finished). "
        f"Tracebacks in sockd's log: {figures['tracebacks']}.",
    ]
    step = max(1, len(rss) // 12)
    lines += ["", "RSS during the run, MB, one sample per second (every " + str(step) + "th shown): "
              + " ".join(f"{r / MB:.0f}" for r in rss[::step]) + "."]
    if tally.problems:
        lines += ["", "First problems seen:", ""] + [f"- {p}" for p in tally.problems]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
