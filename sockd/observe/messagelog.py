"""The per-message log lines of the tutorial's servers, kept cheap.

The tutorial's servers print every message they get, and so does sockd, by
default: C{Here is the message: ...} / C{Received a datagram: ...}, escaped so
a client cannot forge log lines.  C{--no-log-messages} turns them off, and so
does a C{--log-level} above info; then nothing is escaped or built.

Two paths, chosen per message by where the log goes (L{sockd.observe.logsetup}):

 - sockd's own observer is installed (twistd's default destinations): the
   line is appended to its sink as text, with no event at all
   (L{sockd.observe.logsink.LineSink.message}), the peer not even asked for;
 - any other observer (C{--logger sockd.logging.jsonLogger}, C{--syslog},
   C{twist}, tests): a structured C{twisted.logger} event with the service,
   transport, peer and size.  It is built here and handed straight to the
   logger's observer (the global publisher): the dictionary C{Logger.emit}
   would build, less the work C{emit} repeats for every event.
"""

from __future__ import annotations

from time import time

from twisted.logger import Logger, LogLevel

from sockd.observe.addresses import formatAddress, transportOf
from sockd.observe.logstate import STATE, LogState
from sockd.observe.messagetext import messageText, withoutLineEnd

NAMESPACE = "sockd.messages"
log = Logger(namespace=NAMESPACE)

STREAM_FORMAT = "Here is the message: {message}"
DATAGRAM_FORMAT = "Received a datagram: {message}"


#: What follows the timestamp in sockd's text lines, as twistd's text observer writes them.
STREAM_TAIL = (f" [{NAMESPACE}#info] " + STREAM_FORMAT.replace("{message}", "")).encode()
DATAGRAM_TAIL = (f" [{NAMESPACE}#info] " + DATAGRAM_FORMAT.replace("{message}", "")).encode()


class MessageLog:
    """Logs received messages for one service, or does nothing when disabled.

    @ivar enabled: whether messages are logged at all (C{--no-log-messages},
        C{--log-level} above info: not).
    """

    def __init__(self, service: str, enabled: bool = True, state: LogState = STATE) -> None:
        self.service = service
        self.enabled = enabled and state.messagesWanted
        self._state = state

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

    def stream(self, message: bytes, peer: object, transport: str = "tcp") -> None:
        """Log one framed stream message as the tutorial's server prints it.

        C{peer}: the connection (asked for its peer only if the line shows it,
        and then C{transport} is C{tcp} or C{unix} from that address), an
        address, or its text.  C{transport} goes only into the structured event.
        """
        if self.enabled:
            sink = self._state.sink
            if sink is not None:
                sink.message(STREAM_TAIL, message)
            else:
                self._emit(STREAM_FORMAT, message, transport, peer)

    def datagram(self, message: bytes, peer: object) -> None:
        """Log one datagram as the tutorial's datagram server prints it."""
        if self.enabled:
            sink = self._state.sink
            if sink is not None:
                sink.message(DATAGRAM_TAIL, message)
            else:
                self._emit(DATAGRAM_FORMAT, message, "udp", peer)


#: withoutLineEnd and messageText stay importable from here, where they were.
__all__ = ["DATAGRAM_FORMAT", "NAMESPACE", "STREAM_FORMAT", "MessageLog", "messageText", "withoutLineEnd"]
