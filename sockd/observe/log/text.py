"""A received message as it appears in a log line: without its line end, escaped (L{escape}).

Both writers of message lines use it: the sink's batches
(L{sockd.observe.log.sink}) and the structured events
(L{sockd.observe.log.messages}).
"""

from __future__ import annotations

from sockd.observe.logsafe import escape


def withoutLineEnd(message: bytes) -> bytes:
    """The message as a person typed it: one trailing LF or CR LF is not part of it."""
    if message.endswith(b"\n"):
        message = message[:-1]
        if message.endswith(b"\r"):
            message = message[:-1]
    return message


#: Bytes that stand for themselves in a log line: printable ASCII but the backslash (L{escape}'s escape character).
PLAIN = bytes(c for c in range(0x20, 0x7F) if c != ord("\\"))


def messageText(message: bytes) -> str:
    """The message as logged: without its line end, escaped as L{escape} does; quickly if nothing needs it."""
    if message.endswith(b"\n"):
        message = message[:-2] if message.endswith(b"\r\n") else message[:-1]
    if message.translate(None, PLAIN):
        return escape(message)
    return message.decode("ascii")


__all__ = ["PLAIN", "messageText", "withoutLineEnd"]
