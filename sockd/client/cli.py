"""The sockd-client command line: what the user asked for, checked, then the mode that does it.

Every usage mistake is one line and status 2 before anything is sent; every
failure at run time is one line and status 1 (L{sockd.client.errors}).

An inherited SIGINT that is ignored stays ignored, as Python and the shell's
conventions have it: a job started in the background by a script (C{cmd &}) is
not meant to die of the Ctrl-C typed for the foreground.  Otherwise Ctrl-C ends
a ping or load run with the summary so far.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import Any, BinaryIO, NoReturn, TextIO

from sockd import __version__
from sockd.client.clock import readClock
from sockd.client.errors import ClientError, UsageError
from sockd.client.load import Load, LoadOptions
from sockd.client.oneshot import exchange, readMessage
from sockd.client.ping import PingOptions, checkPingOptions, ping
from sockd.client.report import (
    PingPrinter,
    ProgressLine,
    Silent,
    clockJson,
    clockLine,
    loadJson,
    loadSummary,
    pingJson,
    pingSummary,
)
from sockd.client.target import Target, tlsContext

#: The options that choose each measuring mode (argparse dest names), in the order the help lists them.
#: --quiet is ping's, but also quiets load (no live line), so it chooses ping only when nothing else is given.
MODE_OPTIONS: dict[str, tuple[str, ...]] = {
    "ping": ("count", "interval"),
    "load": ("concurrency", "duration", "discard", "chargen"),
    "clock": ("time", "daytime"),
}
_MODE_NAMES = {"ping": "ping", "load": "load", "clock": "the clock check"}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (and status 2), not a usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: How the mode-choosing options are written (-C/--concurrency), for errors that name what was given.
        self.spellings: dict[str, str] = {}

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(kind: type[int] | type[float], low: float, what: str, inclusive: bool = False) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {what}") from None
        if (value < low if inclusive else value <= low) or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'at least' if inclusive else 'more than'} {low:g}")
        return value
    return convert


def makeParser() -> _Parser:
    """The parser, with every option and its help."""
    parser = _Parser(
        prog="sockd-client",
        description="Send one message to a sockd service (or any stream/datagram server) and print the answer;"
                    " or measure it: ping (--count), load (--concurrency/--duration), clock (--time/--daytime).",
    )
    parser.add_argument("host", nargs="?", help="server host name or address (TCP, or UDP with --udp)")
    parser.add_argument("port", nargs="?", help="server port")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--udp", action="store_true", help="use a datagram (UDP) socket")
    parser.add_argument("--unix", metavar="PATH", help="connect to a Unix-domain stream socket")
    parser.add_argument("-m", "--message", metavar="TEXT", help="send TEXT instead of reading a line")
    parser.add_argument("-t", "--timeout", type=_positive(float, 0, "number of seconds"), default=5.0,
                        help="seconds to wait for an answer (5); in ping mode, for each reply")
    measure = parser.add_argument_group("measuring (any of these replaces the one message)")

    def modeOption(*flags: str, **options: Any) -> None:
        action = measure.add_argument(*flags, **options)
        parser.spellings[action.dest] = "/".join(action.option_strings)

    modeOption("-c", "--count", type=_positive(int, 0, "whole number", inclusive=True),
                         help="ping: send N probes (0: until Ctrl-C)")
    modeOption("-i", "--interval", type=_positive(float, 0, "number of seconds", inclusive=True),
                         help="ping: seconds between probes (1)")
    measure.add_argument("-s", "--size", type=_positive(int, 0, "whole number"),
                         help="bytes per probe or request, newline included (64); per write for --discard (16384),"
                              " per read at most for --chargen (65536)")
    measure.add_argument("--expect", choices=("auto", "echo", "ack"), default="auto",
                         help="what answers: an echo server, or sockd's ack service (auto: the first answer says)")
    modeOption("-q", "--quiet", action="store_true",
                         help="print only the summary: no line per ping reply, no live line in load mode"
                              " (alone: ping until Ctrl-C)")
    modeOption("-C", "--concurrency", type=_positive(int, 0, "whole number"),
                         help="load: connections (or UDP sockets) each with one request in flight (1)")
    modeOption("-d", "--duration", type=_positive(float, 0, "number of seconds"),
                         help="load: seconds to measure (10)")
    measure.add_argument("--warmup", type=_positive(float, 0, "number of seconds", inclusive=True), default=0.5,
                         help="load: seconds of load before the measured window (0.5)")
    modeOption("--discard", action="store_true", help="load: push bytes one way to a discard server")
    modeOption("--chargen", action="store_true", help="load: pull bytes from a chargen server")
    modeOption("--time", action="store_true",
                         help="read an RFC 868 time server's clock and its offset from this one")
    modeOption("--daytime", action="store_true", help="the same for an RFC 867 daytime server")
    measure.add_argument("--json", action="store_true", help="print one JSON object with every figure instead")
    tls = parser.add_argument_group("TLS (streams, measuring modes)")
    tls.add_argument("--tls", action="store_true", help="speak TLS (to ssl:/tls: listeners)")
    tls.add_argument("--cafile", metavar="FILE", help="trust the certificates in FILE (implies --tls)")
    tls.add_argument("--insecure", action="store_true",
                     help="do not verify the server's certificate (self-signed test certificates; implies --tls)")
    tls.add_argument("--servername", metavar="NAME", help="name to verify and send as SNI (default: HOST)")
    return parser


def _spelling(parser: _Parser, dest: str) -> str:
    """How an option is written: -C/--concurrency."""
    return parser.spellings[dest]


def _chooseMode(parser: _Parser, args: argparse.Namespace) -> str:
    """once, ping, load or clock, from the options given; a usage error names the ones that clash."""
    given = {mode: [dest for dest in dests if getattr(args, dest) not in (None, False)]
             for mode, dests in MODE_OPTIONS.items()}
    chosen = [mode for mode, dests in given.items() if dests]
    if len(chosen) > 1:
        clashing = [f"{_MODE_NAMES[mode]} ({', '.join(_spelling(parser, d) for d in given[mode])})"
                    for mode in chosen]
        parser.error(f"choose one of {' and '.join(clashing)}")
    if chosen == ["clock"] and args.quiet:
        parser.error(f"{_spelling(parser, 'quiet')} goes with ping or load; {_MODE_NAMES['clock']} prints one line")
    if chosen:
        return chosen[0]
    return "ping" if args.quiet else "once"


def parseArgs(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked: every usage error is one line and status 2, before anything is sent."""
    parser = makeParser()
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
    args.mode = _chooseMode(parser, args)
    if args.discard and args.chargen or args.time and args.daytime:
        parser.error("--discard and --chargen (or --time and --daytime) are separate runs")
    if (args.discard or args.chargen) and args.expect != "auto":
        parser.error("--expect is for echo and ack, not --discard or --chargen")
    if args.mode != "once" and args.message is not None:
        parser.error("-m is the one-shot message; ping and load send their own")
    if args.mode == "once" and (args.tls or args.json or args.size is not None or args.expect != "auto"):
        parser.error("--tls, --json, --size and --expect go with --count, --concurrency or --time")
    if args.tls and args.udp:
        parser.error("TLS runs over a stream, not --udp")
    if args.tls and args.unix and not (args.insecure or args.servername):
        parser.error("TLS over a Unix socket needs --servername NAME to verify (or --insecure)")
    return args


