"""The top of sockd's service tree: binds every listener, then drains at shutdown."""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

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
        #: The log observer sockd offers twistd (L{sockd.observe.log.setup.plan}), or None (set by the wiring).
        self.logObserver: Any = None

    def setServiceParent(self, parent: Any) -> Any:
        """Join C{parent}; offer it L{logObserver} as its C{ILogObserver} component, unless it has one.

        The plugin's C{makeService} never sees the application: twistd creates
        it and passes it here (C{createOrGetApplication}) before it starts
        logging, and then logs with that component.  A component already set
        (a C{.tac} file's) wins.
        """
        if (self.logObserver is not None and isinstance(parent, Componentized)
                and parent.getComponent(ILogObserver, None) is None):
            parent.setComponent(ILogObserver, self.logObserver)
        return super().setServiceParent(parent)

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
        restore: dict[int, Any] = {}
        if self.running:
            notify("STOPPING=1")
            log.info("stopping: closing listeners, then finishing open connections (grace {grace:g}s)",
                     grace=self.grace)
            restore = self._hurryOnStopSignals()
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
        d.addCallback(lambda _: self._restoreSignals(restore))
        return d

    def _hurryOnStopSignals(self) -> dict[int, Any]:
        """While draining, SIGTERM or SIGINT again ends the drain at once, and says so.

        The reactor's own handler would call C{reactor.stop()} a second time,
        which raises C{ReactorNotRunning} into the log and changes nothing.
        Returns the handlers replaced, put back once stopped.
        """
        replaced: dict[int, Any] = {}
        if not getattr(self.reactor, "running", False):
            return replaced  # stopped without a running reactor (a test, a failed start): no signal to expect
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                replaced[signum] = signal.signal(signum, self._onStopSignalAgain)
            except ValueError:  # not the main thread: nobody can signal this process's loop anyway
                break
        return replaced

    def _restoreSignals(self, replaced: dict[int, Any]) -> None:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)

    def _onStopSignalAgain(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.hurry, signal.Signals(signum).name)

    def hurry(self, why: str = "stop asked again") -> None:
        """Stop now: every worker too, and every open connection aborted instead of drained."""
        log.warn("{why} while stopping: not waiting for open connections", why=why)
        for service in self:
            if IStopsFirst.providedBy(service):
                service.hurry()
        self.registry.abortAll(f"{why} again")
