"""What runs in a C{--workers} child: its share of the limits, and the listener updates its parent sends.

Limits are the daemon's limits, not each worker's: every worker enforces an
even share (L{shareLimits}), rounded down, so N workers together never admit
more than one process would.  A reload takes the set of listeners from the
parent (L{WorkerChannel}), which alone can bind, and tells the parent when it
is done (C{READY=1} on the worker's notify socket).
"""

from __future__ import annotations

import math
import socket
from dataclasses import replace

from twisted.logger import Logger

from sockd.config.settings import Settings
from sockd.runtime.sdnotify import notify
from sockd.runtime.workers.channel import receiveUpdates
from sockd.runtime.workers.spec import ListenerKey, WorkerSpec

__all__ = ["WorkerChannel", "shareLimits"]

log = Logger(namespace="sockd.reload")


def shareLimits(settings: Settings, workers: int) -> Settings:
    """One worker's share of the daemon-wide limits: never more, in sum, than the whole."""
    if workers <= 1:
        return settings

    def share(value: int) -> int:
        return max(1, value // workers) if value else 0

    def rate(value: float) -> float:
        return value / workers if value else 0.0

    return replace(
        settings,
        max_connections=share(settings.max_connections),
        max_per_source=share(settings.max_per_source),
        connection_rate=rate(settings.connection_rate),
        connection_burst=max(1, math.ceil(settings.connection_burst / workers)),
        udp_rate=rate(settings.udp_rate),
        udp_burst=max(1, math.ceil(settings.udp_burst / workers)),
        udp_budget=rate(settings.udp_budget),
        log_rate=rate(settings.log_rate),
        log_burst=max(1, math.ceil(settings.log_burst / workers)),
    )


class WorkerChannel:
    """A worker's end of its control channel (L{sockd.runtime.workers.channel})."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.sock = socket.socket(fileno=spec.control)
        self.sock.setblocking(False)

    def listeners(self, current: list[ListenerKey]) -> tuple[list[ListenerKey], dict[ListenerKey, int]]:
        """The listeners to serve after this reload, and the new sockets among them (ours to adopt or close).

        Without an update from the parent the set is unchanged: a reload that
        kept the listeners sends none.
        """
        serve, adopted = receiveUpdates(self.sock)
        if serve is None:
            return current, adopted
        wanted = []
        for key in serve:
            if key in current or key in adopted:
                wanted.append(key)
            else:  # a worker binds nothing itself
                log.error("reload: the parent sent no socket for {what}", what=" ".join(key))
        return wanted, adopted

    def reloaded(self) -> None:
        """Tell the parent this reload is done (it logs once every worker has said so)."""
        notify("READY=1")
