"""C{--workers N}: several processes serving the same listening sockets.

The parent binds every listener exactly as a single process would (so every
description works, privileged ports included, before twistd drops
privileges), stops accepting on them itself, and starts N worker processes
that inherit the sockets and serve them.  The parent supervises: it restarts
a worker that dies, forwards SIGHUP (a reload) and SIGTERM, relays the
workers' structured logs into its own, and serves one C{/metrics} that adds
up its workers' counts.

Limits are the daemon's limits, not each worker's: every worker enforces an
even share (L{shareLimits}), rounded down, so N workers together never admit
more than one process would.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.web import resource, server
from zope.interface import implementer

from sockd.config.settings import Settings
from sockd.interfaces import IMessageSink, IStopsFirst

log = Logger(namespace="sockd.workers")

#: A worker that dies within this many seconds of starting counts towards a crash loop.
QUICK_DEATH = 5.0


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


def reactorArguments(reactor: Any) -> list[str]:
    """The twistd arguments that make a worker run the parent's reactor (sockd's own, or the one the user named)."""
    from twisted.application.reactors import getReactorTypes

    from sockd.core.reactor import SockdReactor

    if isinstance(reactor, SockdReactor):
        return ["-r", "sockd"]
    module = type(reactor).__module__
    for kind in getReactorTypes():
        if kind.moduleName == module:
            return ["-r", kind.shortName]
    return []  # a reactor twistd cannot name: the worker runs sockd's default


class WorkerProcess(protocol.ProcessProtocol):
    """One worker: relays its JSON log lines into the parent's log, and tells the supervisor when it ends."""

    def __init__(self, supervisor: Supervisor, index: int, messagesFd: int | None = None,
                 messageSink: IMessageSink | None = None) -> None:
        self.supervisor = supervisor
        self.index = index
        self._partial = b""
        #: The descriptor the worker writes its finished message lines to (when our log is our sink).
        self.messagesFd = messagesFd
        self.messageSink = messageSink
        self._partialLines = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        #: Until the worker says it handles SIGHUP, the signal would kill it: hold it back instead.
        self.ready = False
        self.pendingHangup = False
        self.started = supervisor.reactor.seconds()
        #: The listening datagram port of this worker's notify socket, closed when the worker ends.
        self.notifyPort: Any = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != self.messagesFd or self.messageSink is None:
            super().childDataReceived(childFD, data)
            return
        # Whole lines into our sink as they are; a line cut by the pipe waits for its end.
        whole, newline, rest = (self._partialLines + data).rpartition(b"\n")
        self._partialLines = rest if len(rest) <= 1 << 20 else b""  # a runaway line is not buffered without bound
        if newline:
            self.messageSink.lines(whole + newline)

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > 1 << 20:  # a runaway line: do not buffer without bound
            self._partial = b""
        for line in lines:
            self._relay(line)

    def _relay(self, line: bytes) -> None:
        try:
            record = json.loads(line)
            level = LogLevel.levelWithName(record.pop("level", "info"))
        except (ValueError, KeyError, AttributeError):
            log.info("worker {worker}: {text}", worker=self.index, text=line.decode("utf-8", "replace"))
            return
        text = record.pop("text", "")
        namespace = record.pop("namespace", "sockd.worker")
        if level < LogLevel.warn and not namespace.startswith("sockd") or level < LogLevel.info:
            return  # each worker's own twistd start-up chatter: the parent already said it once
        record.pop("time", None)
        fields = {k: v for k, v in record.items() if not k.startswith("log_")}
        Logger(namespace=namespace).emit(level, "{text}", text=text, worker=self.index, **fields)

    def notified(self, states: list[str]) -> None:
        """The worker spoke on its notify socket; C{READY=1} means SIGHUP now reloads it."""
        if "READY=1" in states and not self.ready:
            self.ready = True
            if self.pendingHangup:
                self.pendingHangup = False
                self.supervisor.signal(self.index, signal.SIGHUP)

    def processEnded(self, reason: Failure) -> None:
        if self.notifyPort is not None:
            self.notifyPort.stopListening()
            self.notifyPort = None
        self.ended.callback(None)
        self.supervisor.workerEnded(self, reason)


