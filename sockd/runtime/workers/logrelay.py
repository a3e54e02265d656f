"""A worker's logs into its parent's: JSON events from its stdout, finished message lines from a pipe.

Each worker runs twistd with sockd's JSON observer on stdout; the parent
turns every line back into an event of its own, naming the worker.  When the
parent's log is a sink of its own (L{sockd.observe.log.sink.LineSink}), a
worker's message lines skip the event machinery: it formats them itself and
writes them to a pipe, and the parent appends them to its sink as they come.
"""

from __future__ import annotations

import json

from twisted.logger import Logger, LogLevel

from sockd.interfaces import IMessageSink

__all__ = ["MAX_LINE", "LogRelay"]

log = Logger(namespace="sockd.workers")

#: A runaway line (no newline within this many bytes) is dropped rather than buffered without bound.
MAX_LINE = 1 << 20


class LogRelay:
    """One worker's two log streams, cut into whole lines and handed on."""

    def __init__(self, index: int, messageSink: IMessageSink | None = None) -> None:
        self.index = index
        self.messageSink = messageSink
        self._partial = b""
        self._partialLines = b""

    def events(self, data: bytes) -> None:
        """Bytes from the worker's stdout: one JSON event per line, re-emitted in the parent's log."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE:
            self._partial = b""
        for line in lines:
            self._relay(line)

    def messages(self, data: bytes) -> None:
        """Bytes from the worker's message pipe: whole lines into our sink as they are."""
        assert self.messageSink is not None
        # A line cut by the pipe waits for its end.
        whole, newline, rest = (self._partialLines + data).rpartition(b"\n")
        self._partialLines = rest if len(rest) <= MAX_LINE else b""
        if newline:
            self.messageSink.lines(whole + newline)

    def _relay(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            level = LogLevel.levelWithName(record.pop("level", "info"))
        except (ValueError, KeyError, AttributeError):
            log.info("worker {worker}: {text}", worker=self.index, text=line.decode("utf-8", "replace"))
            return
        text = record.pop("text", "")
        namespace = record.pop("namespace", "sockd.worker")
        if level < LogLevel.warn and not namespace.startswith("sockd") or level < LogLevel.info:
            return  # each worker's own twistd start-up chatter: the parent already said it once
        record.pop("time", None)
        fields = {k: v for k, v in record.items() if not k.startswith("log_")}
        Logger(namespace=namespace).emit(level, "{text}", text=text, worker=self.index, **fields)
