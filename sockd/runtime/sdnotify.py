"""Tell systemd how the daemon is doing (sd_notify), for C{Type=notify} units.

Twisted has no sd_notify, and libsystemd is not worth a dependency for it: the
protocol is one datagram of newline-separated C{KEY=VALUE} lines (C{READY=1},
C{STOPPING=1}, C{STATUS=...}) sent to the Unix datagram socket named by
C{NOTIFY_SOCKET}.  A name starting with C{@} is in the abstract namespace.

Outside systemd (no C{NOTIFY_SOCKET}) nothing is sent.  A failure to notify
must never stop the daemon from serving, so nothing here raises: the first
failure is logged, later ones are not (a broken notify socket would otherwise
repeat the same warning at every state change).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from twisted.logger import Logger

log = Logger(namespace="sockd.sdnotify")

#: A blocked notify socket (systemd not reading) must not stall the reactor for long.
SEND_TIMEOUT = 1.0


def notifyAddress(value: str) -> str | None:
    """The socket address C{NOTIFY_SOCKET} names, or None if it is not a Unix socket path."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends notifications; remembers whether a failure was already logged."""

    def __init__(self) -> None:
        self.failureLogged = False

    def notify(self, state: str, environ: Mapping[str, str] = os.environ) -> bool:
        """Send C{state} to C{NOTIFY_SOCKET}; return whether it was sent.  Never raises."""
        target = environ.get("NOTIFY_SOCKET")
        if not target:
            return False
        try:
            address = notifyAddress(target)
            if address is None:
                raise ValueError("not a Unix socket path or @abstract name")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto(state.encode("utf-8"), address)
        except Exception as e:  # a notification is never worth a crash
            if not self.failureLogged:
                self.failureLogged = True
                log.warn(
                    "cannot notify systemd at NOTIFY_SOCKET={target!r} ({state!r}): {error}; "
                    "further notify failures are not logged",
                    target=target,
                    state=state,
                    error=getattr(e, "strerror", None) or str(e) or e.__class__.__name__,
                )
            return False
        return True


_notifier = Notifier()


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send C{state} (for example C{READY=1}) to systemd if sockd runs under it; never raises."""
    return _notifier.notify(state, environ)