class NotifyReceiver(protocol.DatagramProtocol):
    """The parent's end of one worker's C{NOTIFY_SOCKET}: sd_notify's datagrams, as systemd would get them.

    A worker tells its parent it is ready the way sockd tells systemd
    (L{sockd.runtime.sdnotify}), so the parent learns it from a channel of
    its own rather than from the text of a log line.
    """

    def __init__(self, worker: WorkerProcess) -> None:
        self.worker = worker

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        states = datagram.decode("utf-8", "replace").split("\n")
        self.worker.notified([s.strip() for s in states if s.strip()])


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
        self.listeners = listeners
        self.argv = argv
        #: Our own log's message sink, if we write our log ourselves: the workers' message lines join it.
        self.messageSink = messageSink
        self.workers: dict[int, WorkerProcess] = {}
        self.transports: dict[int, Any] = {}
        self.stopping = False
        self.quickDeaths = 0
        #: Workers that ended unexpectedly and were started again, for the life of the parent (a metric).
        self.restarts = 0
        self.metricsDir = ""
        self.grace = 5.0
        #: Counts spawns, so a new generation's notify socket never reuses a path the old one still has.
        self.spawned = 0

    def allReady(self) -> bool:
        """Whether every worker has started and said READY=1 (a /readyz probe)."""
        return len(self.workers) == self.count and all(w.ready for w in self.workers.values())

    def metricsPath(self, index: int) -> str:
        return os.path.join(self.metricsDir, f"worker-{index}.sock")

    def startService(self) -> None:
        super().startService()
        self.metricsDir = tempfile.mkdtemp(prefix="sockd-workers-")
        self.pauseAccepting()
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index: int) -> None:
        listeners = [(name, description, listener.fileno()) for name, description, listener in self.listeners()]
        childFDs: dict[int, Any] = {0: "w", 1: "r", 2: 2}
        for _, _, fd in listeners:
            childFDs[fd] = fd
        description: dict[str, Any] = {"index": index, "count": self.count, "listeners": listeners,
                                       "metrics": self.metricsPath(index)}
        sink = self.messageSink
        messagesFd = None
        if sink is not None:
            # Our messages go to our own sink: the worker's come as finished lines on a pipe of their own.
            messagesFd = max(childFDs) + 1
            childFDs[messagesFd] = "r"
            description["messages"] = {"fd": messagesFd, "journal": sink.journal}
        spec = json.dumps(description)
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                *reactorArguments(self.reactor), "-n", "--pidfile=",
                "--logger", "sockd.logging.jsonLogger", "sockd", *self.argv, "--worker", spec]
        worker = WorkerProcess(self, index, messagesFd, sink if messagesFd is not None else None)
        self.workers[index] = worker
        # Only the main process talks to systemd (NotifyAccess=main); a worker's READY=1 comes to us.
        self.spawned += 1
        notifyPath = os.path.join(self.metricsDir, f"notify-{index}-{self.spawned}.sock")
        worker.notifyPort = self.reactor.listenUNIXDatagram(notifyPath, NotifyReceiver(worker), mode=0o600)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env["NOTIFY_SOCKET"] = notifyPath
        self.transports[index] = self.reactor.spawnProcess(worker, sys.executable, args, env=env,
                                                           childFDs=childFDs)
        self.transports[index].closeStdin()
        log.info("started worker {worker} (pid {pid})", worker=index, pid=self.transports[index].pid)

    def workerEnded(self, worker: WorkerProcess, reason: Failure) -> None:
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
        for index in list(self.transports):
            worker = self.workers.get(index)
            if signum == signal.SIGHUP and worker is not None and not worker.ready:
                worker.pendingHangup = True  # sent when it is ready: SIGHUP would kill it before that
                continue
            self.signal(index, signum)

    def signal(self, index: int, signum: int) -> None:
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

    def restartAll(self) -> defer.Deferred[None]:
        """A new generation on the current sockets, then the old one stopped gracefully."""
        self.pauseAccepting()
        old = dict(self.transports)
        oldWorkers = dict(self.workers)
        self.workers.clear()
        self.transports.clear()
        for index in range(self.count):
            self.spawn(index)
        for transport in old.values():
            try:
                transport.signalProcess("TERM")
            except Exception:
                pass
        return defer.DeferredList([w.ended for w in oldWorkers.values()]).addCallback(lambda _: None)

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


#: Seconds a scrape of one worker may take, connect to close: a stuck worker must not hang /metrics.
SCRAPE_TIMEOUT = 5.0

#: Worker families the parent does not add up: its own reloads, build, readiness and log (the workers' messages
#: are written by the parent), the platform (the same for all),
#: and process figures that are no sum of anything (a start time, a limit).
_NOT_SUMMED = {"sockd_reloads", "sockd_build_info", "sockd_ready", "python_info",
               "process_start_time_seconds", "process_max_fds",
               "process_virtual_memory_max_bytes"}


