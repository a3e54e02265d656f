"""sockd-client: the tutorial's clients in one command, and the measuring half of the kit.

C{sockd-client HOST PORT} (TCP), C{--udp HOST PORT} and C{--unix PATH} do what
the tutorial's client.c, its datagram client and its Unix-domain client do:
prompt for a message (when standard input is a terminal), send it, print the
answer.  The message ends with a newline, as fgets() leaves it.  On a stream the
client then half-closes, so it can read the whole answer to end of stream.

C{--count}/C{--interval} ping, C{--concurrency}/C{--duration} load, and
C{--time}/C{--daytime} clock checks measure sockd or any echo, discard, chargen,
time or daytime server; the engines are in L{sockd.measure} (standard library
only, so the client starts fast and shares nothing with the server it measures).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import socket
import sys
import time
from typing import Any, BinaryIO, NoReturn, TextIO

from sockd.measure import (
    ClockReading,
    Load,
    LoadOptions,
    LoadResult,
    MeasureError,
    PingOptions,
    PingResult,
    Snapshot,
    Target,
    UsageError,
    checkPingOptions,
    ping,
    readClock,
    tlsContext,
)

PROMPT = "Please enter the message: "
MAX_ANSWER = 1 << 20


class ClientError(Exception):
    """One line for stderr."""


def readMessage(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> bytes:
    """The one-shot message: -m, or one line of standard input (prompting a person at a terminal)."""
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
    """Send C{message}, half-close, and read the answer to end of stream (or the timeout)."""
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
    """Send one datagram and return the first one that comes back."""
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
    """The first address of C{host}."""
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


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (and status 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(kind: type, low: float, what: str, inclusive: bool = False):  # noqa: ANN202
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if (value < low if inclusive else value <= low) or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'at least' if inclusive else 'more than'} {low:g}")
        return value
    return convert


def parseArgs(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: every usage error is one line and status 2, before anything is sent."""
    parser = _Parser(
        prog="sockd-client",
        description="Send one message to a sockd service (or any stream/datagram server) and print the answer;"
                    " or measure it: ping (--count), load (--concurrency/--duration), clock (--time/--daytime).",
    )
    parser.add_argument("host", nargs="?", help="server host name or address (TCP, or UDP with --udp)")
    parser.add_argument("port", nargs="?", help="server port")
    parser.add_argument("--udp", action="store_true", help="use a datagram (UDP) socket")
    parser.add_argument("--unix", metavar="PATH", help="connect to a Unix-domain stream socket")
    parser.add_argument("-m", "--message", metavar="TEXT", help="send TEXT instead of reading a line")
    parser.add_argument("-t", "--timeout", type=_positive(float, 0, "number of seconds"), default=5.0,
                        help="seconds to wait for an answer (5); in ping mode, for each reply")
    measure = parser.add_argument_group("measuring (any of these replaces the one message)")
    measure.add_argument("-c", "--count", type=_positive(int, 0, "whole number", inclusive=True),
                         help="ping: send N probes (0: until Ctrl-C)")
    measure.add_argument("-i", "--interval", type=_positive(float, 0, "number of seconds", inclusive=True),
                         help="ping: seconds between probes (1)")
    measure.add_argument("-s", "--size", type=_positive(int, 0, "whole number"),
                         help="bytes per probe or request, newline included (64); per write for --discard (16384),"
                              " per read at most for --chargen (65536)")
    measure.add_argument("--expect", choices=("auto", "echo", "ack"), default="auto",
                         help="what answers: an echo server, or sockd's ack service (auto: the first answer says)")
    measure.add_argument("-q", "--quiet", action="store_true", help="ping: print only the summary")
    measure.add_argument("-C", "--concurrency", type=_positive(int, 0, "whole number"),
                         help="load: connections (or UDP sockets) each with one request in flight (1)")
    measure.add_argument("-d", "--duration", type=_positive(float, 0, "number of seconds"),
                         help="load: seconds to measure (10)")
    measure.add_argument("--warmup", type=_positive(float, 0, "number of seconds", inclusive=True), default=0.5,
                         help="load: seconds of load before the measured window (0.5)")
    measure.add_argument("--discard", action="store_true", help="load: push bytes one way to a discard server")
    measure.add_argument("--chargen", action="store_true", help="load: pull bytes from a chargen server")
    measure.add_argument("--time", action="store_true",
                         help="read an RFC 868 time server's clock and its offset from this one")
    measure.add_argument("--daytime", action="store_true", help="the same for an RFC 867 daytime server")
    measure.add_argument("--json", action="store_true", help="print one JSON object with every figure instead")
    tls = parser.add_argument_group("TLS (streams, measuring modes)")
    tls.add_argument("--tls", action="store_true", help="speak TLS (to ssl:/tls: listeners)")
    tls.add_argument("--cafile", metavar="FILE", help="trust the certificates in FILE (implies --tls)")
    tls.add_argument("--insecure", action="store_true",
                     help="do not verify the server's certificate (self-signed test certificates; implies --tls)")
    tls.add_argument("--servername", metavar="NAME", help="name to verify and send as SNI (default: HOST)")
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
    args.tls = args.tls or args.insecure or bool(args.cafile) or bool(args.servername)
    ping = args.count is not None or args.interval is not None or args.quiet
    load = args.concurrency is not None or args.duration is not None or args.discard or args.chargen
    clock = args.time or args.daytime
    modes = [name for name, on in (("ping (--count/--interval)", ping), ("load (--concurrency/--duration/"
             "--discard/--chargen)", load), ("--time/--daytime", clock)) if on]
    if len(modes) > 1:
        parser.error(f"choose one of {' and '.join(modes)}")
    if args.discard and args.chargen or args.time and args.daytime:
        parser.error("--discard and --chargen (or --time and --daytime) are separate runs")
    if (args.discard or args.chargen) and args.expect != "auto":
        parser.error("--expect is for echo and ack, not --discard or --chargen")
    args.mode = "ping" if ping else "load" if load else "clock" if clock else "once"
    if args.mode != "once" and args.message is not None:
        parser.error("-m is the one-shot message; ping and load send their own")
    if args.mode == "once" and (args.tls or args.json or args.size is not None or args.expect != "auto"):
        parser.error("--tls, --json, --size and --expect go with --count, --concurrency or --time")
    if args.tls and args.udp:
        parser.error("TLS runs over a stream, not --udp")
    if args.tls and args.unix and not (args.insecure or args.servername):
        parser.error("TLS over a Unix socket needs --servername NAME to verify (or --insecure)")
    return args


