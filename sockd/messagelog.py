"""The per-message log lines of the tutorial's servers, kept cheap.

The tutorial's servers print every message they get.  sockd logs them as
structured C{twisted.logger} events (service, transport, peer and the message,
escaped so a client cannot forge log lines), and an operator can turn them off
for load tests.  Escaping and event construction happen only when enabled.
"""

from __future__ import annotations

from twisted.logger import Logger

from sockd.addresses import formatAddress
from sockd.logsafe import escape

log = Logger(namespace="sockd.messages")


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

    def stream(self, message: bytes, peer: object) -> None:
        """Log one framed stream message as the tutorial's server prints it."""
        if self.enabled:
            log.info(
                "Here is the message: {message}",
                message=escape(withoutLineEnd(message)),
                service=self.service,
                transport="stream",
                peer=formatAddress(peer),
                bytes=len(message),
            )

    def datagram(self, message: bytes, peer: object) -> None:
        """Log one datagram as the tutorial's datagram server prints it."""
        if self.enabled:
            log.info(
                "Received a datagram: {message}",
                message=escape(withoutLineEnd(message)),
                service=self.service,
                transport="udp",
                peer=formatAddress(peer),
                bytes=len(message),
            )
