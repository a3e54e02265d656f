"""sockd's default log destination: lines kept in memory and written once per reactor turn.

twistd's own text observer formats and writes (and flushes, one system call)
every event by itself: with the tutorial's per-message lines that is most of
what a message costs.  Here every line goes into a list, and the list is
written in one system call at the end of the reactor turn that produced it
(a C{callLater} set when the list goes from empty to non-empty), or at
once when the reactor is not running, or when L{LineSink.maxLines} lines
pile up.  Other events (listening, refusals, idle closes, errors: a few per
connection at most, not per message) are written at once, with whatever
message lines precede them, as twistd's observer does: what a client or a
test sees happen is in the log by then.

When the log is busy, writes are spaced L{LineSink.interval} (10 ms) apart:
a line written at the end of a quiet turn goes out at once, but under load a
write per reactor turn (one system call per few messages) would cost more than
the messages themselves, so lines then wait up to 10 ms for the next write.

The message lines of L{sockd.observe.log.messages} skip the event machinery
altogether: L{LineSink.message} appends the line twistd would have written,
with a timestamp formatted once per second.  The sink is their one hook
(L{sockd.interfaces.IMessageSink}): the assembly builds it, with its
L{SinkObserver}, only where sockd writes twistd's log itself
(L{sockd.observe.log.setup}), hands the observer to twistd and the sink to
every message log.  With C{--logger X}, C{--syslog} or C{twist} there is no
sink, and the messages stay ordinary C{twisted.logger} events with their
structured fields.

A log that cannot be written (disk full, a closed pipe) drops lines, counts
them and says so once on standard error; it never raises into the protocol
that logged.  A short write is continued; when a write fails part-way, the
lines that did not get out are counted as dropped, and a half-written line is
taken back off a log file (L{sockd.observe.log.files.CappedLogFile.cut}) or,
where that cannot be done (a pipe), ended before the next line: no line is
ever spliced onto another.  Nothing is lost at a clean stop or a crash of the reactor loop:
the sink is flushed after the reactor's shutdown and at interpreter exit.

When the output is the journal (C{JOURNAL_STREAM} names the descriptor's
device and inode, see systemd.exec(5)), every line starts with its
sd-daemon(3) priority, C{<6>} for info, so C{journalctl -p warning} works.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

from twisted.logger import FilteringLogObserver, ILogObserver, LogLevel, LogLevelFilterPredicate, formatTime
from zope.interface import implementer

from sockd.interfaces import IMessageSink
from sockd.observe.log.files import PartialWrite, writeAll
from sockd.observe.log.observers import ClassicText
from sockd.observe.log.text import PLAIN, messageText
from sockd.observe.throttle import ACCEPT_WARNINGS

#: sd-daemon(3) priorities of Twisted's levels.
PRIORITIES: dict[Any, int] = {
    LogLevel.debug: 7,
    LogLevel.info: 6,
    LogLevel.warn: 4,
    LogLevel.error: 3,
    LogLevel.critical: 2,
}


def isJournal(fd: int, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether descriptor C{fd} is the journal stream systemd announced in C{JOURNAL_STREAM} (C{dev:inode})."""
    device, colon, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not colon:
        return False
    try:
        stat = os.fstat(fd)
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


#: What a checked batch of message lines may hold: printable ASCII but the backslash, and line feeds.
_LINE_PLAIN = PLAIN + b"\n"


class Output(Protocol):
    """Where a sink's bytes go: L{sockd.observe.log.files.CappedLogFile} (which rotates) or L{FdOutput}.

    C{write} raises C{OSError}, or L{PartialWrite} when some of the bytes got
    out; C{cut} is asked to take a half-written line back (only after a
    L{PartialWrite}).
    """

    def write(self, data: bytes) -> Any: ...

    def cut(self, length: int) -> bool: ...