def makeTarget(args: argparse.Namespace) -> Target:
    """The server the command line names, with its TLS settings."""
    if args.unix:
        target = Target("unix", path=args.unix)
    else:
        target = Target("udp" if args.udp else "tcp", host=args.host, port=args.port)
    if args.tls:
        target.tls = tlsContext(args.cafile, args.insecure)
        target.servername = args.servername or (None if args.unix else args.host)
    return target


def runPing(args: argparse.Namespace, out: TextIO) -> int:
    """Ping mode: status 0 if every probe came back, 1 if not."""
    target = makeTarget(args)
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


def runLoad(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Load mode: status 0 if there were requests and no errors, 1 if not."""
    target = makeTarget(args)
    pattern = "discard" if args.discard else "chargen" if args.chargen else args.expect
    options = LoadOptions(concurrency=args.concurrency or 1, duration=args.duration or 10.0, warmup=args.warmup,
                          size=args.size or {"discard": 16384, "chargen": 65536}.get(pattern, 64), timeout=args.timeout,
                          expect=pattern)
    progress = None
    if not (args.json or args.quiet) and err.isatty():
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


def runClock(args: argparse.Namespace, out: TextIO) -> int:
    """--time or --daytime: status 0 if the answer is a time, 1 if not."""
    reading = readClock(makeTarget(args), "time" if args.time else "daytime", args.timeout)
    out.write((json.dumps(clockJson(reading)) if args.json else clockLine(reading)) + "\n")
    out.flush()
    return 0 if reading.offset is not None else 1


def runOnce(args: argparse.Namespace, stdin: TextIO, stdout: TextIO) -> int:
    """The tutorial's exchange: one message, the answer printed as it came (a newline added if it had none)."""
    message = readMessage(args.message, stdin, stdout)
    answer = exchange(makeTarget(args), message, args.timeout)
    stdout.flush()
    out: BinaryIO = getattr(stdout, "buffer", None) or sys.stdout.buffer
    out.write(answer if answer.endswith(b"\n") else answer + b"\n")
    out.flush()
    return 0


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
        return runOnce(args, stdin, stdout)
    except ClientError as e:
        sys.stderr.write(f"sockd-client: {'error: ' if isinstance(e, UsageError) else ''}{e}\n")
        return e.exitStatus
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
