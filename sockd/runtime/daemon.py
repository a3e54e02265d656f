"""The top of sockd's service tree: binds every listener, then drains at shutdown."""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from sockd.defences.datagram import DatagramPolicy
from sockd.defences.stream import ConnectionRegistry
from sockd.errors import StartupError
from sockd.interfaces import IDatagramListener, IListener, IReactor, IStopsFirst
from sockd.runtime.sdnotify import notify

log = Logger(namespace="sockd.daemon")

#: What signal.signal() returns and takes: a handler, SIG_DFL or SIG_IGN, or None (one not set from Python).
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


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

    def __init__(self, reactor: IReactor, registry: ConnectionRegistry, datagramPolicy: DatagramPolicy,
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
        #: The SIGTERM or SIGINT that asked for the stop, and the one (if any) that then cut the drain short.
        self.stopSignal: int | None = None
        #: Set once stopService has begun, asked for by a signal or not.
        self.stopping = False
        self.abortSignal: int | None = None
        #: Handlers replaced while stopping without having taken the signals at start (see L{stopService}).
        self._replaced: dict[int, Any] = {}
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
            if not getattr(self.reactor, "running", False):
                # A process that is starting (twistd, twist, sockd): a stop asked for from the first
                # "listening on" line is a graceful one, even before the reactor runs (the reactor then puts
                # its own handlers in, and _takeStopSignals ours back).
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, self._onStopSignal)
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
        # Before READY=1 goes out: from then on a SIGTERM is a graceful stop that exits 0.
        self.reactor.callWhenRunning(self._takeStopSignals)
        # Every listener was bound in privilegedStartService: a Type=notify unit (contrib/systemd) may
        # count sockd as up, and a --workers parent (whose notify socket a worker has) may send SIGHUP.
        # Not before the reactor runs: twistd calls startService before reactor.run() installs the
        # SIGTERM handler, and a stop right after READY=1 would kill sockd.
        self.reactor.callWhenRunning(notify, "READY=1")

    def _onHangup(self, signum: int, frame: FrameType | None) -> None:
        log.info("SIGHUP: reloading the configuration")
        assert self.reload is not None
        self.reactor.callFromThread(self.reload)

    def _reactorHandlers(self) -> dict[int, Any]:
        """The reactor's own stop-signal handlers (its public C{sigTerm}/C{sigInt}), where it has them."""
        handlers = {signal.SIGTERM: getattr(self.reactor, "sigTerm", None),
                    signal.SIGINT: getattr(self.reactor, "sigInt", None)}
        return {signum: handler for signum, handler in handlers.items() if handler is not None}

    def _takeStopSignals(self) -> None:
        """Handle SIGTERM and SIGINT in place of the reactor, where it installed its handlers (twistd, twist, sockd).

        The reactor's handler remembers the signal, and twistd and twist then
        end the process by that signal once the reactor stopped: status 143
        after a graceful stop, which Kubernetes reports as an Error and which
        is not the 0 that gunicorn, uvicorn and sockd(8) give.  Here the first
        signal stops the reactor without that note, so a finished drain exits
        0; a second one aborts the drain and the process ends by that signal
        after all (L{_exitBySignal}).
        """
        for signum, handler in self._reactorHandlers().items():
            if signal.getsignal(signum) == handler:  # installed by the reactor: so this is the main thread
                signal.signal(signum, self._onStopSignal)
        self.reactor.addSystemEventTrigger("after", "shutdown", self._exitBySignal)

    def _onStopSignal(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stopSignal is None and not self.stopping:
            self.stopSignal = signum
            self.reactor.callFromThread(self._stopOnSignal, name)
        else:  # again while stopping: end the drain now
            self.abortSignal = signum
            self.reactor.callFromThread(self.hurry, name)

    def _stopOnSignal(self, name: str) -> None:
        log.info("{signal}: stopping", signal=name)
        if self.stopping:  # stopped meanwhile by other means: the signal only hurries it
            self.hurry(name)
        elif self.reactor.running:
            self.reactor.stop()

    def _exitBySignal(self) -> None:
        """After a drain cut short by a second signal, end as the reactor would have: killed by that signal.

        A drain that finished is a clean stop (0); one aborted on request
        dropped connections and must not look clean to a supervisor, nor like
        a failure to retry (1, which C{Restart=on-failure} would restart):
        death by SIGTERM or SIGINT is what it was.  The reactor's public
        handler records the signal for twistd and twist, which re-raise it once
        the runner has cleaned up (the stop it also queues never runs: the
        reactor's loop has ended).
        """
        if self.abortSignal is not None:
            log.info("the drain was cut short by {signal}: exiting by that signal",
                     signal=signal.Signals(self.abortSignal).name)
            handler = self._reactorHandlers().get(self.abortSignal)
            if handler is not None:
                handler(self.abortSignal, None)

    def stopService(self) -> defer.Deferred[None]:
        restore: dict[int, Any] = {}
        self.stopping = True
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
        return d.addCallback(lambda _: self._restoreSignals(restore))

    def _hurryOnStopSignals(self) -> dict[int, SignalHandler]:
        """While draining, SIGTERM or SIGINT again ends the drain at once, and says so.

        Where the signals were taken at start (L{_takeStopSignals}) that is so
        already.  Otherwise (a stop not asked by a signal, with the reactor
        running) the handlers are replaced until the stop is done: the
        reactor's own would call C{reactor.stop()} a second time, which raises
        C{ReactorNotRunning} into the log and changes nothing.  Returns the
        handlers replaced, put back once stopped.
        """
        replaced: dict[int, SignalHandler] = {}
        if not getattr(self.reactor, "running", False):
            return replaced  # stopped without a running reactor (a test, a failed start): no signal to expect
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                if signal.getsignal(signum) != self._onStopSignal:
                    replaced[signum] = signal.signal(signum, self._onStopSignal)
            except ValueError:  # not the main thread: nobody can signal this process's loop anyway
                break
        return replaced

    def _restoreSignals(self, replaced: dict[int, SignalHandler]) -> None:
        for signum, handler in replaced.items():
            signal.signal(signum, handler)

    def hurry(self, why: str = "stop asked again") -> None:
        """Stop now: every worker too, and every open connection aborted instead of drained."""
        log.warn("{why} while stopping: not waiting for open connections", why=why)
        for service in self:
            if IStopsFirst.providedBy(service):
                service.hurry()
        self.registry.abortAll(f"{why} again")