class FdOutput:
    """Bytes written straight to a descriptor (standard output), bypassing Python's buffer.

    The sink buffers already; a second buffer in C{sys.stdout} would keep
    unwritable data around and fail again at interpreter exit (exit status 120).
    """

    def __init__(self, fd: int, write: Callable[[int, memoryview], int] = os.write) -> None:
        self.fd = fd
        self._write = write

    def write(self, data: bytes) -> None:
        """Write all of C{data}, continuing short writes (L{PartialWrite} if it fails part-way)."""
        writeAll(self.fd, data, self._write)

    def cut(self, length: int) -> bool:
        """A pipe or terminal cannot take bytes back: the sink ends the half line instead."""
        return False


@implementer(IMessageSink)
class LineSink:
    """Log lines buffered in memory and written once per reactor turn, never raising.

    Message lines are kept as they arrive, in three parts (timestamp, C{tail},
    the raw message ending in its line feed), and checked when written, all at
    once: if the batch is printable ASCII with one line feed per line, it is
    the escaped text already (nothing in it needs escaping, and the message's
    own line feed ends its line); otherwise each line is escaped by itself.
    Per message that leaves a clock read and three list appends.

    @ivar dropped: lines that could not be written (and are gone).
    """

    #: Lines kept before they are written anyway, however long the reactor turn: bounds memory and delay.
    maxLines = 2048
    #: Least seconds between two writes: lines wait at most this long, and only when the log is busy.
    interval = 0.01

    def __init__(self, output: Output, reactor: Any, *, journal: bool = False,
                 now: Callable[[], float] = time.time, errorFd: int = 2) -> None:
        self.output = output
        self.reactor = reactor
        self.journal = journal
        self.now = now
        self.errorFd = errorFd
        self.dropped = 0
        #: The output failed for good (a pipe whose reader is gone): drop without trying.
        self.broken = False
        self._failing = False
        #: The output ends in a half-written line that could not be taken back: end it before the next one.
        self._midLine = False
        #: Raw message lines, three parts each, not checked yet.
        self._raw: list[bytes] = []
        #: Lines ready to write (checked raw lines, escaped lines), before the raw ones.
        self._ready: list[bytes] = []
        #: Lines in _raw and _ready.
        self._count = 0
        self._scheduled = False
        self._lastWrite = float("-inf")
        # Message lines' timestamp: valid for times in [_from, _until).
        self._from = 0.0
        self._until = 0.0
        self._stamp = b""
        self._infoPrefix = "<6>" if journal else ""

    # -- writing --------------------------------------------------------------------------------------------

    def message(self, tail: bytes, message: bytes) -> None:
        """Append one message line: the timestamp, C{tail} (C{b" [namespace#info] Here is ...: "}), the message.

        The hot path of every logged message: no event, no formatting, the
        timestamp reused for the whole second, the escaping checked per write
        (see the class); the line is the timestamp, C{tail} and
        L{messageText}C{(message)}.
        """
        now = self.now()
        if not self._from <= now < self._until:
            self._restamp(now)
        if message[-1:] == b"\n":
            self._raw += (self._stamp, tail, message)
        else:
            self._seal()
            self._ready.append(self._stamp + tail + messageText(message).encode("utf-8", "backslashreplace") + b"\n")
        self._count += 1
        if not self._scheduled:
            self._schedule()
        elif self._count >= self.maxLines:
            self.flush()

    def _seal(self) -> None:
        """Move the raw lines to the ready ones, checked (escaped one by one if the batch needs it)."""
        raw = self._raw
        if not raw:
            return
        self._raw = []
        data = b"".join(raw)
        if data.translate(None, _LINE_PLAIN) or data.count(b"\n") * 3 != len(raw):
            data = b"".join(
                b"%s%s%s\n" % (raw[i], raw[i + 1], messageText(raw[i + 2]).encode("utf-8", "backslashreplace"))
                for i in range(0, len(raw), 3)
            )
        self._ready.append(data)

    def lines(self, data: bytes) -> None:
        """Append whole lines made by another sink (a C{--workers} child's), written with the next batch."""
        self._seal()
        self._ready.append(data)
        self._count += data.count(b"\n")
        if not self._scheduled:
            self._schedule()
        elif self._count >= self.maxLines:
            self.flush()

    def write(self, text: str) -> None:
        """Write C{text} (whole lines) now, after the lines buffered before it."""
        self._seal()
        self._ready.append(text.encode("utf-8", "backslashreplace"))
        self._count += 1
        self.flush()

    def _restamp(self, now: float) -> None:
        second = float(int(now // 1))
        self._from, self._until = second, second + 1.0
        self._stamp = (self._infoPrefix + formatTime(second)).encode("utf-8", "backslashreplace")

    def _schedule(self) -> None:
        reactor = self.reactor
        if getattr(reactor, "running", True):
            self._scheduled = True
            # At the end of this turn, unless the last write was under `interval` ago.
            reactor.callLater(max(0.0, self._lastWrite + self.interval - reactor.seconds()), self.flush)
        else:
            self.flush()  # before the reactor runs, or after it stopped: nobody would flush later

    def flush(self) -> None:
        """Write every buffered line now, in one write; on failure drop them (counted) and report once."""
        self._scheduled = False
        self._seal()
        ready, count = self._ready, self._count
        if not ready:
            return
        self._ready, self._count = [], 0
        self._lastWrite = self.reactor.seconds()
        if self.broken:
            self.dropped += count
            return
        data = b"".join(ready)
        skip = 0
        if self._midLine:
            data, skip = b"\n" + data, 1
        try:
            self.output.write(data)
        except (OSError, ValueError) as e:  # ValueError: the file was closed under us
            self._lost(data, e.written if isinstance(e, PartialWrite) else 0, skip)
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                self.broken = True
            if not self._failing:
                self._failing = True
                self._complain(f"sockd: cannot write the log ({e}); dropping log lines, serving on\n")
        else:
            self._midLine = False
            if self._failing:
                self._failing = False
                self._complain(f"sockd: the log is writable again; {self.dropped} lines were dropped\n")

    def _lost(self, data: bytes, written: int, skip: int) -> None:
        """A write of C{data} failed after C{written} bytes: count the lines lost, leave no half line behind."""
        self.dropped += data.count(b"\n", max(written, skip))
        if written == 0:
            return
        lineStart = data.rfind(b"\n", 0, written) + 1
        if lineStart == written:
            self._midLine = False  # it stopped between two lines
        else:
            self._midLine = not self.output.cut(written - lineStart)

    def _complain(self, text: str) -> None:
        try:
            os.write(self.errorFd, text.encode("utf-8", "backslashreplace"))
        except OSError:
            pass

    def close(self) -> None:
        """Flush, and say how many lines were lost if any were (at exit)."""
        self.flush()
        if self.dropped and self._failing:
            self._complain(f"sockd: {self.dropped} log lines were dropped\n")


@implementer(ILogObserver)
class SinkObserver:
    """twistd's text lines (C{textFileLogObserver}'s format) into a L{LineSink}, filtered by level.

    Each event is written at once (after the message lines buffered before it).
    The message lines reach the same sink without it (L{LineSink.message}).
    """

    def __init__(self, sink: LineSink, level: Any = LogLevel.info) -> None:
        self.sink = sink
        self._format = ClassicText()
        # A plain callable is an observer to twisted.logger (its stubs ask for the interface).
        self._filtered = FilteringLogObserver(cast(ILogObserver, self._write),
                                              [LogLevelFilterPredicate(level), ACCEPT_WARNINGS])

    def __call__(self, event: dict[str, Any]) -> None:
        self._filtered(event)

    def _write(self, event: dict[str, Any]) -> None:
        try:
            text = self._format(event)
        except Exception:  # an event that cannot be formatted must not take the daemon down
            text = f"{formatTime(time.time())} [-#error] unformattable log event: {event!r:.500}\n"
        if not text:
            return
        level = event.get("log_level")
        if self.sink.journal:
            prefix = f"<{PRIORITIES.get(level, 6)}>"
            body = text[:-1]
            if "\n" in body:
                body = body.replace("\n", "\n" + prefix)
            text = f"{prefix}{body}\n"
        self.sink.write(text)


def standardOutput() -> FdOutput:
    """Standard output as a sink output, after writing what Python still buffers for it (keeps the order)."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError, AttributeError):
        pass
    return FdOutput(1)
