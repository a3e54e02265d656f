"""The C{--workers} parent: starts, restarts, signals and stops the worker processes.

It binds nothing itself (the assembly does, as for one process) and accepts
nothing: it pauses every listener and lets the workers serve them.  A worker
that dies is restarted (backing off if it keeps dying at once); SIGTERM is
passed on; SIGHUP is passed on after any change of listeners was sent on the
workers' control channels (L{sockd.runtime.workers.channel}), so the workers
keep every established connection across a reload.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockd.interfaces import IMessageSink, IStopsFirst
from sockd.runtime.listeners import quietly
from sockd.runtime.workers.channel import controlPair, sendUpdate
from sockd.runtime.workers.logrelay import LogRelay
from sockd.runtime.workers.notify import NotifyReceiver
from sockd.runtime.workers.spec import InheritedListener, ListenerKey, ListenerUpdate, MessagePipe, WorkerSpec

__all__ = ["QUICK_DEATH", "Supervisor", "WorkerProcess", "reactorArguments"]

log = Logger(namespace="sockd.workers")

#: A worker that dies within this many seconds of starting counts towards a crash loop.
QUICK_DEATH = 5.0


def reactorArguments(reactor: Any) -> list[str]:
    """The twistd arguments that make a worker run the parent's reactor (sockd's own, or the one the user named)."""
    from twisted.application.reactors import getReactorTypes

    from sockd.core.reactor import SockdReactor

    if isinstance(reactor, SockdReactor):
        return ["-r", "sockd"]
    module = type(reactor).__module__
    for kind in getReactorTypes():
        if getattr(kind, "moduleName", None) == module:  # twistd's Reactor plugins have it; the interface does not
            return ["-r", kind.shortName]
    return []  # a reactor twistd cannot name: the worker runs sockd's default


class WorkerProcess(protocol.ProcessProtocol):
    """One worker: relays its logs into the parent's, hears its notifications, tells the supervisor it ended."""

    def __init__(self, supervisor: Supervisor, index: int, messagesFd: int | None = None,
                 messageSink: IMessageSink | None = None, control: socket.socket | None = None) -> None:
        self.supervisor = supervisor
        self.index = index
        #: The descriptor the worker writes its finished message lines to (when our log is our sink).
        self.messagesFd = messagesFd
        self.relay = LogRelay(index, messageSink)
        #: The parent's end of the worker's control channel, closed when the worker ends.
        self.control = control
        self.ended: defer.Deferred[None] = defer.Deferred()
        #: Until the worker says it handles SIGHUP, the signal would kill it: hold it back instead.
        self.ready = False
        self.pendingHangup = False
        self.started = supervisor.reactor.seconds()
        #: The listening datagram port of this worker's notify socket, closed when the worker ends.
        self.notifyPort: Any = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != self.messagesFd or self.relay.messageSink is None:
            super().childDataReceived(childFD, data)
            return
        self.relay.messages(data)

    def outReceived(self, data: bytes) -> None:
        self.relay.events(data)

    def notified(self, states: list[str]) -> None:
        """The worker spoke on its notify socket: the first C{READY=1} means SIGHUP now reloads it, later ones
        that a reload is done."""
        if "READY=1" not in states:
            return
        if not self.ready:
            self.ready = True
            self.supervisor.workerReady(self)
            if self.pendingHangup:
                self.pendingHangup = False
                self.supervisor.signal(self.index, signal.SIGHUP)
        else:
            self.supervisor.workerReloaded(self)

    def processEnded(self, reason: Failure) -> None:
        if self.notifyPort is not None:
            self.notifyPort.stopListening()
            self.notifyPort = None
        if self.control is not None:
            self.control.close()
            self.control = None
        self.ended.callback(None)
        self.supervisor.workerEnded(self, reason)