class _Slurp(protocol.Protocol):
    """Read a worker's whole exposition; the worker closes when it has written it."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        # Cancelled at the scrape deadline: abort the connection (its connectionLost then finds done called).
        self.done: defer.Deferred[bytes] = defer.Deferred(lambda _: self._abort())

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.chunks))


_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class WorkerTotals:
    """The workers' counts as the parent shows them: added up, and never going backwards.

    Each worker's latest exposition is kept.  A worker that does not answer a
    scrape counts with its last values; a worker that is gone (killed,
    restarted, replaced by a reload) has its last counter values carried into
    C{retired}, so a counter summed over workers never decreases for the life
    of the parent, as Prometheus requires.  (Gauges are not carried: a dead
    worker's open connections are gone.)  The workers' C{process_*} families
    are shown as C{sockd_workers_process_*}, beside the parent's own.
    """

    def __init__(self) -> None:
        #: family name -> (type, help), in first-seen order
        self.kinds: dict[str, tuple[str, str]] = {}
        self.latest: dict[object, dict[str, dict[_SampleKey, float]]] = {}
        self.retired: dict[str, dict[_SampleKey, float]] = {}

    def update(self, worker: object, text: str | None) -> None:
        """Record a worker's scrape; None (no answer) keeps its last values."""
        if text is None:
            return
        from prometheus_client.parser import text_string_to_metric_families

        found: dict[str, dict[_SampleKey, float]] = {}
        for family in text_string_to_metric_families(text):
            if family.name in _NOT_SUMMED:
                continue
            name = f"sockd_workers_{family.name}" if family.name.startswith("process_") else family.name
            self.kinds.setdefault(name, (family.type, family.documentation))
            samples = found.setdefault(name, {})
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue  # a creation time adds up to nothing
                sampleName = f"sockd_workers_{sample.name}" if name != family.name else sample.name
                samples[(sampleName, tuple(sorted(sample.labels.items())))] = sample.value
        self.latest[worker] = found

    def retire(self, live: set[object]) -> None:
        """Workers not in C{live} are gone: carry their counters into the retired totals."""
        for worker in [w for w in self.latest if w not in live]:
            for name, samples in self.latest.pop(worker).items():
                if self.kinds[name][0] != "counter":
                    continue
                carried = self.retired.setdefault(name, {})
                for key, value in samples.items():
                    carried[key] = carried.get(key, 0.0) + value

    def families(self) -> dict[str, dict[_SampleKey, float]]:
        """Per family, every sample summed over the live workers and the retired totals."""
        sums: dict[str, dict[_SampleKey, float]] = {}
        for source in [self.retired, *self.latest.values()]:
            for name, samples in source.items():
                total = sums.setdefault(name, {})
                for key, value in samples.items():
                    total[key] = total.get(key, 0.0) + value
        return sums

    def sums(self) -> dict[_SampleKey, float]:
        """Every summed sample by (sample name, labels): for tests and quick looks."""
        return {key: value for samples in self.families().values() for key, value in samples.items()}

    def collect(self) -> Any:
        """A prometheus_client collector: the summed families."""
        from prometheus_client.metrics_core import Metric

        for name, samples in self.families().items():
            kind, documentation = self.kinds[name]
            family = Metric(name, documentation, kind)
            for (sampleName, labels), value in sorted(samples.items()):
                family.add_sample(sampleName, dict(labels), value)
            yield family


def sumExpositions(texts: list[str]) -> bytes:
    """Add up several workers' Prometheus text expositions into one."""
    from prometheus_client import CollectorRegistry, generate_latest

    totals = WorkerTotals()
    for index, text in enumerate(texts):
        totals.update(index, text)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(totals)
    return generate_latest(registry)


class AggregatedMetrics(resource.Resource):
    """C{/metrics} of the parent: its own process and reloads, and every worker's counts added up."""

    isLeaf = True

    def __init__(self, reactor: Any, supervisor: Supervisor, metrics: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.supervisor = supervisor
        self.totals = WorkerTotals()
        #: The parent's L{sockd.observe.metrics.Metrics}: it serves no connection itself, so its own
        #: per-listener families give way to the workers' sums.
        self.metrics = metrics
        metrics.collector.listeners = False
        metrics.registry.register(self.totals)

    def _scrape(self, index: int) -> defer.Deferred[str | None]:
        """One worker's exposition, or None if it does not answer within L{SCRAPE_TIMEOUT}, connect to close."""
        from twisted.internet.endpoints import UNIXClientEndpoint

        slurp = _Slurp()
        endpoint = UNIXClientEndpoint(self.reactor, self.supervisor.metricsPath(index), timeout=SCRAPE_TIMEOUT)
        factory = protocol.Factory.forProtocol(lambda: slurp)
        factory.noisy = False  # connectProtocol's factory logs "Starting factory" at info: twice per worker per scrape
        d: defer.Deferred[Any] = endpoint.connect(factory)
        d.addCallback(lambda _: slurp.done)
        d.addTimeout(SCRAPE_TIMEOUT, self.reactor)
        d.addCallback(lambda data: data.decode("utf-8", "replace"))
        d.addErrback(lambda _: None)  # restarting, or stuck: its last values stand in
        return d

    def render_GET(self, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        workers = dict(self.supervisor.workers)
        lost: list[Failure] = []
        request.notifyFinish().addErrback(lost.append)  # the scraper went away: nothing to answer
        d = defer.gatherResults([self._scrape(index) for index in sorted(workers)])

        def respond(texts: list[str | None]) -> None:
            for index, text in zip(sorted(workers), texts, strict=True):
                self.totals.update(workers[index], text)
            self.totals.retire(set(self.supervisor.workers.values()) | set(workers.values()))
            if lost:
                return
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
            request.write(generate_latest(self.metrics.registry))
            request.finish()

        def failed(f: Failure) -> None:
            log.failure("cannot aggregate worker metrics", f)
            if not lost:
                request.setResponseCode(500)
                request.finish()

        d.addCallback(respond).addErrback(failed)
        return server.NOT_DONE_YET
