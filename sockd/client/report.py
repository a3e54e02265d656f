"""What the measuring modes print: ping's lines and summary, load's summary and live line, the clock's line,
and every figure of each as one JSON object (--json; the keys are pinned by tests and listed in the docs)."""

from __future__ import annotations

import datetime
import math
from typing import TextIO

from sockd.client.clock import ClockReading
from sockd.client.load import LoadOptions, LoadResult, Snapshot
from sockd.client.ping import PingOptions, PingResult
from sockd.client.target import Target


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


def pingJson(result: PingResult, options: PingOptions) -> dict[str, object]:
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


def loadJson(result: LoadResult, options: LoadOptions) -> dict[str, object]:
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


def _utc(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%a %b %e %H:%M:%S %Y UTC")


def clockJson(reading: ClockReading) -> dict[str, object]:
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




def clockLine(reading: ClockReading) -> str:
    """The clock reading as one line: the server's time, its offset from this clock, the round trip."""
    said = f" ({reading.answer.decode('ascii', 'replace').strip()!r})" if reading.protocol == "daytime" else ""
    if reading.offset is None or reading.serverUnix is None:
        return f"{reading.target}: {reading.protocol} answer{said} is not a time this client can read"
    return (f"{reading.target}: {_utc(math.floor(reading.serverUnix))}{said}, offset {reading.offset:+.3f} s"
            f" (\u00b1{0.5 + reading.rttNs / 2e9:.3f} s: whole seconds), round trip {ms(reading.rttNs)} ms")