@implementer(IStopsFirst)
class Supervisor(Service):
    """Starts, restarts, signals and stops the worker processes.

    It provides L{IStopsFirst}: stopped before the listeners, so workers finish
    while the sockets they serve still exist.
    """

    def __init__(self, reactor: Any, count: int, listeners: Callable[[], list[Any]], argv: list[str],
                 messageSink: IMessageSink | None = None) -> None:
        self.reactor = reactor
        self.count = count
        #: The assembly's listeners, as (service name, description, listener): what the workers serve.
        self.listeners = listeners
        self.argv = argv
        self.workers: dict[int, WorkerProcess] = {}
        self.transports: dict[int, Any] = {}
        self.stopping = False
        self.quickDeaths = 0
        #: Our own log's message sink, if we write our log ourselves: the workers' message lines join it.
        self.messageSink = messageSink
        #: Workers that ended unexpectedly and were started again, for the life of the parent (a metric).
        self.restarts = 0
        self.metricsDir = ""
        self.grace = 5.0
        #: Counts spawns, so a new worker's notify socket never reuses a path an old one still has.
        self.spawned = 0
        #: The listeners the workers were last told about (at spawn or by an update), by key.
        self.served: dict[ListenerKey, Any] = {}
        #: Workers sent a SIGHUP that have not yet said the reload is done.
        self.reloading: set[WorkerProcess] = set()

    def allReady(self) -> bool:
        """Whether every worker has started and said READY=1 (a /readyz probe)."""
        return len(self.workers) == self.count and all(w.ready for w in self.workers.values())

    def metricsPath(self, index: int) -> str:
        """The Unix socket on which worker C{index} answers the parent's scrapes."""
        return os.path.join(self.metricsDir, f"worker-{index}.sock")

    def _current(self) -> dict[ListenerKey, Any]:
        return {(name, description): listener for name, description, listener in self.listeners()}

    def startService(self) -> None:
        super().startService()
        self.metricsDir = tempfile.mkdtemp(prefix="sockd-workers-")
        self.pauseAccepting()
        self.served = self._current()
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        """Start worker C{index} on the current listeners."""
        listeners = tuple(InheritedListener(name, description, listener.fileno())
                          for name, description, listener in self.listeners())
        childFDs: dict[int, Any] = {0: "w", 1: "r", 2: 2}
        for listener in listeners:
            childFDs[listener.fd] = listener.fd
        sink = self.messageSink
        messages = None
        if sink is not None:
            # Our messages go to our own sink: the worker's come as finished lines on a pipe of their own.
            messages = MessagePipe(max(childFDs) + 1, sink.journal)
            childFDs[messages.fd] = "r"
        parentEnd, childEnd = controlPair()
        controlFd = max(childFDs) + 1
        childFDs[controlFd] = childEnd.fileno()
        spec = WorkerSpec(index=index, count=self.count, listeners=listeners, metrics=self.metricsPath(index),
                          control=controlFd, messages=messages)
        # A session of its own: Ctrl-C at a terminal reaches the parent alone, which passes one SIGTERM on (a
        # worker that got the terminal's SIGINT too would take the parent's SIGTERM as a second signal and cut
        # its drain short).
        args = [sys.executable, "-c", "import os; os.setsid(); from twisted.scripts.twistd import run; run()",
                *reactorArguments(self.reactor), "-n", "--pidfile=",
                "--logger", "sockd.logging.jsonLogger", "sockd", *self.argv, "--worker", spec.toJSON()]
        worker = WorkerProcess(self, index, messages.fd if messages else None, sink if messages else None,
                               control=parentEnd)
        self.workers[index] = worker
        # Only the main process talks to systemd (NotifyAccess=main); a worker's READY=1 comes to us.
        self.spawned += 1
        notifyPath = os.path.join(self.metricsDir, f"notify-{index}-{self.spawned}.sock")
        worker.notifyPort = quietly(self.reactor.listenUNIXDatagram, notifyPath, NotifyReceiver(worker), 8192, 0o600)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env["NOTIFY_SOCKET"] = notifyPath
        try:
            self.transports[index] = self.reactor.spawnProcess(worker, sys.executable, args, env=env,
                                                               childFDs=childFDs)
        finally:
            childEnd.close()  # the worker has its own copy now
        self.transports[index].closeStdin()
        log.info("started worker {worker} (pid {pid})", worker=index, pid=self.transports[index].pid)

    def workerReady(self, worker: WorkerProcess) -> None:
        """A worker said READY=1 for the first time."""
        if self.allReady():
            log.info("all {count} workers ready", count=self.count)

    def workerReloaded(self, worker: WorkerProcess) -> None:
        """A worker said its reload is done."""
        if worker in self.reloading:
            self.reloading.discard(worker)
            self._reloadDone()

    def _reloadDone(self) -> None:
        if not self.reloading:
            log.info("all {count} workers reloaded ({listeners} listeners)", count=self.count,
                     listeners=len(self.served))

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
        """Restart a worker that ended, unless we are stopping (or it was already replaced)."""
        if worker in self.reloading:
            self.reloading.discard(worker)  # its replacement starts on the current listeners
            self._reloadDone()
        if self.workers.get(worker.index) is not worker:
            return  # an old generation, replaced by a restart
        del self.workers[worker.index]
        self.transports.pop(worker.index, None)
        if self.stopping:
            return
        self.restarts += 1
        quick = self.reactor.seconds() - worker.started < QUICK_DEATH
        self.quickDeaths = self.quickDeaths + 1 if quick else 0
        delay = min(30.0, 0.5 * 2 ** min(self.quickDeaths, 6)) if quick else 0.5
        log.warn("worker {worker} ended ({why}); restarting it in {delay:g}s", worker=worker.index,
                 why=reason.value, delay=delay)
        self.reactor.callLater(delay, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if not self.stopping and index not in self.workers:
            self.spawn(index)

    def signalAll(self, signum: int) -> None:
        """Send C{signum} to every worker; a SIGHUP to one still starting waits until it is ready."""
        for index in list(self.transports):
            worker = self.workers.get(index)
            if signum == signal.SIGHUP and worker is not None and not worker.ready:
                worker.pendingHangup = True  # sent when it is ready: SIGHUP would kill it before that
                continue
            self.signal(index, signum)

    def signal(self, index: int, signum: int) -> None:
        """Send C{signum} to worker C{index}, if it still runs."""
        transport = self.transports.get(index)
        if transport is not None:
            try:
                transport.signalProcess(signum)
            except Exception:  # already gone: its processEnded is on the way
                pass

    def pauseAccepting(self) -> None:
        """The parent keeps its sockets open for the workers but never accepts on them itself."""
        for _, _, listener in self.listeners():
            if listener.port is not None:
                listener.pauseAccepting()

    def reload(self) -> None:
        """After the assembly's reload: send the workers any change of listeners, then SIGHUP them.

        The workers adopt the sockets opened and close those closed, and keep
        every established connection; each says C{READY=1} when done.
        """
        current = self._current()
        update = ListenerUpdate(serve=tuple(current),
                                adopt=tuple(k for k, listener in current.items() if self.served.get(k) is not listener))
        if update.adopt or set(update.serve) != set(self.served):
            self.pauseAccepting()
            fds = [current[key].fileno() for key in update.adopt]
            for index, worker in list(self.workers.items()):
                try:
                    assert worker.control is not None
                    sendUpdate(worker.control, update, fds)
                except OSError as e:
                    # Out of step with the listeners: its replacement starts on the current ones.
                    log.warn("worker {worker} cannot take the new listeners ({why}); restarting it",
                             worker=index, why=e.strerror or str(e))
                    self.signal(index, signal.SIGTERM)
            self.served = current
            log.info("reload: listeners changed: {opened} sent to the workers, {count} served", count=len(current),
                     opened=len(update.adopt))
        self.reloading |= set(self.workers.values())
        self.signalAll(signal.SIGHUP)

    def hurry(self) -> None:
        """A second SIGTERM to us: a second one to each worker, which then stops at once too."""
        self.signalAll(signal.SIGTERM)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self.stopping = True
        ended = defer.DeferredList([w.ended for w in self.workers.values()])
        self.signalAll(signal.SIGTERM)
        killer = self.reactor.callLater(self.grace + 5.0, self.signalAll, signal.SIGKILL)

        def done(_: object) -> None:
            if killer.active():
                killer.cancel()
            shutil.rmtree(self.metricsDir, ignore_errors=True)

        return ended.addCallback(done)
