"""The per-message log lines of the tutorial's servers, kept cheap.

The tutorial's servers print every message they get, and so does sockd, by
default: C{Here is the message: ...} / C{Received a datagram: ...}, escaped so
a client cannot forge log lines.  C{--no-log-messages} turns them off, and so
does a C{--log-level} above info; then nothing is escaped or built.

Two paths, chosen once by where the log goes (L{sockd.observe.log.setup}),
and handed to every message log by the assembly in a L{MessageLogging}:

 - sockd writes twistd's log itself (twistd's default destinations): the
   line is appended to its sink as text, with no event at all
   (L{sockd.interfaces.IMessageSink}, L{sockd.observe.log.sink.LineSink.message});
 - any other observer (C{--logger sockd.logging.jsonLogger}, C{--syslog},
   C{twist}, tests): a structured C{twisted.logger} event with the service,
   transport, peer and size.  It is built here and handed straight to the
   logger's observer (the global publisher): the dictionary C{Logger.emit}
   would build, less the work C{emit} repeats for every event.

Either way, each source's lines pass a token bucket first
(L{sockd.observe.log.limit}, C{--log-rate}/C{--log-burst}): the lines over it
are counted and summarised, not written.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from time import time
from typing import Any

from twisted.logger import Logger, LogLevel

from sockd.interfaces import IMessageSink
from sockd.observe.addresses import formatAddress, transportOf
from sockd.observe.log.limit import UNIX, MessageLimiter, sourceOf
from sockd.observe.log.text import messageText, withoutLineEnd

NAMESPACE = "sockd.messages"
log = Logger(namespace=NAMESPACE)

STREAM_FORMAT = "Here is the message: {message}"
DATAGRAM_FORMAT = "Received a datagram: {message}"


#: What follows the timestamp in sockd's text lines, as twistd's text observer writes them.
STREAM_TAIL = (f" [{NAMESPACE}#info] " + STREAM_FORMAT.replace("{message}", "")).encode()
DATAGRAM_TAIL = (f" [{NAMESPACE}#info] " + DATAGRAM_FORMAT.replace("{message}", "")).encode()


class MessageLogging:
    """How this process logs messages: the one object the assembly hands to every L{MessageLog}.

    @ivar sink: where message lines go as text (L{IMessageSink}), or L{None}:
        messages are C{twisted.logger} events.
    @ivar level: the process's least logged level; above info, no message is logged.
    @ivar observer: the log observer that writes into C{sink}, for twistd to
        install (offered by the top service when it joins the application).
    @ivar limiter: the per-source ceiling on message lines, or L{None} (no limit).
    """

    def __init__(self, sink: IMessageSink | None = None, level: Any = LogLevel.info, observer: Any = None,
                 limiter: MessageLimiter | None = None) -> None:
        self.sink = sink
        self.level = level
        self.observer = observer
        self.limiter = limiter

    @property
    def suppressed(self) -> int:
        """Message lines held back by the limiter since start."""
        return self.limiter.suppressed if self.limiter is not None else 0

    @property
    def dropped(self) -> int:
        """Log lines the sink could not write since start (disk full, closed pipe)."""
        return self.sink.dropped if self.sink is not None else 0

    @property
    def messagesWanted(self) -> bool:
        """Whether info lines (the message log's) are logged at all."""
        return bool(self.level <= LogLevel.info)


#: Messages as events, at info: what a message log gets when nobody says otherwise (tests, tools).
EVENTS = MessageLogging()


class MessageLog:
    """Logs received messages for one service, or does nothing when disabled.

    @ivar enabled: whether messages are logged at all (C{--no-log-messages},
        C{--log-level} above info: not).
    """

    def __init__(self, service: str, enabled: bool = True, logging: MessageLogging = EVENTS) -> None:
        self.service = service
        self.enabled = enabled and logging.messagesWanted
        self._sink = logging.sink
        self._limiter = logging.limiter
        #: What L{forConnection} hands out on the sink's path, per source: shared, so an idle connection holds none.
        self._bySource: dict[str, Callable[[bytes], None]] = {}

    def _emit(self, format: str, message: bytes, transport: str, peer: object) -> None:
        """What C{log.info(format, message=..., service=..., transport=..., peer=..., bytes=...)} emits."""
        if not isinstance(peer, str):
            getPeer = getattr(peer, "getPeer", None)
            if getPeer is not None:  # a connection: its peer's address, and the transport that says
                peer = getPeer()
                transport = transportOf(peer)
            peer = formatAddress(peer)
        log.observer({
            "message": messageText(message),
            "service": self.service,
            "transport": transport,
            "peer": peer,
            "bytes": len(message),
            "log_logger": log,
            "log_level": LogLevel.info,
            "log_namespace": NAMESPACE,
            "log_source": None,
            "log_format": format,
            "log_time": time(),
        })

    #: Sources whose logger L{forConnection} keeps (the limiter tracks as many).
    maxSources = MessageLimiter.maxSources

    def forConnection(self, connection: object) -> Callable[[bytes], None] | None:
        """How one connection's stream messages are logged: its source and the path chosen once, not per message.

        L{None} when messages are not logged.  Each call of what it returns is
        what L{stream}C{(message, connection)} does.  Connections from one
        source share one function (on the sink's path), so an open connection
        costs the log no memory of its own.
        """
        if not self.enabled:
            return None
        sink = self._sink
        if sink is None:
            return partial(self.stream, peer=connection)
        limiter = self._limiter
        source = UNIX if limiter is None else sourceOf(connection)  # without a limiter all sources write alike
        logger = self._bySource.get(source)
        if logger is None:
            write = partial(sink.message, STREAM_TAIL)
            logger = write if limiter is None else limiter.gate(source, write)
            if len(self._bySource) < self.maxSources:
                self._bySource[source] = logger
        return logger

    def stream(self, message: bytes, peer: object, transport: str = "tcp") -> None:
        """Log one framed stream message as the tutorial's server prints it.

        C{peer}: the connection (asked for its peer only if the line shows it,
        and then C{transport} is C{tcp} or C{unix} from that address), an
        address, or its text.  C{transport} goes only into the structured event.
        """
        if self.enabled:
            limiter = self._limiter
            if limiter is not None and not limiter.allowPeer(peer):
                return
            sink = self._sink
            if sink is not None:
                sink.message(STREAM_TAIL, message)
            else:
                self._emit(STREAM_FORMAT, message, transport, peer)

    def datagram(self, message: bytes, peer: object) -> None:
        """Log one datagram as the tutorial's datagram server prints it."""
        if self.enabled:
            limiter = self._limiter
            if limiter is not None and not limiter.allow(peer[0] if type(peer) is tuple else sourceOf(peer)):
                return
            sink = self._sink
            if sink is not None:
                sink.message(DATAGRAM_TAIL, message)
            else:
                self._emit(DATAGRAM_FORMAT, message, "udp", peer)


__all__ = ["DATAGRAM_FORMAT", "EVENTS", "NAMESPACE", "STREAM_FORMAT", "MessageLog", "MessageLogging", "messageText",
           "withoutLineEnd"]
