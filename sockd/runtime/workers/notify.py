"""The parent's end of one worker's C{NOTIFY_SOCKET}: sd_notify's datagrams, as systemd would get them.

A worker tells its parent it is ready, and that a reload is done, the way
sockd tells systemd (L{sockd.runtime.sdnotify}), so the parent learns it from
a channel of its own rather than from the text of a log line.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet import protocol

__all__ = ["Notified", "NotifyReceiver"]


class Notified(Protocol):
    """Who hears a worker's notifications: its L{sockd.runtime.workers.supervisor.WorkerProcess}."""

    def notified(self, states: list[str]) -> None:
        """The worker sent these C{KEY=VALUE} states."""


class NotifyReceiver(protocol.DatagramProtocol):
    """Splits each datagram into its states and hands them to the worker's process protocol."""

    noisy = False  # no "Starting protocol <…NotifyReceiver object at 0x…>" per worker: the supervisor says it all

    def __init__(self, worker: Notified) -> None:
        self.worker = worker

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        states = datagram.decode("utf-8", "replace").split("\n")
        self.worker.notified([s.strip() for s in states if s.strip()])
