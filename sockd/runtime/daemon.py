"""The top of sockd's service tree: binds every listener, then drains at shutdown."""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import Logger

from sockd.defences.datagram import DatagramPolicy
from sockd.defences.stream import ConnectionRegistry
from sockd.errors import StartupError
from sockd.interfaces import IDatagramListener, IListener, IStopsFirst
from sockd.runtime.sdnotify import notify

log = Logger(namespace="sockd.daemon")

def raiseFileLimit() -> None:
    """Let the daemon use every descriptor it may: each connection costs one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


class SockdService(MultiService):
    """All listeners, started together and stopped gracefully.

    Start-up is all or nothing: if one listener cannot bind, those already
    bound are closed (removing their Unix socket files) before the error is
    raised.  Stopping closes every listener first, so nothing new arrives,
    then lets open connections finish within the grace period.
    """

    def __init__(self, reactor: Any, registry: ConnectionRegistry, datagramPolicy: DatagramPolicy,
                 grace: float) -> None:
        super().__init__()
        self.reactor = reactor
        self.registry = registry
        self.datagramPolicy = datagramPolicy
        self.grace = grace
        #: Called on SIGHUP: re-read the configuration (set by the wiring).
        self.reload: Callable[[], None] | None = None
        #: Whether the listeners are bound: twistd binds in privilegedStartService, `twist` never calls it.
        self.bound = False
        #: Stopped only after the connections drained: the health endpoint, which says 503 meanwhile.
        self.stopLast: list[Any] = []

    def privilegedStartService(self) -> None:
        if self.reload is not None:
            # Before the listeners announce themselves: from then on a SIGHUP must reload, not kill.
            # (A reload asked for now runs once the reactor does.)
            signal.signal(signal.SIGHUP, self._onHangup)
        raiseFileLimit()
        bound = []
        try:
            for listener in self:
                listener.privilegedStartService()
                bound.append(listener)
        except StartupError:
            for listener in reversed(bound):
                listener.abandon() if IListener.providedBy(listener) else listener.stopService()
            raise
        for listener in bound:
            if IDatagramListener.providedBy(listener):
                self.datagramPolicy.addOwnPort(listener.boundPort)
        self.bound = True

    def startService(self) -> None:
        if not self.bound:
            # `twist` (and any runner but twistd) starts services without the privileged step: bind now,
            # as StreamServerEndpointService does.  (No privilege drop happens in between then.)
            self.privilegedStartService()
        super().startService()
        # Every listener was bound in privilegedStartService: a Type=notify unit (contrib/systemd) may
        # count sockd as up, and a --workers parent (whose notify socket a worker has) may send SIGHUP.
        # Not before the reactor runs: twistd calls startService before reactor.run() installs the
        # SIGTERM handler, and a stop right after READY=1 would kill sockd.
        self.reactor.callWhenRunning(notify, "READY=1")

    def _onHangup(self, signum: int, frame: Any) -> None:
        log.info("SIGHUP: reloading the configuration")
        assert self.reload is not None
        self.reactor.callFromThread(self.reload)

    def stopService(self) -> defer.Deferred[None]:
        if self.running:
            notify("STOPPING=1")
            log.info("stopping: closing listeners, then finishing open connections (grace {grace:g}s)",
                     grace=self.grace)
        self.running = 0
        # Worker processes (if any) finish first, while the sockets they serve still exist.
        first = [s for s in self if IStopsFirst.providedBy(s)]
        last = [s for s in self.stopLast if s.parent is self]
        rest = [s for s in reversed(list(self)) if s not in first and s not in last]
        d = defer.DeferredList([defer.maybeDeferred(s.stopService) for s in first], consumeErrors=True)
        d.addCallback(lambda _: defer.DeferredList([defer.maybeDeferred(s.stopService) for s in rest],
                                                   consumeErrors=True))
        d.addCallback(lambda _: self.registry.drain(self.grace))
        d.addCallback(lambda _: defer.DeferredList([defer.maybeDeferred(s.stopService) for s in last],
                                                   consumeErrors=True))
        d.addCallback(lambda _: None)
        return d