def _target(args: argparse.Namespace) -> Target:
    if args.unix:
        target = Target("unix", path=args.unix)
    else:
        target = Target("udp" if args.udp else "tcp", host=args.host, port=args.port)
    if args.tls:
        target.tls = tlsContext(args.cafile, args.insecure)
        target.servername = args.servername or (None if args.unix else args.host)
    return target


def ms(ns: float | None) -> str:
    """Milliseconds with three decimals, as ping prints them (the issue's C{time=0.412 ms})."""
    return "-" if ns is None else f"{ns / 1e6:.3f}"


class PingPrinter:
    """ping's lines: one per reply (and per problem), to standard output as they happen."""

    def __init__(self, target: Target, out: TextIO, quiet: bool) -> None:
        self.target, self.out, self.quiet = target, out, quiet

    def reply(self, seq: int, size: int, rttNs: int, note: str) -> None:
        if not self.quiet:
            line = f"{size} bytes from {self.target.label}: seq={seq} time={ms(rttNs)} ms"
            self.out.write(f"{line} {note}\n" if note else line + "\n")
            self.out.flush()

    def problem(self, seq: int | None, text: str) -> None:
        if not self.quiet:
            self.out.write(f"seq={seq}: {text}\n" if seq is not None else text + "\n")
            self.out.flush()


class Silent:
    """A ping reporter that says nothing (--json prints only the final object)."""
    def reply(self, seq: int, size: int, rttNs: int, note: str) -> None:
        pass

    def problem(self, seq: int | None, text: str) -> None:
        pass


def pingSummary(result: PingResult) -> list[str]:
    """The summary in ping's shape; its format is pinned by a test."""
    counts = [f"{result.sent} sent", f"{result.received} received"]
    for value, name in ((result.corrupt, "corrupt"), (result.duplicates, "duplicates"),
                        (result.reordered, "reordered"), (result.late, "late"), (result.errors, "errors")):
        if value:
            counts.append(f"{'+' if name == 'duplicates' else ''}{value} {name}")
    counts.append(f"{result.lossPercent:.4g}% loss")
    counts.append(f"time {result.elapsed * 1000:.0f}ms")
    lines = ["", f"--- {result.target} ping statistics ---", ", ".join(counts)]
    rtt = result.rtt
    if rtt.count:
        lines.append(f"rtt min/avg/max/mdev = {ms(rtt.low)}/{ms(rtt.mean())}/{ms(rtt.high)}/{ms(rtt.mdev())} ms")
        lines.append(f"rtt p50/p90/p99 = {ms(rtt.percentile(0.5))}/{ms(rtt.percentile(0.9))}/"
                     f"{ms(rtt.percentile(0.99))} ms")
    return lines


