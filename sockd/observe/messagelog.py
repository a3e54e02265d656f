"""The per-message log lines of the tutorial's servers, kept cheap.

The tutorial's servers print every message they get.  sockd logs them as
structured C{twisted.logger} events (service, transport, peer and the message,
escaped so a client cannot forge log lines), and an operator can turn them off
for load tests.  Escaping and event construction happen only when enabled.

The event is built here and handed straight to the logger's observer (the
global publisher): it is the dictionary C{Logger.emit} would build, less the
work C{emit} repeats for every event (checking the level against every level,
copying keyword arguments, one more call).
"""

from __future__ import annotations

from time import time

from twisted.logger import Logger, LogLevel

from sockd.observe.addresses import formatAddress
from sockd.observe.logsafe import escape

NAMESPACE = "sockd.messages"
log = Logger(namespace=NAMESPACE)

STREAM_FORMAT = "Here is the message: {message}"
DATAGRAM_FORMAT = "Received a datagram: {message}"


def withoutLineEnd(message: bytes) -> bytes:
    """The message as a person typed it: one trailing LF or CR LF is not part of it."""
    if message.endswith(b"\n"):
        message = message[:-1]
        if message.endswith(b"\r"):
            message = message[:-1]
    return message


class MessageLog:
    """Logs received messages for one service, or does nothing when disabled."""

    def __init__(self, service: str, enabled: bool = True) -> None:
        self.service = service
        self.enabled = enabled

    def _emit(self, format: str, message: bytes, transport: str, peer: object) -> None:
        """What C{log.info(format, message=..., service=..., transport=..., peer=..., bytes=...)} emits."""
        log.observer({
            "message": escape(withoutLineEnd(message)),
            "service": self.service,
            "transport": transport,
            "peer": peer if isinstance(peer, str) else formatAddress(peer),
            "bytes": len(message),
            "log_logger": log,
            "log_level": LogLevel.info,
            "log_namespace": NAMESPACE,
            "log_source": None,
            "log_format": format,
            "log_time": time(),
        })

    def stream(self, message: bytes, peer: object) -> None:
        """Log one framed stream message as the tutorial's server prints it (C{peer}: an address or its text)."""
        if self.enabled:
            self._emit(STREAM_FORMAT, message, "stream", peer)

    def datagram(self, message: bytes, peer: object) -> None:
        """Log one datagram as the tutorial's datagram server prints it."""
        if self.enabled:
            self._emit(DATAGRAM_FORMAT, message, "udp", peer)