def pingJson(result: PingResult, options: PingOptions) -> dict[str, Any]:
    """Every figure of a ping run, under the keys docs/client.md lists (pinned by a test)."""
    return {
        "mode": "ping", "target": result.target, "transport": result.transport, "expect": result.expect,
        "size": result.size, "count": options.count, "interval_s": options.interval, "timeout_s": options.timeout,
        "sent": result.sent, "received": result.received, "lost": result.sent - result.received,
        "loss_percent": round(result.lossPercent, 4), "corrupt": result.corrupt, "duplicates": result.duplicates,
        "reordered": result.reordered, "late": result.late, "errors": result.errors,
        "time_s": round(result.elapsed, 6), "interrupted": result.interrupted,
        "connect_ms": None if result.connectNs is None else round(result.connectNs / 1e6, 6),
        "rtt_ms": result.rtt.summary(),
    }


def runPing(args: argparse.Namespace, out: TextIO) -> int:
    """Ping mode: status 0 if every probe came back, 1 if not."""
    target = _target(args)
    options = PingOptions(count=args.count if args.count is not None else 0,
                          interval=args.interval if args.interval is not None else 1.0,
                          size=args.size or 64, timeout=args.timeout, expect=args.expect)
    checkPingOptions(target, options)  # a usage error before anything is printed
    if not args.json:
        out.write(f"PING {target.label} ({target.transportName}): {options.size} bytes per probe\n")
        out.flush()
    reporter = Silent() if args.json else PingPrinter(target, out, args.quiet)
    result = ping(target, options, reporter)
    if args.json:
        out.write(json.dumps(pingJson(result, options)) + "\n")
    else:
        out.write("\n".join(pingSummary(result)) + "\n")
    out.flush()
    return 0 if result.sent and result.received == result.sent else 1


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _bytes(value: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} B"


class ProgressLine:
    """A live line on a terminal (standard error), rewritten once a second."""

    def __init__(self, stream: TextIO, requests: bool) -> None:
        self.stream, self.requests, self.shown = stream, requests, False

    def __call__(self, snap: Snapshot) -> None:
        rate = snap.operations / snap.elapsed if snap.elapsed > 0 else 0.0
        if self.requests:
            text = f"{snap.elapsed:6.1f} s  {_rate(rate)} req/s  p99 {ms(snap.p99Ns)} ms  {snap.errors} errors"
        else:
            text = f"{snap.elapsed:6.1f} s  {_bytes(snap.bytes / snap.elapsed if snap.elapsed else 0)}/s  " \
                   f"{snap.errors} errors"
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def loadSummary(result: LoadResult, options: LoadOptions) -> list[str]:
    """The load run's summary lines (the first is blank, as ping's is)."""
    requests = result.pattern in ("echo", "ack")
    what = "requests" if requests else "writes" if result.pattern == "discard" else "reads"
    lines = ["", f"--- {result.target} load statistics ({result.transport}, {result.pattern}, {options.size} bytes,"
                 f" {result.concurrency} connection{'s' if result.concurrency != 1 else ''}) ---",
             f"{result.operations:,} {what} in {result.window:.3f} s: {_rate(result.rate)}/s, "
             f"{_bytes(result.bytesPerSecond)}/s, {result.errors} errors"]
    if result.errors:
        lines.append(f"errors: {result.timeouts} timeouts, {result.closed} closed, {result.connectErrors} connect,"
                     f" {result.corrupt} corrupt")
    if requests and result.latency.count:
        lat = result.latency
        lines.append(f"latency min/avg/max = {ms(lat.low)}/{ms(lat.mean())}/{ms(lat.high)} ms")
        lines.append(f"latency p50/p90/p99/p99.9 = {ms(lat.percentile(0.5))}/{ms(lat.percentile(0.9))}/"
                     f"{ms(lat.percentile(0.99))}/{ms(lat.percentile(0.999))} ms")
    per = f", {result.cpu / result.operations * 1e6:.2f} us per {what[:-1]}" if result.operations else ""
    share = result.cpu / result.window * 100 if result.window > 0 else 0.0
    lines.append(f"client CPU {result.cpu:.3f} s ({share:.0f}% of one core{per}; user {result.cpuUser:.3f} s,"
                 f" system {result.cpuSystem:.3f} s)")
    return lines


def loadJson(result: LoadResult, options: LoadOptions) -> dict[str, Any]:
    """Every figure of a load run, under the keys docs/client.md lists (pinned by a test)."""
    requests = result.pattern in ("echo", "ack")
    return {
        "mode": "load", "target": result.target, "transport": result.transport, "pattern": result.pattern,
        "size": options.size, "concurrency": result.concurrency, "duration_s": options.duration,
        "warmup_s": options.warmup, "window_s": round(result.window, 6), "interrupted": result.interrupted,
        "requests": result.requests, "operations": result.operations, "rate": round(result.rate, 1),
        "bytes_sent": result.bytesSent, "bytes_received": result.bytesReceived,
        "bytes_per_s": round(result.bytesPerSecond, 1),
        "errors": result.errors, "timeouts": result.timeouts, "closed": result.closed,
        "connect_errors": result.connectErrors, "corrupt": result.corrupt,
        "latency_ms": result.latency.summary((0.5, 0.9, 0.99, 0.999)) if requests else None,
        "client_cpu_s": round(result.cpu, 6), "client_cpu_user_s": round(result.cpuUser, 6),
        "client_cpu_system_s": round(result.cpuSystem, 6),
        "client_cpu_percent": round(result.cpu / result.window * 100, 2) if result.window > 0 else None,
        "client_cpu_us_per_op": round(result.cpu / result.operations * 1e6, 3) if result.operations else None,
    }


def runLoad(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Load mode: status 0 if there were requests and no errors, 1 if not."""
    target = _target(args)
    pattern = "discard" if args.discard else "chargen" if args.chargen else args.expect
    options = LoadOptions(concurrency=args.concurrency or 1, duration=args.duration or 10.0, warmup=args.warmup,
                          size=args.size or {"discard": 16384, "chargen": 65536}.get(pattern, 64), timeout=args.timeout,
                          expect=pattern)
    progress = None
    if not args.json and err.isatty():
        progress = ProgressLine(err, pattern not in ("discard", "chargen"))
    load = Load(target, options, progress)
    try:
        result = load.run()
    finally:
        if progress is not None:
            progress.clear()
    if args.json:
        out.write(json.dumps(loadJson(result, options)) + "\n")
    else:
        out.write("\n".join(loadSummary(result, options)[1:]) + "\n")
    out.flush()
    return 0 if result.operations and not result.errors else 1


def _utc(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%a %b %e %H:%M:%S %Y UTC")


def clockJson(reading: ClockReading) -> dict[str, Any]:
    """Every figure of a clock reading, under the keys docs/client.md lists (pinned by a test)."""
    server = reading.serverUnix
    return {
        "mode": reading.protocol, "target": reading.target, "transport": reading.transport,
        "answer": reading.answer.decode("ascii", "replace") if reading.protocol == "daytime"
        else int.from_bytes(reading.answer, "big"),
        "server_time": None if server is None else
        datetime.datetime.fromtimestamp(math.floor(server), datetime.UTC).isoformat(),
        "server_unix": server, "local_unix": round(reading.localUnix, 6),
        "offset_s": None if reading.offset is None else round(reading.offset, 6),
        "offset_uncertainty_s": round(0.5 + reading.rttNs / 2e9, 6), "rtt_ms": round(reading.rttNs / 1e6, 6),
    }


def runClock(args: argparse.Namespace, out: TextIO) -> int:
    """--time or --daytime: status 0 if the answer is a time, 1 if not."""
    target = _target(args)
    reading = readClock(target, "time" if args.time else "daytime", args.timeout)
    if args.json:
        out.write(json.dumps(clockJson(reading)) + "\n")
    else:
        said = f" ({reading.answer.decode('ascii', 'replace').strip()!r})" if reading.protocol == "daytime" else ""
        if reading.offset is None or reading.serverUnix is None:
            out.write(f"{reading.target}: {reading.protocol} answer{said} is not a time this client can read\n")
        else:
            out.write(f"{reading.target}: {_utc(math.floor(reading.serverUnix))}{said}, offset {reading.offset:+.3f} s"
                      f" (\u00b1{0.5 + reading.rttNs / 2e9:.3f} s: whole seconds), round trip {ms(reading.rttNs)} ms\n")
    out.flush()
    return 0 if reading.offset is not None else 1


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """The sockd-client command: the one-shot exchange, or ping, load or a clock check."""
    args = parseArgs(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        if args.mode == "ping":
            return runPing(args, stdout)
        if args.mode == "load":
            return runLoad(args, stdout, sys.stderr)
        if args.mode == "clock":
            return runClock(args, stdout)
        message = readMessage(args, stdin, stdout)
        if args.unix:
            answer = streamExchange(socket.AF_UNIX, args.unix, message, args.timeout, args.unix)
        elif args.udp:
            answer = datagramExchange(args.host, args.port, message, args.timeout)
        else:
            answer = streamToHost(args.host, args.port, message, args.timeout)
    except UsageError as e:
        sys.stderr.write(f"sockd-client: error: {e}\n")
        return 2
    except (ClientError, MeasureError) as e:
        sys.stderr.write(f"sockd-client: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    stdout.flush()
    out: BinaryIO = getattr(stdout, "buffer", None) or sys.stdout.buffer
    out.write(answer if answer.endswith(b"\n") else answer + b"\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
